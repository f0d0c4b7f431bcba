"""Rebuilding a channel-pruned network from its checkpoint's plain record {group: kept}.

A checkpoint holds tensors and plain values only (it loads with weights_only=True; modules
are never pickled, unlike Torch-Pruning's own save helpers). So the slimmer network is made
again: the base model is built from the architecture record, each group is cut to its kept
count, and the saved state dict then replaces every weight. Which channels are cut does not
matter (the last ones, deterministically): only the shapes have to match.

Works on the meta device too (load_model builds registry models there first as a size check).
Imports no prunelab.models (models.arch calls this module).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..errors import CheckpointError
from .graph import ChannelError, build_graph, cut


def _check_record(channels: Any, source: str) -> dict[str, int]:
    ok = isinstance(channels, dict) and all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
        for k, v in channels.items()
    )
    if not ok:
        raise CheckpointError(
            f"{source}: the 'channels' record must be a dict {{channel group: kept channels "
            f"(int)}}, got {channels!r}"[:300]
        )
    return channels


def apply_record(
    model: nn.Module,
    channels: dict[str, int],
    input_shape: tuple[int, ...] | list[int],
    source: str = "checkpoint",
) -> nn.Module:
    """Cut the freshly built base `model` to the recorded channel counts (in place)."""
    channels = _check_record(channels, source)
    if not channels:
        return model
    try:
        graph = build_graph(model, input_shape)
    except ChannelError as e:
        raise CheckpointError(f"{source}: {e}") from None
    for name, kept in channels.items():
        if name not in graph.groups:
            raise CheckpointError(
                f"{source}: the 'channels' record names unknown channel group {name!r} "
                f"(groups of this model: {', '.join(graph.groups) or 'none'})"
            )
        c = graph.groups[name].channels
        if not 1 <= kept <= c:
            raise CheckpointError(
                f"{source}: the 'channels' record keeps {kept} channels of group {name!r}, "
                f"which has {c} (expected 1..{c})"
            )
        blocks = graph.groups[name].blocks
        if kept % blocks:
            raise CheckpointError(
                f"{source}: the 'channels' record keeps {kept} channels of group {name!r}, "
                f"whose GroupNorm divides them into {blocks} groups (expected a multiple of "
                f"{blocks})"
            )
    for name, kept in channels.items():
        g = graph.groups[name]
        if kept < g.channels:
            cut(graph.dg, g, list(range(kept, g.channels)))
    return model
