"""Gradual magnitude pruning (Zhu & Gupta, 2017): sparsity rises along a cubic curve during
training, so the network can adapt between prunings instead of losing everything at once.

Sparsity rises fast at first (many redundant weights) and slowly near the end (few left).
After the pruning phase the masks are frozen and training goes on at the final masks.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .errors import PlanError
from .masks import check_sparsity, fine_grained_mask
from .pruner import Pruner, resolve_plan


def sparsity_at(step: int, s_i: float, s_f: float, t0: int, T: int, every: int) -> float:
    """Scheduled sparsity after `step` optimizer steps.

    s_f + (s_i - s_f) * (1 - (t - t0) / T)^3 for t in [t0, t0 + T], where t is `step` rounded
    down to the last update (t0 + k * every): the sparsity holds between updates. Before t0
    the model is dense (0.0); from t0 + T on it is s_f (even if `every` does not divide T).
    """
    if every < 1 or T < 0 or t0 < 0:
        raise ValueError(f"need every >= 1, T >= 0, t0 >= 0 (got {every}, {T}, {t0})")
    if step < t0:
        return 0.0
    if step >= t0 + T:
        return s_f
    t = t0 + (step - t0) // every * every
    return s_f + (s_i - s_f) * (1 - (t - t0) / T) ** 3


class GradualPruner:
    """Masks that follow the cubic schedule towards a per-layer final plan, then freeze.

    Per-layer rule: every layer follows the overall schedule scaled to its own final
    sparsity, s_layer(t) = s_f_layer * s(t) / s_f, where s(t) runs from `initial_sparsity`
    to s_f = the plan's overall (weight-weighted) sparsity. So the overall sparsity at each
    update is s(t), each layer's sparsity only rises, and at the end every layer is exactly at
    its plan. (Running the schedule per layer from one shared s_i instead would push layers
    whose final sparsity is below s_i above their target and back.)

    At each update the masks are recomputed by magnitude from the current (already masked)
    weights, so pruned weights never come back. The masks live in a `Pruner`, which zeroes
    the weights and the optimizer state at pruned positions: use `step(optimizer)` instead of
    `optimizer.step()` and pass `hook` as fit's `step_hook`. Unlike Pruner, the constructor
    already applies the step-0 masks (`initial_sparsity`; dense when it is 0).
    """

    def __init__(
        self,
        model: nn.Module,
        plan: Any,
        scope: str = "conv",
        initial_sparsity: float = 0.0,
        prune_every: int = 100,
        prune_steps: int | None = None,
        prune_steps_fraction: float = 0.5,
        start_step: int = 0,
    ):
        """`plan`: final sparsities (anything `resolve_plan` takes). The pruning phase lasts
        `prune_steps` optimizer steps, or `prune_steps_fraction` of fit's total steps (known
        at the first hook call), starting at `start_step`."""
        try:
            self.initial_sparsity = check_sparsity(initial_sparsity)
        except ValueError as e:
            raise PlanError(f"initial_sparsity: {e}") from None
        if not (isinstance(prune_every, int) and prune_every >= 1):
            raise PlanError(f"prune_every must be an integer >= 1, got {prune_every!r}")
        if prune_steps is not None and not (isinstance(prune_steps, int) and prune_steps >= 0):
            raise PlanError(f"prune_steps must be an integer >= 0, got {prune_steps!r}")
        if not (
            isinstance(prune_steps_fraction, int | float)
            and 0 <= prune_steps_fraction <= 1
            and math.isfinite(prune_steps_fraction)
        ):
            raise PlanError(f"prune_steps_fraction must be in [0, 1], got {prune_steps_fraction!r}")
        self.model = model
        self.final = resolve_plan(model, plan, scope)
        params = dict(model.named_parameters())
        numel = {n: params[n].numel() for n in self.final}
        self.final_overall = sum(round(numel[n] * s) for n, s in self.final.items()) / sum(
            numel.values()
        )
        if self.final_overall and self.initial_sparsity > self.final_overall:
            raise PlanError(
                f"initial_sparsity {self.initial_sparsity} is above the plan's "
                f"overall sparsity {self.final_overall:.4f}"
            )
        self.prune_every, self.prune_steps = prune_every, prune_steps
        self.prune_steps_fraction, self.start_step = float(prune_steps_fraction), start_step
        self.pruner = Pruner.from_masks(
            model, {n: torch.ones_like(params[n], dtype=torch.bool) for n in self.final}
        )
        self.current: float | None = None  # overall scheduled sparsity of the masks
        self.updates: list[tuple[int, float]] = []  # (step, overall scheduled sparsity)
        self._optimizer: torch.optim.Optimizer | None = None
        self._T: int | None = prune_steps
        # masks for step 0; the phase length may only be known at the first hook call
        if start_step > 0:
            self._set(0.0, 0)
        elif prune_steps == 0:
            self._set(self.final_overall, 0)
        else:
            self._set(self.initial_sparsity if self.final_overall else 0.0, 0)

    # fit saves and restores `pruner.masks`; forward both ways to the Pruner
    @property
    def masks(self) -> dict[str, torch.Tensor]:
        return self.pruner.masks

    @masks.setter
    def masks(self, value: dict[str, torch.Tensor]) -> None:
        self.pruner.masks = value

    @property
    def targets(self) -> dict[str, float]:
        return self.pruner.targets

    def schedule(self, step: int, total: int) -> float:
        """Overall scheduled sparsity after `step` of `total` steps."""
        if self._T is None:
            self._T = round(self.prune_steps_fraction * total)
        if self.final_overall == 0:
            return 0.0
        return sparsity_at(
            step,
            self.initial_sparsity,
            self.final_overall,
            self.start_step,
            self._T,
            self.prune_every,
        )

    def layer_sparsity(self, name: str, overall: float) -> float:
        """The layer's share of an overall sparsity (its final sparsity when overall is final)."""
        if self.final_overall == 0 or overall >= self.final_overall:
            return self.final[name]
        return self.final[name] * overall / self.final_overall

    @torch.no_grad()
    def update(self, step: int, total: int) -> bool:
        """Recompute the masks if the schedule moved since the last update; True if it did."""
        s = self.schedule(step, total)
        if s == self.current:
            return False
        self._set(s, step)
        return True

    @torch.no_grad()
    def _set(self, s: float, step: int) -> None:
        """Prune every layer to its share of overall sparsity `s` and apply the masks."""
        for name in self.final:
            p = self.pruner._params[name]
            target = self.layer_sparsity(name, s)
            self.pruner.masks[name] = fine_grained_mask(p, target) & self.pruner._mask(name)
            self.pruner.targets[name] = target
        self.pruner.apply()
        if self._optimizer is not None:
            self.pruner.zero_optimizer_state(self._optimizer)
        self.current = s
        self.updates.append((step, s))

    def hook(self, step: int, total: int) -> None:
        """fit's step_hook: called with the number of steps done and the total."""
        self.update(step, total)

    @property
    def frozen(self) -> bool:
        """True once the masks reached the final plan (no more updates)."""
        return self.current == (self.final_overall if self.final_overall else 0.0)

    def apply(self) -> None:
        self.pruner.apply()

    def zero_optimizer_state(self, optimizer: torch.optim.Optimizer) -> None:
        self.pruner.zero_optimizer_state(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> Any:
        """Like Pruner.step; also remembers the optimizer so updates can clean its state."""
        self._optimizer = optimizer
        return self.pruner.step(optimizer)

    def report(self) -> dict[str, dict[str, Any]]:
        return self.pruner.report()
