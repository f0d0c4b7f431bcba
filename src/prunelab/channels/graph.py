"""Channel groups: the sets of coupled layers whose output channels must be removed together.

Why Torch-Pruning is a dependency: finding which layers are coupled is a graph problem
(a residual add ties every conv feeding it, a depthwise conv ties its input and output
channels, a concatenation maps a producer's channels to an offset in the consumer's input,
a flatten spreads one channel over H*W inputs of a Linear). Torch-Pruning's DependencyGraph
(Fang et al., DepGraph, CVPR 2023) solves exactly that by tracing autograd, and its layer
functions cut the tensors consistently. prunelab uses only that graph and that surgery;
ranking, plans, channel counts and accounting stay here (its pruners are not used).

This module must not import prunelab.models (models.arch calls into channels.record while
loading a checkpoint), so it takes the example input's shape from its caller.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from ..errors import PlanError, PrunelabError

_DUMMY_OPS = (
    tp.ops._ConcatOp,
    tp.ops._SplitOp,
    tp.ops._ElementWiseOp,
    tp.ops._ReshapeOp,
    tp.ops._OutputOp,
    tp.ops._SliceOp,
    tp.ops._ExpandOp,
    tp.ops._UnbindOp,
)


class ChannelError(PrunelabError):
    """The model cannot be channel-pruned (it does not trace, or a layer cannot be cut)."""


@dataclass
class Slot:
    """One place a group's channels live: a tensor dimension of one layer (or a shape-only op).

    kind: "out" (a conv/linear's output filters), "in" (a conv/linear's input channels),
    "dw" (a depthwise conv: input and output at once), "bn", "prelu", "ln" (a LayerNorm over
    the channels alone), "gn" (a GroupNorm), "inorm" (an InstanceNorm), or "op" (no tensors).
    local[i] is the index in this layer of the group's channel root[i] (several locals per
    root after a flatten).
    """

    name: str
    module: Any
    kind: str
    local: list[int]
    root: list[int]
    is_out: bool = False  # this layer's outputs are the group's channels

    def params(self) -> list[tuple[torch.Tensor, int]]:
        """(tensor, dim) pairs holding this slot's channels."""
        m = self.module
        if self.kind == "op":
            return []
        if self.kind in ("bn", "prelu", "ln", "gn", "inorm"):
            names = ["weight", "bias", "running_mean", "running_var"]
            found = [getattr(m, n, None) for n in names]
            return [(t, 0) for t in found if isinstance(t, torch.Tensor)]
        transposed = bool(getattr(m, "transposed", False))
        if self.kind == "in":
            return [(m.weight, 0 if transposed else 1)]
        out = [(m.weight, 1 if transposed and self.kind == "out" else 0)]
        return out + ([(m.bias, 0)] if getattr(m, "bias", None) is not None else [])


@dataclass
class ChannelGroup:
    """Coupled layers whose output channels are removed together; named after `name`, the
    first of its output layers (conv or linear) in the model's module order."""

    name: str
    channels: int
    root: nn.Module
    root_fn: Callable[..., Any]
    slots: list[Slot]
    members: list[str]  # conv/linear layers whose outputs are these channels
    consumers: list[str]  # conv/linear layers whose inputs are these channels
    depthwise: list[str] = field(default_factory=list)
    feeds_output: bool = False  # an output layer (the classifier) reads these channels
    # a GroupNorm's groups (lcm of several): channels are ranked, sorted and cut within each
    # of `blocks` equal consecutive blocks, the same number from each (see norm_blocks)
    blocks: int = 1


