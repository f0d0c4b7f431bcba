"""One-run benchmark: prunelab's evaluation, training, sensitivity scan (and optionally the quick
study) against a straightforward PyTorch baseline, with the machine's peak measured alongside.

Everything in the printed table is measured in the same process, interleaved, so ratios are
comparable even on a busy machine: each figure is the best of `--reps` timed passes. The
baseline is what a plain PyTorch script does: a per-sample `Dataset` (uint8 -> float and, for
training, random crop + flip per image in Python) feeding a `DataLoader`, fp32, NCHW, and a
sensitivity scan that re-evaluates the whole network for every (layer, sparsity) point.

    prunelab bench [--width 1.0] [--n-eval 1000] [--n-train 768] [--threads 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...errors import PrunelabError
from ...fileio import ensure_writable, write_json
from ...fold import fold_batchnorm
from ...latency import cpu_name
from ...models import VGG
from ...train import TrainConfig, fit, predict
from ..argtypes import Parser, at_least_one, positive, sparsity_list
from .figure import plot_rows
from .measure import (
    Row,
    best_peak,
    bound_text,
    breakdown,
    calibrate,
    finish,
    flops_per_image,
    measure_peak,
)
from .paths import bench_eval, bench_scan, bench_study, bench_train
from .verdict import GOALS, format_table, goals


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The bench options, shared by `prunelab bench` and benchmarks/run.py."""
    p.add_argument(
        "--width",
        type=positive,
        default=1.0,
        help="VGG width (default 1.0: the full VGG the goals are set for)",
    )
    p.add_argument(
        "--checkpoint",
        default=None,
        help="a trained checkpoint instead of a random VGG (its width wins)",
    )
    p.add_argument(
        "--data-dir",
        default=None,
        help="CIFAR-10 (an image-folder tree or the python archive; default: the cache "
        "folder's copy, downloaded when absent)",
    )
    p.add_argument("--cache-dir", default=None, help="downloads and decoded data")
    p.add_argument("--n-eval", type=at_least_one, default=1000, help="test images to evaluate")
    p.add_argument("--n-train", type=at_least_one, default=768, help="training images per path")
    p.add_argument(
        "--train-batch-size", type=at_least_one, default=256, help="images per training step"
    )
    p.add_argument("--n-scan", type=at_least_one, default=200, help="test images for the scan")
    p.add_argument(
        "--sparsities",
        "--scan-sparsities",
        dest="scan_sparsities",
        type=sparsity_list,
        default="0.5,0.9",
        help="sparsities scanned (default 0.5,0.9; the study's 6 are extrapolated)",
    )
    p.add_argument(
        "--eval-batch-size", type=at_least_one, default=1000, help="images per eval batch"
    )
    p.add_argument(
        "--reps",
        type=at_least_one,
        default=2,
        help="timed passes per eval and scan path, interleaved (best counts)",
    )
    p.add_argument(
        "--threads", type=at_least_one, default=None, help="torch threads (default: torch's)"
    )
    p.add_argument("--peak-size", type=at_least_one, default=4096, help="n of the n^3 peak GEMM")
    p.add_argument(
        "--no-fold-bn",
        "--no-fold",
        dest="no_fold",
        action="store_true",
        help="skip the BN-folded eval rows",
    )
    p.add_argument("--no-scan-bf16", action="store_true", help="skip the bf16 scan row")
    p.add_argument(
        "--no-profile", action="store_true", help="do not profile paths below the peak goal"
    )
    # Off by default: on the 2-core dev machine inductor (with freezing) evaluated the folded
    # full VGG 12-15% faster with identical fp32 predictions, but compiling took 8-20 s and
    # freezing bakes the weights in, so every new model (the study evaluates ten) recompiles.
    p.add_argument(
        "--compile",
        action="store_true",
        help="add a torch.compile (inductor, freezing) bf16 eval row; compiles 10-20 s",
    )
    p.add_argument(
        "--study",
        action="store_true",
        help="also time the quick study end to end, both ways (10+ minutes)",
    )
    p.add_argument("--recipe", default="quick", help="recipe for --study (default quick)")
    p.add_argument("--json", default=None, help="write rows, goals and peak here")
    p.add_argument("--plot", default=None, help="draw speed-ups and fractions of peak to this PNG")


