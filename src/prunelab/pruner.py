"""Pruning plans resolved to per-weight sparsities, and a Pruner that keeps zeros at zero
during fine-tuning. Masks are keyed by parameter name, one per distinct weight."""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import nn

from .errors import PlanError
from .masks import check_sparsity, fine_grained_mask
from .scopes import PrunableWeight, name_index, parameter_names, prunable_weights

_LISTED = 12  # names shown in an error message before "..."


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:_LISTED])
    return shown + (f", ... ({len(names)} in all)" if len(names) > _LISTED else "")


def _param_name(name: str, weights: dict[str, PrunableWeight], scope: str) -> str:
    """Map 'backbone.conv3', 'backbone.conv3.weight' or an alias to the weight's parameter."""
    index = name_index(weights)
    if name not in index:
        layers = [layer for w in weights.values() for layer in w.layers]
        raise PlanError(
            f"unknown layer {name!r} for scope {scope!r}; valid layers: {', '.join(layers)}"
            + (" (scope 'all' adds Linear layers)" if scope == "conv" else "")
        )
    return index[name]


def _plan_sparsity(value: Any, where: str) -> float:
    try:
        return check_sparsity(value)
    except ValueError as e:
        raise PlanError(f"{where}: {e}") from None


def _global_plan(
    weights: dict[str, PrunableWeight], sparsity: float, cap: float | None
) -> dict[str, float]:
    """Per-weight sparsities of one magnitude threshold over all weights, optionally capped.

    With a cap, only the smallest floor(cap * numel) magnitudes of each weight are candidates
    (never all of them when cap < 1); the threshold is chosen among the candidates, so the
    overall target is still met exactly (up to ties) while no weight exceeds the cap.
    """
    eligible = []
    for w in weights.values():
        mag = w.param.detach().abs().flatten().float().cpu()
        limit = mag.numel()
        if cap is not None:  # a cap is a maximum: round down, and below 100% when cap < 1
            limit = math.floor(mag.numel() * cap + 1e-9)
            if cap < 1:
                limit = min(limit, mag.numel() - 1)
        eligible.append(torch.sort(mag).values[:limit])
    total = sum(w.numel for w in weights.values())
    pool = torch.cat(eligible)
    k = round(total * sparsity)
    if k > pool.numel():
        raise PlanError(
            f"global sparsity {sparsity} needs {k} zeros but max_layer_sparsity {cap} "
            f"allows only {pool.numel()}"
        )
    if k == 0:
        return dict.fromkeys(weights, 0.0)
    threshold = torch.kthvalue(pool, k).values
    return {
        n: int((e <= threshold).sum()) / w.numel
        for (n, w), e in zip(weights.items(), eligible, strict=True)
    }


def resolve_plan(model: nn.Module, plan: Any, scope: str = "conv") -> dict[str, float]:
    """Turn a plan into {parameter name: sparsity}, one entry per distinct weight.

    `plan` is a float (uniform over the scope), a dict {layer or layer.weight: sparsity}
    (unlisted layers stay dense; a layer sharing its weight with another names the same
    entry), or {"global": s[, "max_layer_sparsity": c]} (one magnitude threshold across the
    scope reaching overall sparsity s, resolved to per-weight sparsities).
    """
    weights = prunable_weights(model, scope)
    if isinstance(plan, dict) and "global" in plan:
        extra = set(plan) - {"global", "max_layer_sparsity"}
        if extra:
            raise PlanError(
                f"a global plan takes only 'global' and 'max_layer_sparsity', "
                f"got also {sorted(extra)}"
            )
        cap = plan.get("max_layer_sparsity")
        cap = None if cap is None else _plan_sparsity(cap, "max_layer_sparsity")
        out = _global_plan(weights, _plan_sparsity(plan["global"], "global"), cap)
    elif isinstance(plan, dict):
        if not plan:
            raise PlanError("empty plan: name at least one layer")
        out = {}
        for name, value in plan.items():
            pname = _param_name(str(name), weights, scope)
            if pname in out:
                raise PlanError(
                    f"layer {name!r} is listed twice in the plan (its weight is {pname!r})"
                )
            out[pname] = _plan_sparsity(value, f"layer {name!r}")
    else:
        s = _plan_sparsity(plan, "plan")
        out = dict.fromkeys(weights, s)
    full = [n for n, s in out.items() if s >= 1.0]
    if full:
        warnings.warn(
            f"plan prunes {', '.join(full)} to 100%: those layers output only their bias",
            stacklevel=2,
        )
    return out