@dataclass
class ChannelGraph:
    """A traced model: its prunable groups, and why every other conv/linear is not one."""

    model: nn.Module
    dg: Any  # tp.DependencyGraph
    groups: dict[str, ChannelGroup]
    blocked: dict[str, str]  # layer name -> why it cannot be named in a plan
    outputs: list[str]  # layers producing the model's output (never pruned)
    # layer name -> why its channels stay whole (a layer prunelab cannot cut is in its group)
    unprunable: dict[str, str] = field(default_factory=dict)

    def group(self, name: Any, what: str = "plan") -> ChannelGroup:
        """The group called `name`; PlanError (one line) saying why any other name is not one."""
        if isinstance(name, str) and name in self.groups:
            return self.groups[name]
        if isinstance(name, str) and name in self.blocked:
            raise PlanError(f"{what}: {self.blocked[name]}")
        raise PlanError(
            f"{what}: unknown channel group {name!r}; groups of this model: "
            f"{', '.join(self.groups) or '(none)'}"
        )

    def fresh(self, group: ChannelGroup) -> list[Slot]:
        """The group's slots for the model as it is now (after other groups were cut)."""
        g = self.dg.get_pruning_group(group.root, group.root_fn, list(range(current(group))))
        return _slots(self.dg, g, _names(self.model))


def current(group: ChannelGroup) -> int:
    """The group's channel count in the model as it is now."""
    m = group.root
    return int(m.out_channels if isinstance(m, nn.modules.conv._ConvNd) else m.out_features)


def unwrap(model: nn.Module) -> nn.Module:
    if isinstance(model, nn.DataParallel | nn.parallel.DistributedDataParallel):
        return model.module
    return model


def _names(model: nn.Module) -> dict[int, str]:
    return {id(m): n for n, m in model.named_modules()}


def _kind(dg: Any, module: Any, handler: Callable[..., Any]) -> str | None:
    """The slot kind of a group item; None for a layer prunelab does not cut."""
    if isinstance(module, nn.modules.conv._ConvNd):
        if module.groups == 1:
            return "out" if dg.is_out_channel_pruning_fn(handler) else "in"
        dw = module.groups == module.in_channels == module.out_channels
        return "dw" if dw and not module.transposed else None
    if isinstance(module, nn.Linear):
        return "out" if dg.is_out_channel_pruning_fn(handler) else "in"
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return "bn"
    if isinstance(module, nn.LayerNorm) and len(module.normalized_shape) == 1:
        # over the channels alone (a ConvNeXt block's, on channels-last activations): its
        # statistics ignore the order, so a sort is exact. Over (C, H, W) it would mix
        # channels with positions, which Torch-Pruning's LayerNorm cut does not handle.
        return "ln"
    if isinstance(module, nn.GroupNorm):
        return "gn"  # its statistics are per group of channels: see norm_blocks
    if isinstance(module, nn.modules.instancenorm._InstanceNorm):
        return "inorm"  # each channel normalised alone: a sort is exact; see cut for its stats
    if isinstance(module, nn.PReLU):
        return "prelu" if module.num_parameters > 1 else "op"
    if isinstance(module, _DUMMY_OPS):
        return "op"
    return None


def _what(module: Any) -> str:
    """Why a layer is one prunelab does not cut, when its type alone does not say."""
    if isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1:
        if module.transposed:
            return f" (a grouped transposed convolution, groups={module.groups})"
        return f" (a grouped convolution, groups={module.groups})"
    return ""


def _slots(dg: Any, group: Any, names: dict[int, str]) -> list[Slot]:
    out = []
    for item in group:
        module, handler = item.dep.target.module, item.dep.handler
        kind = _kind(dg, module, handler)
        name = names.get(id(module), type(module).__name__)
        is_out = dg.is_out_channel_pruning_fn(handler)
        out.append(Slot(name, module, kind or "?", list(item.idxs), list(item.root_idxs), is_out))
    return out


def _split_slot(slots: list[Slot], channels: int) -> Slot | None:
    """The first layer that sees only some of the group's channels, or None.

    Only a split, chunk, slice or unbind on the channel dimension does that (a concatenation
    gives every producer a group of its own; a flatten spreads each channel, keeping all).
    Its sizes live in the model's code, which pruning cannot rewrite: a cut would hand a
    layer the wrong channels (or the wrong number), and a sort could not stay on its side.
    """
    return next(
        (s for s in slots if s.kind != "op" and s.root and len(set(s.root)) < channels), None
    )


