"""Channel sensitivity scan: each group alone pruned to each ratio, measured on real data.

Exact like the fine-grained scan: every probe starts from a fresh deep copy of the original
weights, so probes never see each other. Plain re-evaluation of every probe: simple and
correct first (the copies are small; sharing dense work between probes can come later).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from ..accounting import count_macs, count_params
from ..batchnorm import recalibrate_bn
from ..evaluation import Normalize
from ..models import arch_of
from ..train import evaluate
from .importance import check_importance
from .surgery import check_ratio, graph_of, group_step, kept_channels, prune_in_place


def _num_classes(model: nn.Module) -> int | None:
    """The class count the model was built for (its record), else None (the logits' width)."""
    kwargs = (arch_of(model) or {}).get("kwargs") or {}
    n = kwargs.get("num_classes")
    return n if isinstance(n, int) and not isinstance(n, bool) else None


def channel_scan(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    ratios: tuple[float, ...] | list[float] = (0.2, 0.4, 0.6),
    importance: str = "l2",
    batch_size: int = 1000,
    normalize: Normalize = None,
    progress: bool = False,
    groups: list[str] | None = None,
    calibrate: torch.Tensor | None = None,
    recover: Callable[[nn.Module], Any] | None = None,
) -> dict[str, Any]:
    """Accuracy, MACs and parameters with each channel group alone pruned to each ratio.

    x, y and normalize as for prunelab.evaluate (normalize is the model's (mean, std), if it
    was trained with one: prunelab.models.normalize_of gives it as a dict). Probes are
    evaluated with BatchNorm folded (fold_bn=True). A ratio that would empty a group records
    None. calibrate: training images on which each probe's BatchNorm statistics are
    re-estimated before it is scored (recalibrate_bn); None scores the probe as cut.
    Under importance "lab" the group feeding the classifier is never pruned, so it is
    not scanned. recover: called on each pruned probe before calibration and scoring (a
    short fine-tune: see app.steps.recovery), so the scan measures how well a layer
    recovers rather than how badly the cut alone hurts. Returns {"dense_accuracy" (the
    model as it is), "reference_accuracy" (a copy of it recovered and re-estimated exactly
    like every probe: what plans measure drops from), "dense_macs", "dense_params",
    "ratios", "importance", "seconds", "bn_recalibrated_on", "recovered", "groups": {name:
    {"channels", "kept", "accuracy", "macs", "params"}}}; the caller's model is not changed.
    """
    check_importance(importance)
    rs = [check_ratio(r, "channel scan") for r in ratios]
    graph = graph_of(model)
    names = list(graph.groups) if groups is None else [graph.group(g, "scan").name for g in groups]
    if importance == "lab":
        names = [n for n in names if not graph.groups[n].feeds_output]
    param = next(model.parameters())
    nc = _num_classes(model)
    kw = {"batch_size": batch_size, "device": param.device, "normalize": normalize}
    start = time.perf_counter()

    def treated(m: nn.Module) -> float:
        """m's accuracy after what every probe goes through (recovery, re-estimation)."""
        if recover is not None:
            recover(m)
        if calibrate is not None:
            recalibrate_bn(m, calibrate, normalize)
        return float(evaluate(m, x, y, num_classes=nc, fold_bn=True, **kw)["accuracy"])

    dense = float(evaluate(model, x, y, num_classes=nc, fold_bn=True, **kw)["accuracy"])
    out: dict[str, Any] = {
        "dense_accuracy": dense,
        # re-estimating statistics on a sample costs accuracy by itself (the shared VGG: 0.2
        # to 1.2 points on 2,000 images with 1,024 drawn); a drop must not count that cost
        "reference_accuracy": (
            dense if recover is None and calibrate is None else treated(copy.deepcopy(model))
        ),
        "dense_macs": int(count_macs(model)["total"]),
        "dense_params": count_params(model),
        "ratios": rs,
        "importance": importance,
        "groups": {},
    }
    probes = [(n, r) for n in names for r in rs]
    for n in names:
        c = graph.groups[n].channels
        out["groups"][n] = {"channels": c, "kept": [], "accuracy": [], "macs": [], "params": []}
    for n, r in tqdm(probes, desc="channel scan", disable=not progress, leave=False):
        row = out["groups"][n]
        kept = kept_channels(row["channels"], r, group_step(graph.groups[n], None))
        row["kept"].append(kept)
        if kept < 1:
            for key in ("accuracy", "macs", "params"):
                row[key].append(None)
            continue
        probe = copy.deepcopy(model)
        prune_in_place(probe, {n: r}, importance)
        row["accuracy"].append(treated(probe))
        row["macs"].append(int(count_macs(probe)["total"]))
        row["params"].append(count_params(probe))
    out["seconds"] = time.perf_counter() - start
    out["bn_recalibrated_on"] = 0 if calibrate is None else len(calibrate)
    out["recovered"] = recover is not None
    return out
