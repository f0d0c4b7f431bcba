"""Per-layer pruning sensitivity scan (prune one layer, measure accuracy, restore) and its plots.

For models shaped like prunelab's VGG (forward = head(backbone(x)), backbone an nn.Sequential)
the scan computes the dense prefix once per batch and re-runs only the suffix after the probed
layer: the same operations on the same tensors, so fp32 accuracies are bit-identical to
re-running the whole network for every point.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import time
import warnings
from typing import Any

import torch
from matplotlib.figure import Figure
from torch import nn
from tqdm import tqdm

from .errors import PlanError
from .fileio import atomic_path, write_json
from .fold import fold_batchnorm
from .pruning import _layers_or_raise, check_sparsity, fine_grained_mask


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality (tells -0.0 from 0.0 and compares NaNs), whatever the memory layout."""
    return (
        a.shape == b.shape
        and a.dtype == b.dtype
        and torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))
    )


def _batches(
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    device: torch.device,
    dtype: torch.dtype,
    channels_last: bool,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Convert the data once (uint8 -> /255) so every probe sees the very same input tensors."""
    if x.dim() != 4 or len(x) != len(y) or len(x) == 0:
        raise ValueError(
            f"expected N x C x H x W images and N labels, got images "
            f"{tuple(x.shape)} and labels {tuple(y.shape)}"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    out = []
    for i in range(0, len(x), batch_size):
        xb = x[i : i + batch_size].to(device)
        xb = xb.to(dtype).div_(255) if xb.dtype == torch.uint8 else xb.to(dtype)
        out.append((xb.contiguous(memory_format=fmt), y[i : i + batch_size].to(device).long()))
    return out


def _suffix_plan(
    model: nn.Module, names: list[str], sample: torch.Tensor
) -> tuple[dict[int, list[str]], list[str], list[str]] | None:
    """Split layers into (backbone stage -> layers, layers the head uses, the rest).

    None when the model has no `backbone` Sequential and `head`, or when model(x) differs from
    head(backbone(x)) on `sample` (checked bit-exactly), i.e. when reuse would change numbers.
    """
    backbone, head = getattr(model, "backbone", None), getattr(model, "head", None)
    if not isinstance(backbone, nn.Sequential) or not callable(head):
        return None
    path = {m: n for n, m in model.named_modules()}
    stage_of = {path[m]: i for i, child in enumerate(backbone) for m in child.modules()}
    called: set[str] = set()
    modules = dict(model.named_modules())
    feats = backbone(sample)
    hooks = [modules[n].register_forward_hook(lambda *_, n=n: called.add(n)) for n in names]
    try:
        fast = head(feats)
    finally:
        for h in hooks:
            h.remove()
    if not _same_bits(fast, model(sample)):
        warnings.warn(
            "model(x) differs from head(backbone(x)): scanning without reuse", stacklevel=3
        )
        return None
    stages: dict[int, list[str]] = {}
    for n in names:
        if n in stage_of:
            stages.setdefault(stage_of[n], []).append(n)
    rest = [n for n in names if n not in stage_of]
    return stages, [n for n in rest if n in called], [n for n in rest if n not in called]


def sensitivity_scan(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    sparsities: tuple[float, ...] | list[float] = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
    layers: list[str] | None = None,
    scope: str = "conv",
    batch_size: int = 1000,
    device: str | torch.device = "cpu",
    bf16: bool = False,
    channels_last: bool = True,
    reuse: bool = True,
    fold_bn: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Accuracy on (x, y) with each layer alone pruned to each sparsity, from the original weights.

    x: float images in [0, 1] or uint8 (divided by 255); y: labels. Every probe starts from the
    original weights, which are restored bit-exactly (and checked) after it. The model is
    evaluated in eval mode; its training mode and device are restored afterwards (4-D
    parameters come back in contiguous memory format).

    fold_bn (default): probe a copy with BatchNorm folded into the convolutions (prunelab.fold),
    one memory-bound pass less per layer. Masks are still ranked on the original weights (the
    folded ones are scaled per channel, which would change the ranking), and pruning commutes
    with folding, so each probe is fold(pruned model): the same model to fp32 rounding.
    The caller's model is then not touched at all.
    """
    sps = [check_sparsity(s) for s in sparsities]
    scoped = _layers_or_raise(model, scope)
    names = list(scoped) if layers is None else [n.removesuffix(".weight") for n in layers]
    unknown = [n for n in names if n not in scoped]
    if unknown:
        raise PlanError(
            f"unknown layer(s) {', '.join(unknown)} for scope {scope!r}; "
            f"valid layers: {', '.join(scoped)}"
        )
    for n in names:
        numel = scoped[n].weight.numel()
        for s in sps:
            if s > 0 and round(numel * s) == 0:
                raise ValueError(f"sparsity {s} prunes nothing of {n} ({numel} weights)")
    device = torch.device(device)
    param = next(model.parameters())
    home, was_training = param.device, model.training
    start = time.perf_counter()
    rank_by = {n: scoped[n].weight.detach() for n in names}
    work = fold_batchnorm(model) if fold_bn else model
    work_scoped = _layers_or_raise(work, scope) if fold_bn else scoped
    try:
        work.eval()
        work.to(device, **({"memory_format": torch.channels_last} if channels_last else {}))
        result = _scan(
            work,
            work_scoped,
            names,
            sps,
            x,
            y,
            batch_size,
            device,
            bf16,
            channels_last,
            reuse,
            progress,
            rank_by,
        )
    finally:
        if work is model:
            model.to(home, **({"memory_format": torch.contiguous_format} if channels_last else {}))
            model.train(was_training)
    result["settings"]["fold_bn"] = fold_bn
    result["seconds"] = time.perf_counter() - start
    return result


def _scan(
    model: nn.Module,
    scoped: dict[str, nn.Module],
    names: list[str],
    sps: list[float],
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    device: torch.device,
    bf16: bool,
    channels_last: bool,
    reuse: bool,
    progress: bool,
    rank_by: dict[str, torch.Tensor],
) -> dict[str, Any]:
    """The scan proper, on a model already in eval mode on `device`; masks rank `rank_by`."""
    weights = {n: scoped[n].weight for n in names}
    originals = {n: w.detach().clone() for n, w in weights.items()}
    masks = {(n, s): fine_grained_mask(rank_by[n].to(device), s) for n in names for s in sps}
    achieved: dict[tuple[str, float], float] = {}
    correct = {(n, s): 0 for n in names for s in sps}
    dense = 0
    # cache_enabled=False: autocast otherwise caches each weight's bf16 copy for the whole
    # context, so probes that prune weights in place would all see the dense weights
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16, cache_enabled=False)

    @contextlib.contextmanager
    def pruned(n: str, s: float):
        """Prune layer n to s, yield, then restore its original weights bit-exactly."""
        w = weights[n]
        w.mul_(masks[n, s])
        try:
            if (n, s) not in achieved:
                numel = w.numel()
                achieved[n, s] = (numel - int(torch.count_nonzero(w))) / numel
                if s > 0 and achieved[n, s] == 0.0:
                    raise RuntimeError(f"probe {n} at sparsity {s} pruned nothing")
                if achieved[n, s] != round(numel * s) / numel:
                    warnings.warn(
                        f"{n} at sparsity {s}: achieved {achieved[n, s]:.6f} "
                        "(ties at the threshold, e.g. exact zeros)",
                        stacklevel=3,
                    )
            yield
        finally:
            w.copy_(originals[n])
        if not _same_bits(w, originals[n]):
            raise RuntimeError(f"weights of {n} were not restored bit-exactly")

    def hits(logits: torch.Tensor, yb: torch.Tensor) -> int:
        return int((logits.argmax(1) == yb).sum())

    dtype = next(model.parameters()).dtype
    batches = _batches(x, y, batch_size, device, dtype, channels_last)
    bar = tqdm(
        total=len(batches) * (len(names) * len(sps) + 1),
        disable=not progress,
        desc="sensitivity",
        unit="eval",
    )
    with torch.no_grad(), autocast, bar:
        plan = _suffix_plan(model, names, batches[0][0]) if reuse else None
        if plan is None:
            for xb, yb in batches:
                dense += hits(model(xb), yb)
                bar.update()
            for n in names:
                for s in sps:
                    with pruned(n, s):
                        for xb, yb in batches:
                            correct[n, s] += hits(model(xb), yb)
                            bar.update()
        else:
            stages, in_head, rest = plan
            backbone, head = model.backbone, model.head
            suffixes = [backbone[i:] for i in range(len(backbone))]
            for xb, yb in batches:
                h = xb
                for i, child in enumerate(backbone):
                    # a container might modify its input in place: give it a copy
                    leaf = isinstance(child, nn.Conv2d | nn.Linear)
                    for n in stages.get(i, []):
                        for s in sps:
                            with pruned(n, s):
                                out = head(suffixes[i](h if leaf else h.clone()))
                                correct[n, s] += hits(out, yb)
                            bar.update()
                    h = child(h)
                dense += hits(head(h), yb)
                bar.update()
                for n in in_head + rest:
                    for s in sps:
                        with pruned(n, s):
                            correct[n, s] += hits(head(h) if n in in_head else model(xb), yb)
                        bar.update()
    total = len(x)
    return {
        "dense_accuracy": dense / total,
        "sparsities": sps,
        "layers": {
            n: {
                "params": weights[n].numel(),
                "accuracy": [correct[n, s] / total for s in sps],
                "achieved": [achieved[n, s] for s in sps],
            }
            for n in names
        },
        "n_images": total,
        "method": "suffix-reuse" if plan is not None else "full-forward",
        "settings": {
            "batch_size": batch_size,
            "device": str(device),
            "bf16": bf16,
            "channels_last": channels_last,
            "reuse": reuse,
        },
    }