def norm_blocks(slots: list[Slot], channels: int) -> tuple[int, Slot | None]:
    """The blocks a group's GroupNorms divide it into, or (1, the GroupNorm that forbids a cut).

    A GroupNorm normalises each of its num_groups consecutive blocks of channels together.
    A cut that takes the same number of channels from every block, and a sort that keeps each
    channel in its block, leave every survivor normalised with the same companions, so the
    kept count is a multiple of num_groups. One group (statistics over all channels) or one
    per channel (each alone) constrains nothing. A GroupNorm that sees other channels too
    (after a concatenation) cannot be kept whole by this group's cut: it is returned.
    """
    blocks = 1
    for s in slots:
        if s.kind != "gn":
            continue
        groups, size = s.module.num_groups, s.module.num_channels
        if 1 < groups < size:
            whole = size == channels and s.local == s.root == list(range(channels))
            if not whole:
                return 1, s
            blocks = math.lcm(blocks, groups)
    return blocks, None


def cut(dg: Any, group: ChannelGroup, idxs: list[int]) -> None:
    """Remove channels `idxs` (the group's current numbering) from every coupled layer.

    Torch-Pruning keeps a GroupNorm's num_groups; one with a group per channel gets as many
    groups as channels are left (any other must divide the count, which norm_blocks ensures).
    Its InstanceNorm cut leaves the running statistics at the old size (they would no longer
    load or broadcast): they lose the same channels here.
    """
    if not idxs:
        return
    pruning = dg.get_pruning_group(group.root, group.root_fn, sorted(idxs))
    per_channel, stats = {}, {}  # GroupNorms with a group per channel; InstanceNorms with
    for item in pruning:  # running statistics -> the local channels they lose
        m = item.dep.target.module
        if isinstance(m, nn.GroupNorm) and m.num_groups == m.num_channels:
            per_channel[id(m)] = m
        elif isinstance(m, nn.modules.instancenorm._InstanceNorm) and m.running_mean is not None:
            stats[id(m)] = (m, set(item.idxs))
    pruning.prune()
    for m in per_channel.values():
        m.num_groups = m.num_channels
    for m, gone in stats.values():
        keep = [i for i in range(m.running_mean.shape[0]) if i not in gone]
        m.running_mean, m.running_var = m.running_mean[keep], m.running_var[keep]


@contextlib.contextmanager
def _tracing(model: nn.Module) -> Iterator[list[str]]:
    """Autograd on, every parameter traced, mode restored; yields the stack of modules running
    (its top names the module an exception came from)."""
    running: list[str] = []
    names = {m: n for n, m in model.named_modules()}
    hooks = []

    def enter(name: str) -> Callable[..., None]:
        return lambda _m, _i: running.append(name)

    def leave(_m: nn.Module, _i: Any, _o: Any) -> None:  # returns None: the output stays
        if running:
            running.pop()

    for m, n in names.items():
        hooks.append(m.register_forward_pre_hook(enter(n)))
        hooks.append(m.register_forward_hook(leave))
    flags = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    try:
        for p, _ in flags:
            p.requires_grad_(True)  # the trace follows grad_fn: frozen weights would vanish
        with torch.enable_grad():
            yield running
    finally:
        for h in hooks:
            h.remove()
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


def _trace(model: nn.Module, input_shape: tuple[int, ...]) -> Any:
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    x = torch.zeros(1, *input_shape, device=device, dtype=dtype)
    with _tracing(model) as running:
        try:
            return tp.DependencyGraph().build_dependency(
                model, example_inputs=x, forward_fn=lambda m, inp: m(inp), verbose=False
            )
        except Exception as e:  # any failure of a user's forward or of the trace itself
            where = f" in module {running[-1]!r}" if running and running[-1] else ""
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ChannelError(
                f"cannot trace {type(model).__name__} on an input of shape {list(input_shape)} "
                f"for channel pruning{where}: {first}"
            ) from None


