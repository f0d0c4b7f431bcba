"""Latency as a picture: how much faster, and where the time went.

A table of medians says how much faster a pruned model is; a chart shows it at a glance, and
with per-layer timings (prunelab.kernels.layer_breakdown) where: each conv and Linear layer
gets a bar per model, labelled with the kernel PyTorch ran it on, so a layer whose time fell
less than its MACs (a switch to a slower kernel) stands out. Without per-layer timings, each
model's median with its p25-p75 spread, per batch size.
"""

from __future__ import annotations

import os
from typing import Any

from matplotlib.figure import Figure

from .fileio import write_png


def plot_latency(result: dict[str, Any], path_png: str | os.PathLike) -> None:
    """One panel per batch size of a measure_latency result (with "layers" when it has them:
    per-layer bars), written as PNG atomically."""
    sizes = result["settings"]["batch_sizes"]
    layers = result.get("layers")
    # bars per panel: one per model, or one per model and layer (two bar heights per model
    # without layers, so a two-model chart is not squashed)
    per_model = len(next(iter(layers[str(sizes[0])].values()))) if layers else 2
    height = 1.2 + 0.45 * per_model * len(result["models"])
    fig = Figure(figsize=(5.5 * len(sizes), height), layout="constrained")
    axes = fig.subplots(1, len(sizes), squeeze=False)[0]
    for ax, b in zip(axes, sizes, strict=True):
        if layers:
            _layer_panel(ax, layers[str(b)], result["models"], b)
        else:
            _model_panel(ax, [r for r in result["rows"] if r["batch_size"] == b], b)
    fig.suptitle(figure_title(result["settings"]))
    write_png(fig, path_png)


def figure_title(settings: dict[str, Any]) -> str:
    """Runtime, dtype, threads and the processor that timed it: timings (and which kernel is
    faster) differ between CPUs, so a chart read without its CPU misleads."""
    s = settings
    where = s.get("cpu") if s.get("device", "cpu") == "cpu" else s.get("device")
    title = f"{s.get('runtime', '')} {s.get('dtype', '')}, {s.get('threads')} threads"
    return f"{title}, {where}" if where else title


def _model_panel(ax: Any, rows: list[dict[str, Any]], batch_size: int) -> None:
    names = [r["model"] for r in rows]
    med = [r["median_ms"] for r in rows]
    low = [r["median_ms"] - r["p25_ms"] for r in rows]
    high = [r["p75_ms"] - r["median_ms"] for r in rows]
    ax.barh(names, med, xerr=[low, high], color="tab:blue", capsize=3)
    for i, r in enumerate(rows):
        ax.text(r["p75_ms"], i, f"  {r['median_ms']:.2f} ms, {r['speedup']:.2f}x", va="center")
    ax.invert_yaxis()
    ax.set_xlabel("median ms per batch (whiskers: p25-p75)")
    ax.set_title(f"batch {batch_size}")
    ax.margins(x=0.35)


def _layer_panel(
    ax: Any, per_model: dict[str, dict[str, Any]], models: list[str], batch_size: int
) -> None:
    order = list(dict.fromkeys(layer for m in models for layer in per_model[m]))
    height = 0.8 / len(models)
    for k, m in enumerate(models):
        ys = [i + k * height for i, layer in enumerate(order) if layer in per_model[m]]
        rows = [per_model[m][layer] for layer in order if layer in per_model[m]]
        ax.barh(ys, [r["ms"] for r in rows], height=height, label=m)
        for y, r in zip(ys, rows, strict=True):
            ax.text(r["ms"], y, f" {r['kernel']}", va="center", fontsize=7)
    ax.set_yticks([i + 0.4 - height / 2 for i in range(len(order))], order, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("median ms per batch, hook-timed")
    ax.set_title(f"batch {batch_size}: per layer")
    ax.margins(x=0.3)
    ax.legend(fontsize=8, loc="lower right")
