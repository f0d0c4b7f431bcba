"""Per-layer pruning sensitivity scan (prune one layer, measure accuracy, restore) and its plots.

The result is always that of plain re-evaluation: for each layer and sparsity, the model with
that layer alone pruned, evaluated on every batch. Where it can be made bit-exact, dense work is
shared between probes (prunelab.sensitivity_fast): VGG-shaped models (forward =
head(backbone(x))) re-run only the backbone suffix after the probed layer ("suffix-reuse");
other models torch.fx can trace restart from the last single-tensor cut of their graph before
the probed layer ("graph-cut reuse"). Both are checked bit-exactly against model(x) before they
are trusted; otherwise the scan re-evaluates the whole model per probe and says why in
result["method"] ("plain re-evaluation: ...") and in one warning.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import time
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from matplotlib.figure import Figure
from torch import nn
from tqdm import tqdm

from .errors import PlanError
from .evaluation import Normalize, example_batch, normalizer
from .fileio import atomic_path, write_json, write_png
from .fold import fold_batchnorm
from .precision import use_bf16
from .pruning import _layers_or_raise, check_sparsity, fine_grained_mask
from .sensitivity_fast import GraphCuts, NotExact, same_bits, vgg_suffix_plan

_same_bits = same_bits  # the name tests and older code use
SUFFIX_REUSE, GRAPH_REUSE, PLAIN = "suffix-reuse", "graph-cut reuse", "plain re-evaluation"


def _batches(
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    device: torch.device,
    dtype: torch.dtype,
    channels_last: bool,
    normalize: Normalize = None,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Convert the data once (uint8 -> /255, normalise) so every probe sees the same tensors."""
    if x.dim() < 2 or len(x) != len(y) or len(x) == 0:
        raise ValueError(
            f"expected N inputs (N x C x H x W images or N x ... tensors) and N labels, got "
            f"inputs {tuple(x.shape)} and labels {tuple(y.shape)}"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    fmt = torch.channels_last if channels_last and x.dim() == 4 else torch.contiguous_format
    norm = normalizer(normalize, x.shape, device)
    out = []
    for i in range(0, len(x), batch_size):
        xb = x[i : i + batch_size].to(device)
        xb = xb.to(dtype).div_(255) if xb.dtype == torch.uint8 else xb.to(dtype)
        if norm is not None:
            xb = (xb - norm[0].to(dtype)).div_(norm[1].to(dtype))
        out.append((xb.contiguous(memory_format=fmt), y[i : i + batch_size].to(device).long()))
    return out


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
    normalize: Normalize = None,
) -> dict[str, Any]:
    """Accuracy on (x, y) with each layer alone pruned to each sparsity, from the original weights.

    x: float inputs in [0, 1] or uint8 (divided by 255), then normalised per channel with
    `normalize` = (mean, std) if given; y: labels. Layers: `layers` or every layer of `scope`
    (prunelab.pruning). Every probe starts from the original weights, which are restored
    bit-exactly (and checked) after it. The model is evaluated in eval mode; its training mode
    and device are restored afterwards (4-D parameters come back in contiguous memory format).
    reuse (default): share dense work between probes where that is bit-exact (module doc);
    result["method"] says which way was taken and, for plain re-evaluation, why.

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
    if fold_bn:
        work = fold_batchnorm(model, example=example_batch(model, x, normalize))
        work_scoped = _layers_or_raise(work, scope)
    else:
        work, work_scoped = model, scoped
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
            normalize,
        )
    finally:
        if work is model:
            model.to(home, **({"memory_format": torch.contiguous_format} if channels_last else {}))
            model.train(was_training)
    result["settings"]["fold_bn"] = fold_bn
    result["settings"]["normalize"] = (
        None if normalize is None else [[float(v) for v in p] for p in normalize]
    )
    result["seconds"] = time.perf_counter() - start
    return result


class _Probes:
    """Pruning one layer at a time on the scanned model, restoring it bit-exactly each time."""

    def __init__(
        self,
        scoped: dict[str, nn.Module],
        names: list[str],
        sps: list[float],
        rank_by: dict[str, torch.Tensor],
        device: torch.device,
    ):
        self.weights = {n: scoped[n].weight for n in names}
        self.originals = {n: w.detach().clone() for n, w in self.weights.items()}
        self.masks = {
            (n, s): fine_grained_mask(rank_by[n].to(device), s) for n in names for s in sps
        }
        self.achieved: dict[tuple[str, float], float] = {}

    @contextlib.contextmanager
    def pruned(self, n: str, s: float) -> Iterator[None]:
        """Prune layer n to s, yield, then restore its original weights bit-exactly."""
        w = self.weights[n]
        w.mul_(self.masks[n, s])
        try:
            if (n, s) not in self.achieved:
                numel = w.numel()
                self.achieved[n, s] = (numel - int(torch.count_nonzero(w))) / numel
                if s > 0 and self.achieved[n, s] == 0.0:
                    raise RuntimeError(f"probe {n} at sparsity {s} pruned nothing")
                if self.achieved[n, s] != round(numel * s) / numel:
                    warnings.warn(
                        f"{n} at sparsity {s}: achieved {self.achieved[n, s]:.6f} "
                        "(ties at the threshold, e.g. exact zeros)",
                        stacklevel=3,
                    )
            yield
        finally:
            w.copy_(self.originals[n])
        if not same_bits(w, self.originals[n]):
            raise RuntimeError(f"weights of {n} were not restored bit-exactly")


def _hits(logits: torch.Tensor, yb: torch.Tensor) -> int:
    return int((logits.argmax(1) == yb).sum())


Counts = tuple[int, dict[tuple[str, float], int]]


def _plain(model, names, sps, batches, probes: _Probes, bar) -> Counts:
    """Every probe re-evaluates the whole model: the definition the fast paths must match."""
    dense, correct = 0, {(n, s): 0 for n in names for s in sps}
    for xb, yb in batches:
        dense += _hits(model(xb), yb)
        bar.update()
    for n in names:
        for s in sps:
            with probes.pruned(n, s):
                for xb, yb in batches:
                    correct[n, s] += _hits(model(xb), yb)
                    bar.update()
    return dense, correct


def _suffix_reuse(model, plan, names, sps, batches, probes: _Probes, bar) -> Counts:
    """VGG-shaped models: the dense backbone prefix once per batch, the suffix per probe."""
    dense, correct = 0, {(n, s): 0 for n in names for s in sps}
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
                    with probes.pruned(n, s):
                        out = head(suffixes[i](h if leaf else h.clone()))
                        correct[n, s] += _hits(out, yb)
                    bar.update()
            h = child(h)
        dense += _hits(head(h), yb)
        bar.update()
        for n in in_head + rest:
            for s in sps:
                with probes.pruned(n, s):
                    correct[n, s] += _hits(head(h) if n in in_head else model(xb), yb)
                bar.update()
    return dense, correct


def _graph_reuse(model, cuts: GraphCuts, names, sps, batches, probes: _Probes, bar) -> Counts:
    """Any traced model: the dense graph once per batch; each probe restarts at the last cut
    before its layer (or from the input). The first and last batch are checked bit-exactly
    against model(x), from every cut used, before any count is trusted (NotExact otherwise)."""
    dense, correct = 0, {(n, s): 0 for n in names for s in sps}
    start = {n: cuts.start_for(probes.weights[n]) for n in names}
    at_cut: dict[int, list[str]] = {}
    for n in names:
        if start[n] is not None:
            at_cut.setdefault(start[n], []).append(n)
    from_input = [n for n in names if start[n] is None]
    checked = {0, len(batches) - 1} if len(batches[-1][0]) != len(batches[0][0]) else {0}
    for b, (xb, yb) in enumerate(batches):
        ref = model(xb) if b in checked else None

        def visit(p: int, value: Any, yb=yb, ref=ref) -> None:
            if p not in at_cut:
                return
            if not isinstance(value, torch.Tensor):
                raise NotExact(f"the graph's cut at {cuts.cut[p].name} is not one tensor")

            def resume() -> Any:
                return cuts.run(start=p, value=value if cuts.pure[p] else value.clone())

            if ref is not None and not same_bits(resume(), ref):
                raise NotExact(f"the graph run from {cuts.cut[p].name} differs from model(x)")
            for n in at_cut[p]:
                for s in sps:
                    with probes.pruned(n, s):
                        correct[n, s] += _hits(resume(), yb)
                    bar.update()

        out = cuts.run(xb, visit=visit)
        if ref is not None and not same_bits(out, ref):
            raise NotExact("the traced graph's output differs from model(x)")
        dense += _hits(out, yb)
        bar.update()
        for n in from_input:
            for s in sps:
                with probes.pruned(n, s):
                    correct[n, s] += _hits(model(xb), yb)
                bar.update()
    return dense, correct


def _graph_plan(model: nn.Module, names: list[str], probes: _Probes) -> GraphCuts | str:
    """The traced graph if some probed layer can restart after a cut, else why not."""
    try:
        cuts = GraphCuts.trace(model)
    except NotExact as e:
        return str(e)
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0][:160]
        return f"torch.fx cannot trace the model ({type(e).__name__}: {first})"
    if all(cuts.start_for(probes.weights[n]) is None for n in names):
        return "no single-tensor cut in the graph before the probed layers"
    return cuts


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
    normalize: Normalize = None,
) -> dict[str, Any]:
    """The scan proper, on a model already in eval mode on `device`; masks rank `rank_by`."""
    probes = _Probes(scoped, names, sps, rank_by, device)
    # cache_enabled=False: autocast otherwise caches each weight's bf16 copy for the whole
    # context, so probes that prune weights in place would all see the dense weights
    bf16 = use_bf16(bf16, device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16, cache_enabled=False)
    dtype = next(model.parameters()).dtype
    batches = _batches(x, y, batch_size, device, dtype, channels_last, normalize)
    bar = tqdm(
        total=len(batches) * (len(names) * len(sps) + 1),
        disable=not progress,
        desc="sensitivity",
        unit="eval",
    )
    with torch.no_grad(), autocast, bar:
        counts, method = None, f"{PLAIN}: reuse=False"
        if reuse:
            plan = vgg_suffix_plan(model, names, batches[0][0])
            if plan is not None:
                counts = _suffix_reuse(model, plan, names, sps, batches, probes, bar)
                method = SUFFIX_REUSE
            else:
                cuts = _graph_plan(model, names, probes)
                try:
                    if isinstance(cuts, str):
                        raise NotExact(cuts)
                    counts = _graph_reuse(model, cuts, names, sps, batches, probes, bar)
                    method = GRAPH_REUSE
                except NotExact as e:
                    method = f"{PLAIN}: {e}"
                    warnings.warn(f"sensitivity scan: {method}", stacklevel=3)
                    bar.reset()
        if counts is None:
            counts = _plain(model, names, sps, batches, probes, bar)
    dense, correct = counts
    total = len(x)
    return {
        "dense_accuracy": dense / total,
        "sparsities": sps,
        "layers": {
            n: {
                "params": probes.weights[n].numel(),
                "accuracy": [correct[n, s] / total for s in sps],
                "achieved": [probes.achieved[n, s] for s in sps],
            }
            for n in names
        },
        "n_images": total,
        "method": method,
        "settings": {
            "batch_size": batch_size,
            "device": str(device),
            "bf16": bf16,
            "channels_last": channels_last,
            "reuse": reuse,
        },
    }


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
    write_png(fig, path_png)


def plot_layer_params(model: nn.Module, path_png: str | os.PathLike, scope: str = "all") -> None:
    """Bar chart of weights per prunable layer (where pruning can save the most)."""
    layers = _layers_or_raise(model, scope)
    fig = Figure(figsize=(max(6.0, 0.6 * len(layers)), 4), layout="constrained")
    ax = fig.subplots()
    ax.bar(range(len(layers)), [m.weight.numel() for m in layers.values()])
    ax.set_xticks(range(len(layers)), list(layers), rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("#parameters")
    write_png(fig, path_png)


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
    write_png(fig, path_png)


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
