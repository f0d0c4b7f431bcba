"""Channel surgery: sort a group's channels by importance, or remove some of them for real.

Removing goes through Torch-Pruning's DependencyGraph (see graph.py), which shrinks every
coupled layer at once, so convolutions really get smaller (fine-grained masks leave dense
kernels that run no faster). Sorting is prunelab's own: it permutes the same tensors the
graph names, which changes no output.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import nn

from ..errors import PlanError
from ..models import arch_of, input_shape_of
from .graph import ChannelGraph, ChannelGroup, build_graph, current, cut, unwrap
from .importance import check_importance, group_importance


def graph_of(model: nn.Module) -> ChannelGraph:
    """The model's channel groups, traced on its own input shape (batch 1)."""
    return build_graph(model, input_shape_of(unwrap(model)))


def channel_groups(model: nn.Module) -> dict[str, dict[str, Any]]:
    """{group name: {"channels", "members", "consumers", "depthwise", "feeds_output"}}:
    what can be pruned, and which layers shrink with each group."""
    return {
        n: {
            "channels": g.channels,
            "members": list(g.members),
            "consumers": list(g.consumers),
            "depthwise": list(g.depthwise),
            "feeds_output": g.feeds_output,
        }
        for n, g in graph_of(model).groups.items()
    }


def channel_importance(model: nn.Module, importance: str = "l2") -> dict[str, torch.Tensor]:
    """{group name: one score per channel (float64, CPU)}; see prunelab.channels.importance."""
    check_importance(importance)
    graph = graph_of(model)
    return {n: group_importance(g, importance) for n, g in graph.groups.items()}


@torch.no_grad()
def permute_group(graph: ChannelGraph, group: ChannelGroup, order: torch.Tensor) -> None:
    """Reorder the group's channels: new channel p is old channel order[p], in every tensor
    holding them (weights, biases, BatchNorm parameters and statistics, consumers' inputs)."""
    order = order.to(torch.long).cpu()
    done: set[tuple[int, str]] = set()
    for slot in graph.fresh(group):
        key = (id(slot.module), slot.kind)
        if key in done or slot.kind == "op":
            continue
        done.add(key)
        locals_of: dict[int, list[int]] = {}
        for loc, r in zip(slot.local, slot.root, strict=True):
            locals_of.setdefault(r, []).append(loc)
        locals_of = {r: sorted(locs) for r, locs in locals_of.items()}
        for tensor, dim in slot.params():
            src = list(range(tensor.shape[dim]))
            for p, old in enumerate(order.tolist()):
                for loc, from_loc in zip(locals_of[p], locals_of[old], strict=True):
                    src[loc] = from_loc
            idx = torch.tensor(src, dtype=torch.long, device=tensor.device)
            tensor.copy_(tensor.index_select(dim, idx))


def sort_channels(
    model: nn.Module, importance: str = "l2", groups: list[str] | None = None
) -> dict[str, list[int]]:
    """Put each group's channels in descending importance, so pruning can keep the first k
    (of each GroupNorm group, where a GroupNorm divides the channels: see ranked).

    The model computes the same function afterwards (to fp32 rounding). `groups` limits the
    sort to those groups. Returns {group: order}, order[p] being the old index of channel p.
    """
    check_importance(importance)
    graph = graph_of(model)
    names = list(graph.groups) if groups is None else [graph.group(g).name for g in groups]
    scores = {n: group_importance(graph.groups[n], importance) for n in names}
    orders = {}
    for n in names:
        order = ranked(scores[n], graph.groups[n].blocks)
        permute_group(graph, graph.groups[n], order)
        orders[n] = [int(i) for i in order]
    return orders


def ranked(scores: torch.Tensor, blocks: int = 1) -> torch.Tensor:
    """Channel indexes by descending score (stable), within each of `blocks` equal consecutive
    blocks (a GroupNorm's groups): position p holds a channel of the block p falls in."""
    size = len(scores) // blocks
    order = torch.argsort(scores.view(blocks, size), dim=1, descending=True, stable=True)
    return (order + torch.arange(blocks).unsqueeze(1) * size).reshape(-1)


