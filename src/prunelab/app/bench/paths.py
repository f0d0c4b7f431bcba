"""Each benchmarked task timed both ways (baseline and prunelab), as rows of the table."""

from __future__ import annotations

import copy
import math
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...fold import fold_batchnorm
from ...sensitivity import sensitivity_scan
from ...train import TrainConfig, fit, predict
from .baseline import (
    BASELINE_BATCH,
    baseline_model,
    baseline_predict,
    baseline_scan,
    baseline_study,
    baseline_train,
    hits,
)
from .measure import Row, scan_work, timed

STUDY_SCAN_SPARSITIES = 6  # the quick recipe scans 0.4 ... 0.9
STUDY_SCAN_IMAGES = 10_000  # ... on the test split


def bench_eval(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    fpi: dict[str, Any],
    batch_size: int = 1000,
    reps: int = 2,
    fold: bool = True,
    compile_model: bool = False,
) -> tuple[list[Row], dict[str, Any]]:
    """Images/s of every evaluation path, each pass interleaved with the others."""
    base = baseline_model(model)
    fast = copy.deepcopy(model)

    def prunelab_paths(m: nn.Module, what: str) -> list[tuple[str, str, Callable[[], Any], bool]]:
        """The fp32 and bf16 rows of one prunelab model."""
        return [
            (
                f"prunelab predict, {what}{prec}, channels_last",
                prec,
                lambda bf16=prec == "bf16": predict(m, x, batch_size=batch_size, bf16=bf16),
                False,
            )
            for prec in ("fp32", "bf16")
        ]

    variants = [
        (
            "baseline: Dataset+DataLoader, fp32, NCHW",
            "fp32",
            lambda: baseline_predict(base, x),
            True,
        )
    ]
    variants += prunelab_paths(fast, "")
    if fold:
        variants += prunelab_paths(fold_batchnorm(model), "BN folded, ")
    extra: dict[str, Any] = {}
    if compile_model:
        import torch._inductor.config as inductor_config

        t0 = time.perf_counter()
        compiled = torch.compile(fold_batchnorm(model) if fold else copy.deepcopy(model))
        # freezing: weights become constants, so inductor pre-packs them for oneDNN and fuses
        # bias + ReLU into the convolution; it compiles on the first call, hence the patch here
        with inductor_config.patch(freezing=True):
            predict(compiled, x[:batch_size], batch_size=batch_size, bf16=True)
        extra["compile_seconds"] = time.perf_counter() - t0
        variants.append(
            (
                "prunelab predict, torch.compile, bf16, channels_last",
                "bf16",
                lambda: predict(compiled, x, batch_size=batch_size, bf16=True),
                False,
            )
        )
    best = [math.inf] * len(variants)
    preds: list[torch.Tensor] = [torch.empty(0)] * len(variants)
    for _ in range(max(1, reps)):
        for i, (_, _, fn, _) in enumerate(variants):
            t, p = timed(fn)
            best[i], preds[i] = min(best[i], t), p
    rows = []
    base_acc = hits(preds[0], y) / len(y)
    for (label, prec, _, is_base), t, p in zip(variants, best, preds, strict=True):
        acc = hits(p, y) / len(y)
        rows.append(
            Row(
                "eval",
                label,
                prec,
                len(x) / t,
                "img/s",
                baseline=is_base,
                flops=len(x) / t * fpi["total"],
                accuracy=acc,
                accuracy_diff=acc - base_acc,
                pred_diff=int((p != preds[0]).sum()),
                note=f"batch {BASELINE_BATCH if is_base else batch_size}",
            )
        )
    if compile_model:
        rows[-1].note += f"; compiled in {extra['compile_seconds']:.0f} s"
    extra["preds"] = preds
    return rows, extra


def bench_train(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    fpi: dict[str, Any],
    batch_size: int = 256,
    reps: int = 1,
) -> list[Row]:
    """Training images/s (first step excluded: it allocates and builds kernels)."""
    if len(x) < 2 * batch_size:
        raise ValueError(f"need at least 2 batches of {batch_size} training images, got {len(x)}")
    cfg = TrainConfig(epochs=1, batch_size=batch_size, lr=0.05, seed=0)

    def stamps(run: Callable[[Callable[..., None]], Any]) -> tuple[float, Any]:
        """Images/s of the fastest step after the first (on a shared machine the fastest
        step is the one least slowed by other work; the first one builds kernels)."""
        t: list[float] = []
        out = run(lambda *_: t.append(time.perf_counter()))
        return batch_size / min(b - a for a, b in zip(t, t[1:], strict=False)), out

    def run_base(hook: Callable[..., None]) -> float:
        m = baseline_model(model)
        losses = baseline_train(m, x, y, cfg, step_hook=hook)
        return sum(losses) / len(losses)

    def run_fit(bf16: bool) -> Callable[[Callable[..., None]], float]:
        def run(hook: Callable[..., None]) -> float:
            m = copy.deepcopy(model)
            c = TrainConfig(**{**asdict(cfg), "bf16": bf16, "channels_last": True})
            res = fit(m, x, y, c, progress=False, step_hook=hook)
            return res.history[-1]["train_loss"]

        return run

    variants = [
        ("baseline: per-sample augmentation, DataLoader, fp32, NCHW", "fp32", run_base, True),
        ("prunelab fit, fp32, channels_last", "fp32", run_fit(False), False),
        ("prunelab fit, bf16, channels_last", "bf16", run_fit(True), False),
    ]
    best = [0.0] * len(variants)
    loss = [math.nan] * len(variants)
    for _ in range(max(1, reps)):
        for i, (_, _, run, _) in enumerate(variants):
            rate, loss[i] = stamps(run)
            best[i] = max(best[i], rate)
    return [
        Row(
            "train",
            label,
            prec,
            rate,
            "img/s",
            baseline=is_base,
            flops=rate * 3 * fpi["total"],
            note=f"batch {batch_size}, best of {len(x) // batch_size - 1} steps x {reps}; "
            f"mean loss {ls:.3f}",
        )
        for (label, prec, _, is_base), rate, ls in zip(variants, best, loss, strict=True)
    ]


