"""The peer a user would otherwise reach for: Torch-Pruning's own high-level pruner.

prunelab uses Torch-Pruning's dependency graph for the surgery but ranks, plans and counts
itself. To show what that buys, the goals benchmark prunes the same dense model with
Torch-Pruning's MetaPruner as its documentation shows it (uniform ratio per layer, group L2
magnitude, classifier ignored), at the ratio whose MACs come nearest a given target, and
fine-tunes it with the same budget. The result is saved as a prunelab checkpoint (kept
counts per channel group), so it reloads with weights_only like any other.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from ..accounting import count_macs
from ..channels import graph_of
from ..models import input_shape_of
from ..models.arch import arch_of


def classifier_of(model: nn.Module) -> nn.Module:
    """The last Linear (or conv) module: its outputs are the classes and are never pruned."""
    layers = [m for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    return layers[-1]


def torch_pruning_uniform(model: nn.Module, ratio: float) -> nn.Module:
    """A copy of `model` pruned by tp.pruner.MetaPruner: every layer loses `ratio` of its
    channels by group L2 magnitude (tp.importance.GroupMagnitudeImportance(p=2))."""
    work = copy.deepcopy(model).eval()
    example = torch.rand(1, *input_shape_of(model))
    pruner = tp.pruner.MetaPruner(
        work,
        example,
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=ratio,
        ignored_layers=[classifier_of(work)],
    )
    pruner.step()
    record = arch_of(work)
    if record is not None:  # the kept counts, named by prunelab's groups, for the checkpoint
        counts = {name: g.channels for name, g in graph_of(work).groups.items()}
        work.prunelab_arch = {**record, "channels": counts}
    return work


def peer_at_macs(model: nn.Module, macs: int, steps: int = 14) -> tuple[nn.Module, float]:
    """Torch-Pruning's uniform pruner at the ratio whose MACs come nearest `macs` (bisection
    on the ratio; MACs traced by prunelab.accounting.count_macs, as for every other model)."""
    lo, hi, best = 0.0, 0.95, None
    for _ in range(steps):
        mid = (lo + hi) / 2
        pruned = torch_pruning_uniform(model, mid)
        got = count_macs(pruned)["total"]
        if best is None or abs(got - macs) < abs(best[2] - macs):
            best = (pruned, mid, got)
        if got > macs:
            lo = mid
        else:
            hi = mid
    return best[0], best[1]


def peer_meta(model: nn.Module, ratio: float) -> dict[str, Any]:
    return {
        "produced_by": "Torch-Pruning MetaPruner (uniform, group L2), via prunelab goals",
        "torch_pruning": tp.__version__,
        "peer_ratio": ratio,
        "kept_channels": (arch_of(model) or {}).get("channels"),
    }
