"""Measuring tools of the benchmark: timing, the machine's peak, FLOP counts and profiles."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...pruning import sparsity_report


@dataclass
class Row:
    """One line of the table. `value` is images/s (unit 'img/s') or seconds (unit 's')."""

    task: str
    path: str
    precision: str
    value: float
    unit: str
    ratio: float | None = None  # speed-up over the task's baseline (> 1: faster)
    flops: float | None = None  # achieved FLOP/s
    peak_fraction: float | None = None  # flops / measured peak of this precision
    accuracy: float | None = None
    accuracy_diff: float | None = None  # this path minus the baseline
    pred_diff: int | None = None  # predictions (or scan accuracies) differing from the baseline
    baseline: bool = False
    note: str = ""


def speedup(value: float, base: float, unit: str) -> float:
    """How many times faster than the baseline: a rate ratio, or a time ratio inverted."""
    return value / base if unit == "img/s" else base / value


def finish(rows: list[Row], peak: dict[str, float]) -> list[Row]:
    """Fill ratio and fraction of peak of every row from its task's baseline row."""
    bases = {r.task: r for r in rows if r.baseline}
    for r in rows:
        base = bases.get(r.task)
        if base is not None and base.value > 0 and r.value > 0:
            r.ratio = speedup(r.value, base.value, r.unit)
        if r.flops is not None and peak.get(r.precision):
            r.peak_fraction = r.flops / peak[r.precision]
    return rows


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def measure_peak(n: int = 4096, reps: int = 3) -> dict[str, Any]:
    """Best FLOP/s of an n x n x n GEMM per precision, as torch.mm and as a 1x1 convolution.

    The convolution form runs through oneDNN like the VGG's layers do; torch.mm on fp32
    goes to MKL, which can pick a much slower code path on non-Intel CPUs, so the peak
    of a precision is the better of the two.
    """
    g = torch.Generator().manual_seed(0)
    detail: dict[str, float] = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.randn(n, n, generator=g).to(dtype)
        b = torch.randn(n, n, generator=g).to(dtype)
        side = int(math.isqrt(n // 16)) or 1
        batch = max(1, n // (side * side))
        xc = torch.randn(batch, n, side, side, generator=g).to(dtype)
        xc = xc.contiguous(memory_format=torch.channels_last)
        wc = b.reshape(n, n, 1, 1).contiguous(memory_format=torch.channels_last)
        rows = batch * side * side
        for kind, fn, flop in (
            ("mm", lambda a=a, b=b: torch.mm(a, b), 2 * n**3),
            ("conv1x1", lambda xc=xc, wc=wc: F.conv2d(xc, wc), 2 * rows * n * n),
        ):
            fn()
            best = min(timed(fn)[0] for _ in range(reps))
            detail[f"{name}_{kind}"] = flop / best
    return {
        "fp32": max(detail["fp32_mm"], detail["fp32_conv1x1"]),
        "bf16": max(detail["bf16_mm"], detail["bf16_conv1x1"]),
        "detail": detail,
        "n": n,
    }


def best_peak(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Per figure, the better of two peak measurements (taken at the start and the end of
    the run: on a shared machine either one may have been slowed by other work)."""
    detail = {k: max(a["detail"][k], b["detail"][k]) for k in a["detail"]}
    return {
        **a,
        "detail": detail,
        "fp32": max(a["fp32"], b["fp32"]),
        "bf16": max(a["bf16"], b["bf16"]),
    }


def flops_per_image(model: nn.Module) -> dict[str, Any]:
    """Forward FLOPs per 32x32 image (2 x MACs of every Conv2d and Linear), per layer too."""
    rep = sparsity_report(model, scope="all")
    layers = [(r["name"], 2 * r["macs_dense"]) for r in rep["layers"]]
    return {"total": 2 * rep["macs_dense"], "layers": layers}


def suffix_flops(per_layer: list[tuple[str, int]], name: str) -> int:
    """FLOPs of running the network from layer `name` to the logits (the scan's probe)."""
    names = [n for n, _ in per_layer]
    return sum(f for _, f in per_layer[names.index(name) :])


def scan_work(fpi: dict[str, Any], layers: list[str], n_sparsities: int, reuse: bool) -> float:
    """FLOPs per image a scan executes: one dense pass plus one probe per (layer, sparsity)."""
    per_probe = [suffix_flops(fpi["layers"], n) if reuse else fpi["total"] for n in layers]
    return fpi["total"] + n_sparsities * sum(per_probe)


@torch.no_grad()
def calibrate(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Make a random VGG behave like a trained one where the bench can tell: BatchNorm
    statistics of real images (so BN folding is not a no-op) and logits standardised per
    class (so predictions spread over the classes and an argmax flip would show)."""
    saved = {}
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            saved[m] = m.momentum
            m.momentum = None  # cumulative average = this batch's statistics
    inputs = x.float() / 255
    model.train()(inputs)
    for m, mom in saved.items():
        m.momentum = mom
    model.eval()
    head = getattr(model, "classifier", None)
    if isinstance(head, nn.Linear):
        logits = model(inputs)
        mean, std = logits.mean(0), logits.std(0).clamp_min(1e-6)
        head.weight.div_(std[:, None])
        head.bias.sub_(mean).div_(std)
    return model


def breakdown(fn: Callable[[], Any]) -> dict[str, float]:
    """Seconds of self CPU time per kind of operator while `fn` runs (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    kinds = (
        ("convolution", ("conv",)),
        ("linear", ("addmm", "aten::mm", "linear")),
        ("batch norm", ("batch_norm",)),
        ("relu", ("relu", "threshold")),
        ("max pool", ("max_pool",)),
        ("optimizer/masks", ("_foreach", "sgd", "lerp", "aten::mul_", "aten::add_")),
        (
            "data/copies",
            (
                "copy",
                "_to_copy",
                "aten::to",
                "contiguous",
                "clone",
                "gather",
                "pad",
                "div",
                "cat",
                "stack",
                "index",
                "randperm",
                "randint",
            ),
        ),
        ("loss", ("cross_entropy", "log_softmax", "nll_loss")),
    )
    out: dict[str, float] = {}
    for ev in prof.key_averages():
        kind = next((k for k, keys in kinds if any(s in ev.key for s in keys)), "other")
        out[kind] = out.get(kind, 0.0) + ev.self_cpu_time_total / 1e6
    return out


def bound_text(parts: dict[str, float], conv_flops: float, peak: float) -> str:
    """Say what limits a path: how fast its convolutions run and where the rest goes."""
    total = sum(parts.values()) or 1.0
    conv = parts.get("convolution", 0.0)
    rest = sorted(((v, k) for k, v in parts.items() if k != "convolution"), reverse=True)[:3]
    eff = conv_flops / conv / peak if conv > 0 and peak else 0.0
    others = ", ".join(f"{k} {v / total:.0%}" for v, k in rest if v / total >= 0.01)
    return (
        f"convolutions take {conv / total:.0%} of the time and run at {eff:.0%} of peak "
        f"(oneDNN kernel speed at these shapes); rest: {others or 'negligible'}"
    )
