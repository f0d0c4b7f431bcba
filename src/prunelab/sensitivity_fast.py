"""Reusing dense activations in the sensitivity scan, only where the result stays bit-exact.

A probe prunes one layer; everything computed before that layer's weight is first used is the
same as in the dense model. Two ways to skip it:

* `vgg_suffix_plan`: models shaped like prunelab's VGG (forward = head(backbone(x)), backbone an
  nn.Sequential), checked bit-exactly on a batch;
* `GraphCuts`: any model torch.fx can trace. The graph is run node by node; a *cut* is a point
  in execution order where exactly one tensor is still needed later, so the rest of the graph
  depends on the input only through it. A probe runs the dense graph up to the last cut before
  its layer's first use (once per batch, shared by all probes there) and only the remainder per
  probe, on a copy of the cut tensor (unless every consumer provably leaves its input alone).
  Same operations on the same tensors as model(x): the caller checks the whole chain bit-exactly
  against model(x) on a batch before trusting it.

Anything else is scanned by plain re-evaluation (sensitivity.py).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx
from torch import nn
from torch.fx.node import map_aggregate, map_arg


class NotExact(Exception):
    """Reuse would not reproduce model(x) bit for bit: scan by plain re-evaluation instead."""


def same_bits(a: Any, b: Any) -> bool:
    """Bitwise equality (tells -0.0 from 0.0 and compares NaNs), whatever the memory layout."""
    return (
        isinstance(a, torch.Tensor)
        and isinstance(b, torch.Tensor)
        and a.shape == b.shape
        and a.dtype == b.dtype
        and torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))
    )


def vgg_suffix_plan(
    model: nn.Module, names: list[str], sample: torch.Tensor
) -> tuple[dict[int, list[str]], list[str], list[str]] | None:
    """Split layers into (backbone stage -> layers, layers the head uses, the rest).

    None when the model has no `backbone` Sequential and `head`, when head(backbone(x)) cannot
    run on `sample` (e.g. a stem before the backbone) or differs from model(x) bit-exactly.
    """
    backbone, head = getattr(model, "backbone", None), getattr(model, "head", None)
    if not isinstance(backbone, nn.Sequential) or not callable(head):
        return None
    path = {m: n for n, m in model.named_modules()}
    stage_of = {path[m]: i for i, child in enumerate(backbone) for m in child.modules()}
    called: set[str] = set()
    modules = dict(model.named_modules())
    hooks = [modules[n].register_forward_hook(lambda *_, n=n: called.add(n)) for n in names]
    try:
        fast = head(backbone(sample))
    except Exception:
        return None
    finally:
        for h in hooks:
            h.remove()
    if not same_bits(fast, model(sample)):
        return None
    stages: dict[int, list[str]] = {}
    for n in names:
        if n in stage_of:
            stages.setdefault(stage_of[n], []).append(n)
    rest = [n for n in names if n not in stage_of]
    return stages, [n for n in rest if n in called], [n for n in rest if n not in called]


# consumers that read their input and return a new tensor, so a cached input needs no copy
_PURE = (
    nn.modules.conv._ConvNd,
    nn.Linear,
    nn.modules.batchnorm._BatchNorm,
    nn.modules.pooling._MaxPoolNd,
    nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
)


class GraphCuts:
    """A traced model run node by node, with the cut points a probe can restart from."""

    def __init__(self, model: nn.Module, graph: fx.Graph):
        self.model = model
        self.nodes = list(graph.nodes)
        pos = {n: i for i, n in enumerate(self.nodes)}
        self.modules = {
            n.target: model.get_submodule(n.target) for n in self.nodes if n.op == "call_module"
        }
        self.placeholders = [n for n in self.nodes if n.op == "placeholder"]
        self.attrs = {n: self._attr(n.target) for n in self.nodes if n.op == "get_attr"}
        last = [max((pos[u] for u in n.users), default=i) for i, n in enumerate(self.nodes)]
        self.dying: list[list[fx.Node]] = [[] for _ in self.nodes]
        for i, n in enumerate(self.nodes):
            if last[i] > i:
                self.dying[last[i]].append(n)
        # cut position p -> the one value that nodes after p still need
        self.cut: dict[int, fx.Node] = {}
        live: set[fx.Node] = set()
        for p, node in enumerate(self.nodes):
            live.difference_update(self.dying[p])
            if node.op not in ("get_attr", "output") and last[p] > p:
                live.add(node)
            if len(live) == 1 and node.op not in ("placeholder", "output"):
                (c,) = live
                if c.op != "placeholder":
                    self.cut[p] = c
        self.pure = {
            p: all(u.op == "call_module" and isinstance(self.modules[u.target], _PURE)
                   for u in c.users if pos[u] > p)
            for p, c in self.cut.items()
        }  # fmt: skip

    @classmethod
    def trace(cls, model: nn.Module) -> GraphCuts:
        """Trace `model` (raises what torch.fx raises) and check its inputs can be supplied."""
        before = set(vars(model))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cuts = cls(model, fx.Tracer().trace(model))
        finally:  # the tracer parks tensor constants on the model: take them off again
            for name in set(vars(model)) - before:
                delattr(model, name)
        extra = [p for p in cuts.placeholders[1:] if not p.args]
        if not cuts.placeholders or extra:
            raise NotExact("forward does not take exactly one input")
        return cuts

    def first_use(self, weight: torch.Tensor) -> int:
        """Position of the first node that can read `weight` (the output if none does)."""
        for i, node in enumerate(self.nodes):
            if any(t is weight for t in self._tensors_of(node)):
                return i
        return len(self.nodes) - 1

    def _tensors_of(self, node: fx.Node) -> list[torch.Tensor]:
        found: list[Any] = []
        if node.op == "call_module":
            found.append(self.modules[node.target])
        elif node.op == "get_attr":
            found.append(self.attrs[node])
        map_aggregate((node.args, node.kwargs), lambda a: found.append(a))
        out = []
        for obj in found:
            if isinstance(obj, nn.Module):
                out += list(obj.parameters()) + list(obj.buffers())
            elif isinstance(obj, torch.Tensor):
                out.append(obj)
        return out

    def start_for(self, weight: torch.Tensor) -> int | None:
        """The last cut before `weight` is first read (None: run from the input)."""
        use = self.first_use(weight)
        before = [p for p in self.cut if p < use]
        return max(before) if before else None

    def _attr(self, target: str) -> Any:
        obj: Any = self.model
        for part in target.split("."):
            obj = getattr(obj, part)
        return obj

    def run(
        self,
        x: torch.Tensor | None = None,
        start: int | None = None,
        value: torch.Tensor | None = None,
        visit: Callable[[int, Any], None] | None = None,
    ) -> Any:
        """The model's output, from input `x`, or from `value` at cut `start`; `visit(p, v)` is
        called at every cut p reached (after node p ran, before anything later)."""
        env: dict[fx.Node, Any] = {}
        if start is None:
            env[self.placeholders[0]] = x
            for p in self.placeholders[1:]:
                env[p] = p.args[0]
            begin = 0
        else:
            env[self.cut[start]] = value
            begin = start + 1
        env.update(self.attrs)
        load = env.__getitem__
        for i in range(begin, len(self.nodes)):
            node = self.nodes[i]
            op = node.op
            if op == "output":
                return map_arg(node.args[0], load)
            if op not in ("placeholder", "get_attr"):
                args, kwargs = map_arg(node.args, load), map_arg(node.kwargs, load)
                if op == "call_module":
                    env[node] = self.modules[node.target](*args, **kwargs)
                elif op == "call_function":
                    env[node] = node.target(*args, **kwargs)
                else:  # call_method
                    env[node] = getattr(args[0], node.target)(*args[1:], **kwargs)
            if visit is not None and i in self.cut:
                visit(i, env[self.cut[i]])
            for dead in self.dying[i]:
                env.pop(dead, None)
        raise NotExact("the graph has no output")