def _subset(x: torch.Tensor, y: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    from ...data import subset

    return subset(x, y, min(n, len(x)), seed=0)


def run(args: argparse.Namespace, out: Any = None) -> dict[str, Any]:
    """Measure everything `args` asks for, print the table and goals, return them."""
    out = out or sys.stdout
    if args.threads:
        torch.set_num_threads(args.threads)
    say = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    if args.n_train < 2 * args.train_batch_size:
        raise PrunelabError(
            f"--n-train {args.n_train} is less than 2 batches of --train-batch-size "
            f"{args.train_batch_size}: expected at least {2 * args.train_batch_size} (the first "
            "step builds kernels and is not timed)"
        )
    for path in (args.json, args.plot):  # refuse an unwritable output before minutes of work
        if path:
            ensure_writable(Path(path))
    from ...data import load_cifar10

    data = load_cifar10(args.data_dir, cache=args.cache_dir, download=False)
    if args.checkpoint:
        from ...models import load_model

        model = load_model(args.checkpoint, args.cache_dir)[0].eval()
        width = model.width
    else:
        torch.manual_seed(0)
        width = args.width
        model = calibrate(VGG(width=width), data.train_x[:256])
    fpi = flops_per_image(model)
    # fit and the study log each epoch on stdout: keep stdout for the table alone
    with contextlib.redirect_stdout(sys.stderr):
        t_start, load_start = time.perf_counter(), _load()
        say("peak matmul ...")
        peak = measure_peak(args.peak_size)
        rows: list[Row] = []
        say("evaluation ...")
        ex, ey = _subset(data.test_x, data.test_y, args.n_eval)
        eval_rows, _ = bench_eval(
            model,
            ex,
            ey,
            fpi,
            batch_size=args.eval_batch_size,
            reps=args.reps,
            fold=not args.no_fold,
            compile_model=args.compile,
        )
        rows += eval_rows
        say("training ...")
        tx, ty = _subset(data.train_x, data.train_y, args.n_train)
        rows += bench_train(model, tx, ty, fpi, batch_size=args.train_batch_size)
        say("sensitivity scan ...")
        sx, sy = _subset(data.test_x, data.test_y, args.n_scan)
        sps = args.scan_sparsities
        rows += bench_scan(model, sx, sy, fpi, sps, bf16_row=not args.no_scan_bf16, reps=args.reps)
        if args.study:
            say("quick study, both ways (slow) ...")
            rows += bench_study(args.recipe, args.data_dir, args.cache_dir)
        say("peak matmul again ...")
        peak = best_peak(peak, measure_peak(args.peak_size))
        finish(rows, peak)
        bounds = {} if args.no_profile else explain_bounds(model, rows, peak, fpi, ex, tx, args)
    verdicts = goals(rows, bounds, width)
    seconds = time.perf_counter() - t_start
    load = _load()
    summary = (
        f"prunelab bench: VGG width {width} ({fpi['total'] / 2e6:.0f} M MACs/image), "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"{cpu_name()} ({os.cpu_count()} cores); {seconds:.0f} s; "
        f"load average {load_start:.1f} at the start, {load:.1f} at the end"
    )
    print(summary, file=out)
    if max(load_start, load) > 1.5 * torch.get_num_threads():
        print(
            "note: other work was running (load average above this run's threads): "
            "figures are best-of, interleaved, but still noisy; with a busy core, "
            "--threads 1 gives steadier (and often faster) figures",
            file=out,
        )
    print(format_table(rows, peak), file=out)
    print("\ngoals:", file=out)
    for name, ok, detail in verdicts:
        print(f"  {'PASS' if ok else 'FAIL'}  {name}: {detail}", file=out)
    result = {
        "width": width,
        "threads": torch.get_num_threads(),
        "seconds": seconds,
        "peak": peak,
        "rows": [asdict(r) for r in rows],
        "goals": [{"goal": g, "pass": ok, "detail": d} for g, ok, d in verdicts],
        "bounds": bounds,
    }
    if args.json:
        write_json(args.json, result)
    if args.plot:
        plot_rows(rows, args.plot, title=summary)
    return result


def explain_bounds(
    model: nn.Module,
    rows: list[Row],
    peak: dict[str, Any],
    fpi: dict[str, Any],
    ex: torch.Tensor,
    tx: torch.Tensor,
    args: argparse.Namespace,
) -> dict[str, str]:
    """Profile a short run like each prunelab path that misses the peak goal; keyed
    'task/path'. A scan is evaluation work, so it is explained by an evaluation profile."""
    conv_fpi = sum(f for n, f in fpi["layers"] if "conv" in n)
    cache: dict[tuple[str, str, bool], str] = {}

    def explain(task: str, prec: str, folded: bool) -> str:
        bf16 = prec == "bf16"
        m = fold_batchnorm(model) if folded else copy.deepcopy(model)
        if task == "eval":
            xs = ex[:256]
            predict(m, xs, batch_size=len(xs), bf16=bf16)  # build the kernels first
            parts = breakdown(lambda: predict(m, xs, batch_size=len(xs), bf16=bf16))
            flops, what = conv_fpi * len(xs), f"evaluation of {len(xs)} images in one batch"
        else:
            bs = min(64, len(tx) // 2)
            cfg = TrainConfig(epochs=1, batch_size=bs, bf16=bf16, seed=0)
            fit(m, tx[:bs], ty_dummy(bs), cfg, progress=False)  # build the kernels first
            parts = breakdown(lambda: fit(m, tx[: 2 * bs], ty_dummy(2 * bs), cfg, progress=False))
            flops, what = 3 * conv_fpi * 2 * bs, f"2 training steps of batch {bs}"
        return f"{bound_text(parts, flops, peak[prec])} (profiled: {what})"

    out = {}
    for r in rows:
        if r.baseline or r.peak_fraction is None or r.peak_fraction >= GOALS["peak"]:
            continue
        if r.task not in ("eval", "train", "scan") or r.precision not in peak:
            continue
        key = ("train" if r.task == "train" else "eval", r.precision, "BN folded" in r.path)
        if key not in cache:
            cache[key] = explain(*key)
        out[f"{r.task}/{r.path}"] = cache[key]
    return out


def ty_dummy(n: int) -> torch.Tensor:
    """Labels for a profiling run (their values do not change the work done)."""
    return torch.arange(n) % 10


def _load() -> float:
    """1-minute load average (processes wanting a core), or 0 where the OS has none."""
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return 0.0


def main(argv: list[str] | None = None) -> int:
    """Entry point of `prunelab bench` and benchmarks/run.py."""
    p = Parser(prog="prunelab bench", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    args = p.parse_args(argv)
    try:
        run(args)
    except PrunelabError as e:
        sys.stderr.write(f"prunelab bench: error: {e}\n")
        return 2
    return 0
