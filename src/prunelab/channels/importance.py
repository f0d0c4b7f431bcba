"""How important each channel of a group is: prunelab's own ranking (Torch-Pruning's
importance classes are not used, so the rules below are the whole story).

- "l2" / "l1": the L2 / L1 norm of each output filter, summed over the group's output
  layers (every conv or linear producing these channels, depthwise ones included).
- "lab": the rule of MIT 6.5940 Lab 1: the Frobenius norm of the NEXT layer's input-channel
  slice (weight[:, c]), summed over every consumer when there are several.
- "bn": network slimming (Liu et al. 2017): BatchNorm |gamma|, summed over the group's BNs.
- "group": the whole group's squared magnitude (DepGraph, Fang et al. CVPR 2023): the sum of
  w^2 over every slice the channel owns, output filters, BatchNorm scales and the consumers'
  input slices alike. A channel whose filter is small but whose output the next layer
  weighs heavily is kept, which "l2" (filters only) misses.
"""

from __future__ import annotations

import torch

from ..errors import PlanError
from .graph import ChannelGroup, Slot

IMPORTANCES = ("l2", "l1", "lab", "bn", "group")


def check_importance(importance: object) -> str:
    """`importance` if it is a known rule; PlanError (one line) listing them otherwise."""
    if not isinstance(importance, str) or importance not in IMPORTANCES:
        raise PlanError(
            f"unknown channel importance {importance!r}; valid: {', '.join(IMPORTANCES)}"
        )
    return importance


def _per_root(slot: Slot, values: torch.Tensor, channels: int) -> torch.Tensor:
    """Add each local value to its group channel (a flatten gives one channel many locals)."""
    out = torch.zeros(channels, dtype=torch.float64)
    root = torch.tensor(slot.root, dtype=torch.long)
    return out.index_add_(0, root, values.detach().double().cpu())


def _slice_sums(slot: Slot, tensor: torch.Tensor, dim: int, p: int) -> torch.Tensor:
    """Per local channel: the sum of |w| (p=1) or of w^2 (p=2) over the slice at that index."""
    idx = torch.tensor(slot.local, dtype=torch.long, device=tensor.device)
    t = tensor.detach().index_select(dim, idx).movedim(dim, 0).reshape(len(idx), -1).double()
    return t.abs().sum(1) if p == 1 else t.pow(2).sum(1)


def group_importance(group: ChannelGroup, importance: str = "l2") -> torch.Tensor:
    """One score per channel of `group` (float64 on the CPU); higher means keep."""
    importance = check_importance(importance)
    c = group.channels
    total = torch.zeros(c, dtype=torch.float64)
    seen: set[tuple[int, str]] = set()
    found = False
    for slot in group.slots:
        key = (id(slot.module), slot.kind)
        if key in seen:
            continue
        seen.add(key)
        if importance in ("l1", "l2") and slot.kind in ("out", "dw"):
            w, dim = slot.params()[0]
            p = 1 if importance == "l1" else 2
            s = _per_root(slot, _slice_sums(slot, w, dim, p), c)
            total += s if p == 1 else s.sqrt()
            found = True
        elif importance == "lab" and slot.kind == "in":
            w, dim = slot.params()[0]
            total += _per_root(slot, _slice_sums(slot, w, dim, 2), c).sqrt()
            found = True
        elif importance == "group" and slot.kind in ("out", "dw", "in", "bn"):
            w, dim = (slot.module.weight, 0) if slot.kind == "bn" else slot.params()[0]
            if w is not None:  # weights only: biases and running statistics are not magnitude
                total += _per_root(slot, _slice_sums(slot, w, dim, 2), c)
                found = True
        elif importance == "bn" and slot.kind == "bn":
            gamma = getattr(slot.module, "weight", None)
            if gamma is not None:
                total += _per_root(slot, gamma.detach().abs(), c)
                found = True
    if not found:
        need = {
            "lab": "a conv or linear layer reading its channels",
            "bn": "an affine BatchNorm",
        }.get(importance, "a conv or linear layer")
        raise PlanError(
            f"importance {importance!r} needs {need} in channel group {group.name!r}; "
            "it has none (choose another importance)"
        )
    return total
