"""Channels a layer cannot use: the least ratio a plan gives an over-complete layer.

A convolution with more filters than its filter space has dimensions (out channels >
in channels x kernel size: a first 3x3 conv on RGB has 64 filters in 27 dimensions) holds
linearly dependent filters. In the shared full-width VGG, 15 singular values hold 90 % of
conv0's weights' energy, where every other layer needs 63-76 % of its channels for 90 %.
Cut to 16 channels, conv0 cost nothing measurable after fine-tuning (16/64/128/128/224x4
reached 88.21 %, two seeds, where plans keeping conv0 at 32 and 10 M more MACs reached
88.16-88.20 %) and freed 5 % of the batch-1 time. So a plan may take such a layer down to
its effective rank before any other layer gives up a channel: `rank_floors` says how far.
Layers that are not over-complete get no floor (their rank says little about what
fine-tuning can recover).
"""

from __future__ import annotations

import torch

from ..errors import PlanError
from .graph import ChannelGraph


def check_energy(energy: object) -> float:
    """`energy` if it is a number in (0, 1); PlanError (one line) otherwise."""
    ok = isinstance(energy, int | float) and not isinstance(energy, bool)
    if not ok or not 0 < energy < 1:
        raise PlanError(f"rank energy must be a number in (0, 1) (e.g. 0.9), got {energy!r}")
    return float(energy)


def effective_rank(weights: torch.Tensor, energy: float) -> int:
    """How many singular values of `weights` (rows: output channels) hold `energy` of its
    squared Frobenius norm."""
    s2 = torch.linalg.svdvals(weights.detach().double().cpu()).pow(2)
    total = float(s2.sum())
    if total == 0:
        return 0
    share = torch.cumsum(s2, 0) / total
    return int((share < energy - 1e-12).sum()) + 1


def rank_floors(graph: ChannelGraph, energy: float) -> dict[str, float]:
    """{group: least ratio} for every over-complete group: 1 - rank / channels, where rank
    is the effective rank (at `energy`) of the group's output filters stacked side by side
    (every dense conv or linear producing its channels; depthwise ones carry no filter
    space of their own). A group is over-complete when it has more channels than those
    filters have inputs."""
    energy = check_energy(energy)
    floors = {}
    for name, g in graph.groups.items():
        rows, seen = [], set()
        for s in g.slots:
            if s.kind != "out" or id(s.module) in seen or len(s.local) != g.channels:
                continue
            seen.add(id(s.module))
            w = s.module.weight
            transposed = getattr(s.module, "transposed", False)
            w = w.movedim(1, 0) if transposed else w
            idx = torch.tensor(s.local, dtype=torch.long, device=w.device)
            block = w.detach().index_select(0, idx).reshape(len(s.local), -1)
            rows.append(block.double().cpu()[torch.argsort(torch.tensor(s.root))])
        if not rows:
            continue
        filters = torch.cat(rows, dim=1)
        if filters.shape[0] != g.channels or filters.shape[0] <= filters.shape[1]:
            continue
        rank = max(1, effective_rank(filters, energy))
        floors[name] = 1.0 - rank / g.channels
    return floors
