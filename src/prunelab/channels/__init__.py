"""Channel (structured) pruning: remove whole channels so convolutions really get smaller.

Fine-grained masks leave dense kernels that run no faster; removing a channel group shrinks
every coupled layer (residual adds, depthwise convs and concatenations handled by
Torch-Pruning's DependencyGraph, see graph.py). prunelab owns the ranking (importance.py),
the plans (plans.py), the scan (scan.py) and the channel record a checkpoint keeps
(record.py; prunelab.models.load_model rebuilds the slimmer network from it).
"""

from .graph import ChannelError, ChannelGraph, ChannelGroup, build_graph
from .importance import IMPORTANCES, check_importance, group_importance
from .plans import (
    CostModel,
    MacsCost,
    TableCost,
    global_channel_plan,
    greedy_plan,
    macs_target_plan,
)
from .scan import channel_scan
from .surgery import (
    channel_groups,
    channel_importance,
    graph_of,
    kept_channels,
    prune_channels,
    sort_channels,
)

__all__ = [
    "IMPORTANCES", "ChannelError", "ChannelGraph", "ChannelGroup", "CostModel", "MacsCost",
    "TableCost", "build_graph", "channel_groups", "channel_importance", "channel_scan",
    "check_importance", "global_channel_plan", "graph_of", "greedy_plan", "group_importance",
    "kept_channels", "macs_target_plan", "prune_channels", "sort_channels",
]  # fmt: skip
