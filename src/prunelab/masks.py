"""Fine-grained magnitude masks: which entries of one tensor survive a given sparsity."""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch


def check_sparsity(sparsity: Any) -> float:
    """Return `sparsity` as a float, or raise ValueError naming it (bools and strings refused)."""
    ok = isinstance(sparsity, numbers.Real) and not isinstance(sparsity, bool)
    if not ok or math.isnan(sparsity) or not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must be a real number in [0, 1], got {sparsity!r}")
    return float(sparsity)


def fine_grained_mask(tensor: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Boolean mask (same shape and device) keeping the largest-magnitude entries of `tensor`.

    Same rule as the MIT efficient-ML lab: ``num_zeros = round(numel * sparsity)``; the
    threshold is the num_zeros-th smallest magnitude (``torch.kthvalue``) and only entries with
    ``abs > threshold`` are kept. Ties: every value equal to the threshold is removed, so with
    repeated magnitudes (e.g. exact zeros already present) the achieved sparsity can exceed the
    target. The input is never modified.
    """
    sparsity = check_sparsity(sparsity)
    mag = tensor.detach().abs()
    if mag.dtype in (torch.float16, torch.bfloat16):
        mag = mag.float()  # kthvalue is not implemented for half types on every device
    numel = mag.numel()
    num_zeros = round(numel * sparsity)
    if num_zeros == 0:
        return torch.ones_like(mag, dtype=torch.bool)
    if num_zeros == numel:
        return torch.zeros_like(mag, dtype=torch.bool)
    threshold = torch.kthvalue(mag.flatten(), num_zeros).values
    return mag > threshold