def _save(fig: Figure, path: str | os.PathLike) -> None:
    """Write a figure as PNG atomically (format given: the temporary file ends in .tmp)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)


def _grid(n: int, cols: int = 4) -> tuple[Figure, list[Any]]:
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(3.2 * min(n, cols), 2.6 * rows), layout="constrained")
    axes = fig.subplots(rows, min(n, cols), squeeze=False).flatten()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, list(axes[:n])


def plot_sensitivity(result: dict[str, Any], path_png: str | os.PathLike) -> None:
    """One small panel per layer: accuracy vs sparsity, dense accuracy dashed."""
    fig, axes = _grid(len(result["layers"]))
    for ax, (name, r) in zip(axes, result["layers"].items(), strict=True):
        ax.plot(result["sparsities"], r["accuracy"], marker="o")
        ax.axhline(result["dense_accuracy"], linestyle="--", color="gray")
        ax.set_title(f"{name}\n{r['params']:,} params", fontsize=9)
        ax.set_xlabel("sparsity", fontsize=8)
        ax.set_ylabel("accuracy", fontsize=8)
        ax.tick_params(labelsize=7)
    _save(fig, path_png)


def plot_layer_params(model: nn.Module, path_png: str | os.PathLike, scope: str = "all") -> None:
    """Bar chart of weights per prunable layer (where pruning can save the most)."""
    layers = _layers_or_raise(model, scope)
    fig = Figure(figsize=(max(6.0, 0.6 * len(layers)), 4), layout="constrained")
    ax = fig.subplots()
    ax.bar(range(len(layers)), [m.weight.numel() for m in layers.values()])
    ax.set_xticks(range(len(layers)), list(layers), rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("#parameters")
    _save(fig, path_png)


def plot_weight_histograms(
    model: nn.Module, path_png: str | os.PathLike, scope: str = "conv", title: str | None = None
) -> None:
    """Histogram of each layer's non-zero weights (log counts), to see what pruning removed."""
    layers = _layers_or_raise(model, scope)
    fig, axes = _grid(len(layers))
    for ax, (name, m) in zip(axes, layers.items(), strict=True):
        w = m.weight.detach().float().cpu().flatten()
        ax.hist(w[w != 0].numpy(), bins=60, log=True)
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title)
    _save(fig, path_png)


def write_scan(
    result: dict[str, Any], path_json: str | os.PathLike, path_csv: str | os.PathLike
) -> None:
    """Save a scan as JSON (everything) and CSV (layer,sparsity,achieved,accuracy), atomically."""
    write_json(path_json, result)
    with atomic_path(path_csv) as tmp, open(tmp, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["layer", "sparsity", "achieved", "accuracy"])
        for name, r in result["layers"].items():
            for row in zip(result["sparsities"], r["achieved"], r["accuracy"], strict=True):
                out.writerow([name, *row])