def build_graph(model: nn.Module, input_shape: tuple[int, ...] | list[int]) -> ChannelGraph:
    """Trace `model` on one zero input of `input_shape` (no batch dim) and find its groups.

    A group is left out (and said why in `blocked`) when it would change the model's output
    (the classifier's outputs: the logits), or when it holds a layer prunelab cannot cut
    consistently (a grouped, not depthwise, conv; a LayerNorm over positions too; a GroupNorm
    shared with other channels; ...).
    """
    model = unwrap(model)
    dg = _trace(model, tuple(input_shape))
    names = _names(model)
    order = {n: i for i, n in enumerate(names.values())}
    layer_types = (nn.modules.conv._ConvNd, nn.Linear)
    groups: dict[str, ChannelGroup] = {}
    blocked: dict[str, str] = {}
    unprunable: dict[str, str] = {}
    outputs: list[str] = []
    raw = list(dg.get_all_groups(root_module_types=layer_types))
    for g in raw:
        slots = _slots(dg, g, names)
        out_layers = [s.name for s in slots if s.is_out and isinstance(s.module, layer_types)]
        out_layers = sorted(dict.fromkeys(out_layers), key=lambda n: order.get(n, 1 << 30))
        sink = any(
            not item.dep.target.outputs and dg.is_out_channel_pruning_fn(item.dep.handler)
            for item in g
        )
        if sink:  # these channels are the model's output: pruning would change its shape
            outputs += out_layers
            continue
        root = g[0].dep.target.module
        name = out_layers[0] if out_layers else names.get(id(root), type(root).__name__)
        bad = next((s for s in slots if s.kind == "?"), None)
        split = _split_slot(slots, len(g[0].idxs))
        blocks, shared_norm = norm_blocks(slots, len(g[0].idxs))
        if bad is not None or split is not None or shared_norm is not None:
            if bad is not None:
                why = (
                    f"it holds {type(bad.module).__name__} {bad.name!r}{_what(bad.module)}, "
                    "which prunelab cannot cut consistently"
                )
            elif split is not None:
                why = (
                    "its channels are divided in the forward (torch.split, torch.chunk, a "
                    f"slice or unbind) before {split.name!r}, at sizes written in the model's code"
                )
            else:
                why = (
                    f"GroupNorm {shared_norm.name!r} normalises its channels together with "
                    "others (after a concatenation), in groups a cut of this group alone "
                    "cannot keep"
                )
            why = f"channel group {name!r} cannot be pruned: {why}"
            for n in out_layers:
                blocked[n] = unprunable[n] = why
            continue
        dw = list(dict.fromkeys(s.name for s in slots if s.kind == "dw"))
        groups[name] = ChannelGroup(
            name=name,
            channels=len(g[0].idxs),
            root=root,
            root_fn=g[0].dep.handler,
            slots=slots,
            members=out_layers,
            consumers=list(dict.fromkeys(s.name for s in slots if s.kind == "in")),
            depthwise=dw,
            blocks=blocks,
        )
        for n in out_layers[1:]:
            how = (
                "a depthwise conv: its input and output channels are tied"
                if n in dw
                else "coupled to it (a residual add, a concatenation or a shared input)"
            )
            blocked[n] = f"layer {n!r} is pruned with channel group {name!r} ({how}); name {name!r}"
    for n in outputs:
        blocked[n] = f"layer {n!r} produces the model's output: its channels are never pruned"
    for g in groups.values():
        g.feeds_output = any(c in outputs for c in g.consumers)
    ordered = dict(sorted(groups.items(), key=lambda kv: order.get(kv[0], 1 << 30)))
    return ChannelGraph(model, dg, ordered, blocked, outputs, unprunable)
