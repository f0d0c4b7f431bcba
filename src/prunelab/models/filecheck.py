"""Refuse damaged or hostile checkpoint contents by name before any of it reaches a model.

Each check raises a one-line CheckpointError naming the file, the entry and what was expected,
so a crafted or corrupted file fails here instead of deep inside training or pruning.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import CheckpointError
from .arch import arch_problem


def check_state(
    state: dict[Any, Any], source: str, allow_nonfinite: bool = False
) -> dict[str, torch.Tensor]:
    """Text keys, tensor values, and (unless allowed) no NaN or Inf in any floating tensor."""
    for key, value in state.items():
        if not isinstance(key, str):
            raise CheckpointError(f"{source}: state_dict key {key!r} is not text")
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"{source}: state_dict entry {key!r} is a {type(value).__name__}, expected a tensor"
            )
    if not allow_nonfinite:
        for key, value in state.items():
            if value.layout != torch.strided or not (
                value.is_floating_point() or value.is_complex()
            ):
                continue
            bad = int((~torch.isfinite(value)).sum())
            if bad:
                raise CheckpointError(
                    f"{source}: tensor {key!r} has {bad} non-finite value(s) (NaN or Inf) of "
                    f"{value.numel()}; refusing it (--allow-nonfinite loads it anyway)"
                )
    return state


def check_meta(meta: Any, source: str) -> dict[str, Any]:
    """The metadata dict ({} when absent)."""
    if meta is None:
        return {}
    if not isinstance(meta, dict):
        raise CheckpointError(f"{source}: 'meta' is a {type(meta).__name__}, expected a dict")
    return meta


def check_arch(arch: Any, source: str) -> dict[str, Any] | None:
    """The architecture record, checked field by field (None when the file has none)."""
    if arch is None:
        return None
    problem = arch_problem(arch)
    if problem:
        raise CheckpointError(f"{source}: {problem}")
    return arch


def check_width(width: Any, source: str) -> float | None:
    """The VGG width old files carry: a number > 0 (None when absent)."""
    if width is None:
        return None
    if isinstance(width, bool) or not isinstance(width, int | float) or not width > 0:
        raise CheckpointError(f"{source}: 'width' is {width!r}, expected a number > 0")
    return float(width)


def check_masks(
    masks: Any, state: dict[str, torch.Tensor], source: str
) -> dict[str, torch.Tensor] | None:
    """Masks as bool tensors, each naming a state-dict tensor of the same shape."""
    if masks is None:
        return None
    if not isinstance(masks, dict):
        raise CheckpointError(
            f"{source}: 'masks' is a {type(masks).__name__}, expected a dict "
            "{parameter name: bool or 0/1 tensor}"
        )
    out: dict[str, torch.Tensor] = {}
    for key, mask in masks.items():
        if not isinstance(mask, torch.Tensor):
            raise CheckpointError(
                f"{source}: mask {key!r} is a {type(mask).__name__}, expected a bool or 0/1 tensor"
            )
        if key not in state:
            raise CheckpointError(f"{source}: mask {key!r} names no tensor in the state dict")
        if tuple(mask.shape) != tuple(state[key].shape):
            raise CheckpointError(
                f"{source}: mask {key!r} has shape {tuple(mask.shape)}, "
                f"the tensor has {tuple(state[key].shape)}"
            )
        if mask.dtype != torch.bool and not bool(((mask == 0) | (mask == 1)).all()):
            raise CheckpointError(f"{source}: mask {key!r} holds values other than 0 and 1")
        out[key] = mask.bool()
    return out