def _checked_mask(key: Any, mask: Any, param: torch.Tensor) -> torch.Tensor:
    """`mask` as a bool tensor on the parameter's device, or PlanError naming `key`."""
    want = f"a bool tensor of shape {tuple(param.shape)}"
    if not isinstance(mask, torch.Tensor):
        raise PlanError(f"mask {key!r} is a {type(mask).__name__}, expected {want}")
    if tuple(mask.shape) != tuple(param.shape):
        raise PlanError(
            f"mask {key!r} has shape {tuple(mask.shape)}, the parameter has {tuple(param.shape)}"
        )
    if mask.dtype != torch.bool and not ((mask == 0) | (mask == 1)).all():
        raise PlanError(f"mask {key!r} holds values other than 0 and 1, expected {want}")
    return mask.to(param.device).bool()


class Pruner:
    """Holds one boolean mask per pruned weight and keeps pruned weights (and optimizer state) at 0.

    Masks are computed once from the current weights and keyed by parameter name (a weight
    shared by several layers has one mask); call `apply()` to zero the weights (the
    constructor does not), then `step(optimizer)` instead of `optimizer.step()` while training.
    """

    def __init__(self, model: nn.Module, plan: Any, scope: str = "conv"):
        self.model = model
        self.targets = resolve_plan(model, plan, scope)
        params = dict(model.named_parameters())
        self.masks = {n: fine_grained_mask(params[n], s) for n, s in self.targets.items()}
        self._params = {n: params[n] for n in self.masks}

    @classmethod
    def from_masks(cls, model: nn.Module, masks: dict[str, torch.Tensor]) -> Pruner:
        """Re-attach saved masks (e.g. a checkpoint's 'masks'), checking names and shapes.

        Keys may be any name of a parameter (an alias of a shared weight included); masks are
        stored under the parameter's first name. Anything else is a one-line PlanError.
        """
        if not isinstance(masks, dict):
            raise PlanError(
                f"masks must be a dict {{parameter name: bool tensor}}, got {type(masks).__name__}"
            )
        params = dict(model.named_parameters())
        first = parameter_names(model)
        canonical = {n: first[id(p)] for n, p in model.named_parameters(remove_duplicate=False)}
        out: dict[str, torch.Tensor] = {}
        for key, m in masks.items():
            if not isinstance(key, str) or key not in canonical:
                valid = [n for n, p in params.items() if p.dim() > 1]
                raise PlanError(
                    f"mask {key!r} names no parameter of the model; valid: {_listing(valid)}"
                )
            name = canonical[key]
            mask = _checked_mask(key, m, params[name])
            if name in out and not torch.equal(out[name], mask):
                raise PlanError(
                    f"mask {key!r} differs from the mask of {name!r}, the same (shared) parameter"
                )
            out[name] = mask
        self = cls.__new__(cls)
        self.model = model
        self.masks = out
        self.targets = {n: (m.numel() - int(m.sum())) / m.numel() for n, m in self.masks.items()}
        self._params = {n: params[n] for n in self.masks}
        return self

    def _mask(self, name: str) -> torch.Tensor:
        """The mask on its parameter's current device (follows model.to(...))."""
        m, p = self.masks[name], self._params[name]
        if m.device != p.device:
            m = self.masks[name] = m.to(p.device)
        return m

    @torch.no_grad()
    def apply(self) -> None:
        """Zero the pruned weights in place; cheap enough to call after every optimizer step."""
        for name, p in self._params.items():
            p.mul_(self._mask(name))

    @torch.no_grad()
    def zero_optimizer_state(self, optimizer: torch.optim.Optimizer) -> None:
        """Zero momentum/Adam moments at pruned positions so they cannot push weights back."""
        by_id = {id(p): n for n, p in self._params.items()}
        for group in optimizer.param_groups:
            for p in group["params"]:
                name = by_id.get(id(p))
                if name is None:
                    continue
                for value in optimizer.state.get(p, {}).values():
                    if isinstance(value, torch.Tensor) and value.shape == p.shape:
                        value.mul_(self._mask(name))

    def step(self, optimizer: torch.optim.Optimizer) -> Any:
        """optimizer.step(), then re-apply the masks and clean the optimizer state."""
        loss = optimizer.step()
        self.apply()
        self.zero_optimizer_state(optimizer)
        return loss

    def report(self) -> dict[str, dict[str, Any]]:
        """Per pruned weight: target and achieved sparsity (of the weights), numel, nonzeros."""
        out = {}
        for name, p in self._params.items():
            numel = p.numel()
            nonzeros = int(torch.count_nonzero(p.detach()))
            target = self.targets[name]
            expected = round(numel * target) / numel
            achieved = (numel - nonzeros) / numel
            out[name] = {
                "target": target,
                "achieved": achieved,
                "numel": numel,
                "nonzeros": nonzeros,
                "matches_target": achieved == expected,
            }
            if achieved != expected:
                warnings.warn(
                    f"{name}: achieved sparsity {achieved:.6f} != {expected:.6f} expected for "
                    f"target {target}: ties at the threshold (e.g. exact zeros), or apply() "
                    "has not been called",
                    stacklevel=2,
                )
        return out