def dropped(order: torch.Tensor, kept: int, blocks: int = 1) -> list[int]:
    """The channels a cut to `kept` removes: the tail of `order` (ranked's) in every block."""
    tails = order.view(blocks, -1)[:, kept // blocks :]
    return [int(i) for i in tails.reshape(-1)]


def group_step(group: ChannelGroup, round_to: int | None) -> int | None:
    """What the group's kept count is a multiple of: round_to, and its GroupNorm's groups."""
    return round_to if group.blocks == 1 else math.lcm(round_to or 1, group.blocks)


def group_steps(graph: ChannelGraph, round_to: int | None) -> dict[str, int | None]:
    return {n: group_step(g, round_to) for n, g in graph.groups.items()}


def remove_channels(graph: ChannelGraph, group: ChannelGroup, idxs: list[int]) -> None:
    """Cut channels `idxs` (in the group's current numbering) out of every coupled layer."""
    cut(graph.dg, group, idxs)


def check_ratio(value: Any, what: str) -> float:
    """A channel pruning ratio: the fraction of a group's channels removed, in [0, 1)."""
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or not 0 <= value < 1:
        raise PlanError(
            f"{what}: channel pruning ratio must be a number in [0, 1) (the fraction of channels "
            f"removed), got {value!r}"
        )
    return float(value)


def check_round_to(round_to: Any) -> int | None:
    if round_to is None:
        return None
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to <= 0:
        raise PlanError(f"round_to must be an integer >= 1 (or None), got {round_to!r}")
    return round_to


def kept_channels(channels: int, ratio: float, round_to: int | None = None) -> int:
    """round(c * (1 - ratio)); with round_to, the nearest multiple of it, at least round_to
    and never more than c."""
    kept = round(channels * (1 - ratio))
    if round_to:
        kept = min(channels, max(round_to, round_to * round(kept / round_to)))
    return kept


def resolve_channel_plan(
    graph: ChannelGraph, plan: Any, keep_last_conv: bool = False, what: str = "plan"
) -> dict[str, float]:
    """{group: ratio} for every group the plan prunes (a uniform ratio: every group, except
    those feeding the classifier under keep_last_conv)."""
    if isinstance(plan, dict):
        out = {}
        for name, ratio in plan.items():
            g = graph.group(name, what)
            r = check_ratio(ratio, f"{what}: {name}")
            if keep_last_conv and g.feeds_output and r > 0:
                raise PlanError(
                    f"{what}: channel group {name!r} feeds the classifier and keep_last_conv is "
                    "set (importance 'lab' keeps it whole)"
                )
            out[g.name] = r
        return out
    r = check_ratio(plan, what)
    return {n: r for n, g in graph.groups.items() if not (keep_last_conv and g.feeds_output)}


def _attach(model: nn.Module, counts: dict[str, int]) -> None:
    model = unwrap(model)
    record = arch_of(model)
    if record is None:
        warnings.warn(
            f"{type(model).__name__} has no architecture record (build it with "
            "prunelab.build_model): its checkpoints will not record the channel counts",
            stacklevel=3,
        )
        return
    record = dict(record)
    record["channels"] = dict(counts)
    model.prunelab_arch = record


def prune_channels(
    model: nn.Module,
    plan: Any,
    importance: str = "l2",
    round_to: int | None = None,
    keep_last_conv: bool = False,
) -> dict[str, int]:
    """Remove the least important channels of each group; returns {group: channels kept}.

    plan: a ratio in [0, 1) for every group (the fraction of channels removed), or
    {group: ratio}. Each group keeps round(c * (1 - ratio)) channels (see kept_channels),
    ranked within the group by `importance`; the classifier's outputs are never pruned.
    importance="lab" is the course lab's procedure exactly: sort every group but the one
    feeding the classifier by the lab importance, then keep the first k (keep_last_conv).
    The counts, of every group, also go to model.prunelab_arch["channels"], which is what a
    checkpoint records so that load_model can rebuild the slimmer network.
    Parameters are new tensors afterwards: make optimizers and Pruners after this.
    """
    counts = prune_in_place(model, plan, importance, round_to, keep_last_conv)
    _attach(model, counts)
    return counts


def prune_in_place(
    model: nn.Module,
    plan: Any,
    importance: str = "l2",
    round_to: int | None = None,
    keep_last_conv: bool = False,
) -> dict[str, int]:
    """prune_channels without touching the architecture record (for throwaway copies)."""
    check_importance(importance)
    round_to = check_round_to(round_to)
    keep_last_conv = keep_last_conv or importance == "lab"
    graph = graph_of(model)
    ratios = resolve_channel_plan(graph, plan, keep_last_conv)
    kept = {}
    for name, r in ratios.items():
        g = graph.groups[name]
        kept[name] = kept_channels(g.channels, r, group_step(g, round_to))
        if kept[name] < 1:
            raise PlanError(
                f"pruning would empty layer {name!r} ({g.channels} channels at ratio {r} keep "
                "none); lower its ratio"
            )
    cuts = [n for n in ratios if kept[n] < graph.groups[n].channels]
    if importance == "lab":
        for g in graph.groups.values():
            if not g.feeds_output:
                permute_group(graph, g, ranked(group_importance(g, "lab"), g.blocks))
        removals = {
            n: dropped(torch.arange(graph.groups[n].channels), kept[n], graph.groups[n].blocks)
            for n in cuts
        }
    else:
        removals = {}
        for n in cuts:
            g = graph.groups[n]
            removals[n] = dropped(
                ranked(group_importance(g, importance), g.blocks), kept[n], g.blocks
            )
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    for n in cuts:
        remove_channels(graph, graph.groups[n], removals[n])
    for n, p in model.named_parameters():  # cut weights are new Parameters: keep them frozen
        if n in frozen:
            p.requires_grad_(False)
    return {n: current(g) for n, g in graph.groups.items()}