def bench_scan(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    fpi: dict[str, Any],
    sparsities: Sequence[float],
    bf16_row: bool = True,
    reps: int = 2,
) -> list[Row]:
    """Seconds of a sensitivity scan over every conv layer at `sparsities`, both ways."""
    layers = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    sps = list(sparsities)
    base_model = baseline_model(model)
    # (precision, fold_bn); the unfolded row is the bit-exact one
    kinds = [("fp32", False), ("fp32", True)] + ([("bf16", True)] if bf16_row else [])
    runs = [
        (
            f"prunelab sensitivity_scan (prefix reuse{', BN folded' if fold else ''}), "
            f"{prec}, channels_last",
            prec,
            prec == "bf16",
            fold,
        )
        for prec, fold in kinds
    ]

    def fast(bf16: bool, fold_bn: bool) -> dict[str, Any]:
        with warnings.catch_warnings():  # ties in random weights: not news here
            warnings.simplefilter("ignore", UserWarning)
            return sensitivity_scan(
                copy.deepcopy(model),
                x,
                y,
                sparsities=sps,
                layers=layers,
                bf16=bf16,
                fold_bn=fold_bn,
                progress=False,
            )

    jobs = [lambda: baseline_scan(base_model, x, y, layers, sps)]
    jobs += [lambda bf16=bf16, fold=fold: fast(bf16, fold) for _, _, bf16, fold in runs]
    best, results = [math.inf] * len(jobs), [None] * len(jobs)
    for _ in range(max(1, reps)):  # interleaved, best of reps: other work hits all alike
        for i, job in enumerate(jobs):
            t, results[i] = timed(job)
            best[i] = min(best[i], t)
    t_base, base = best[0], results[0]
    n, s = len(x), len(sps)
    scale_note = (
        f"{len(layers)} layers x {s} sparsities x {n} images; the study's scan "
        f"({STUDY_SCAN_SPARSITIES} sparsities x {STUDY_SCAN_IMAGES} images) "
        "extrapolated: ~{:.0f} s"
    )

    def extrapolated(t: float, reuse: bool) -> float:
        full = scan_work(fpi, layers, STUDY_SCAN_SPARSITIES, reuse) * STUDY_SCAN_IMAGES
        return t * full / (scan_work(fpi, layers, s, reuse) * n)

    base_accs = [base["dense_accuracy"]] + [
        a for r in base["layers"].values() for a in r["accuracy"]
    ]
    rows = [
        Row(
            "scan",
            "baseline: whole network per point, DataLoader, fp32, NCHW",
            "fp32",
            t_base,
            "s",
            baseline=True,
            flops=scan_work(fpi, layers, s, False) * n / t_base,
            accuracy=base["dense_accuracy"],
            accuracy_diff=0.0,
            pred_diff=0,
            note=scale_note.format(extrapolated(t_base, False)),
        )
    ]
    for (label, prec, _, _), t, res in zip(runs, best[1:], results[1:], strict=True):
        reuse = res["method"] == "suffix-reuse"
        accs = [res["dense_accuracy"]] + [a for r in res["layers"].values() for a in r["accuracy"]]
        diffs = [abs(a - b) for a, b in zip(accs, base_accs, strict=True)]
        rows.append(
            Row(
                "scan",
                label,
                prec,
                t,
                "s",
                flops=scan_work(fpi, layers, s, reuse) * n / t,
                accuracy=res["dense_accuracy"],
                accuracy_diff=max(diffs),
                pred_diff=sum(d > 0 for d in diffs),
                note=scale_note.format(extrapolated(t, reuse))
                + "; Δacc = largest |difference| over all points, ≠ = points differing",
            )
        )
    return rows


def bench_study(recipe: str | Path, data_dir: Any, cache: Any) -> list[Row]:
    """Seconds of the whole quick study, prunelab's `run` against the baseline's steps."""
    from ..recipes import load_recipe
    from ..run import run_recipe
    from ..shipped import find_recipe

    rec = load_recipe(find_recipe(str(recipe)))
    with tempfile.TemporaryDirectory() as tmp:
        t_fast, res = timed(
            lambda: run_recipe(
                rec, data_dir, out=Path(tmp) / "run", cache=cache, device="cpu", progress=False
            )
        )
    t_base, base = timed(lambda: baseline_study(rec, data_dir, cache))
    fast_ft = {f"s{f['target']:.2f}-{k}": v for f in res["finetune"] for k, v in f["after"].items()}
    diffs = [fast_ft[k] - base["finetune"][k] for k in base["finetune"] if k in fast_ft]
    dense_fast = res["models"][0]["accuracy"]
    mean_diff = sum(diffs) / len(diffs) if diffs else math.nan
    return [
        Row(
            "study",
            f"baseline steps of {rec['name']} (fp32, NCHW, DataLoader)",
            "fp32",
            t_base,
            "s",
            baseline=True,
            accuracy=base["dense"],
            accuracy_diff=0.0,
            note="accuracy = dense test accuracy",
        ),
        Row(
            "study",
            f"prunelab run {rec['name']} (recipe settings)",
            "mixed",
            t_fast,
            "s",
            accuracy=dense_fast,
            accuracy_diff=dense_fast - base["dense"],
            note=f"fine-tuned models: mean accuracy difference {mean_diff:+.4f} "
            "(different random streams: run-to-run noise included)",
        ),
    ]
