"""Fine-grained magnitude pruning: masks, pruning plans, a Pruner that keeps zeros at zero
during fine-tuning, and sparsity/MAC/size accounting for any nn.Module."""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Any

import torch
from torch import nn

from .errors import PlanError

SCOPES = {"conv": (nn.Conv2d,), "all": (nn.Conv2d, nn.Linear)}
UINT16_SPAN = 1 << 16


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


def prunable_layers(model: nn.Module, scope: str = "conv") -> dict[str, nn.Module]:
    """Modules whose `.weight` a plan may prune: Conv2d ("conv") or Conv2d and Linear ("all")."""
    if scope not in SCOPES:
        raise PlanError(f"unknown scope {scope!r}; valid scopes: {', '.join(SCOPES)}")
    return {n: m for n, m in model.named_modules() if isinstance(m, SCOPES[scope])}


def _layers_or_raise(model: nn.Module, scope: str) -> dict[str, nn.Module]:
    """prunable_layers, refusing a scope that matches nothing (naming what would match)."""
    layers = prunable_layers(model, scope)
    if not layers:
        other = list(prunable_layers(model, "all"))
        raise PlanError(
            f"scope {scope!r} matches no layer of {type(model).__name__}; "
            f"layers under scope 'all': {', '.join(other) or 'none'}"
        )
    return layers


def _param_name(name: str, layers: dict[str, nn.Module], scope: str) -> str:
    """Map 'backbone.conv3' or 'backbone.conv3.weight' to the weight's parameter name."""
    layer = name[: -len(".weight")] if name.endswith(".weight") else name
    if layer not in layers:
        raise PlanError(
            f"unknown layer {name!r} for scope {scope!r}; valid layers: {', '.join(layers)}"
            + (" (scope 'all' adds Linear layers)" if scope == "conv" else "")
        )
    return f"{layer}.weight"


def _plan_sparsity(value: Any, where: str) -> float:
    try:
        return check_sparsity(value)
    except ValueError as e:
        raise PlanError(f"{where}: {e}") from None


def _global_plan(
    layers: dict[str, nn.Module], sparsity: float, cap: float | None
) -> dict[str, float]:
    """Per-layer sparsities of one magnitude threshold over all layers, optionally capped.

    With a cap, only the smallest round(cap * numel) magnitudes of each layer are candidates;
    the threshold is chosen among the candidates, so the overall target is still met exactly
    (up to ties) while no layer exceeds the cap.
    """
    eligible = []
    for m in layers.values():
        mag = m.weight.detach().abs().flatten().float().cpu()
        limit = mag.numel() if cap is None else round(mag.numel() * cap)
        eligible.append(torch.sort(mag).values[:limit])
    total = sum(m.weight.numel() for m in layers.values())
    pool = torch.cat(eligible)
    k = round(total * sparsity)
    if k > pool.numel():
        raise PlanError(
            f"global sparsity {sparsity} needs {k} zeros but max_layer_sparsity {cap} "
            f"allows only {pool.numel()}"
        )
    if k == 0:
        return {f"{n}.weight": 0.0 for n in layers}
    threshold = torch.kthvalue(pool, k).values
    return {
        f"{n}.weight": int((e <= threshold).sum()) / m.weight.numel()
        for (n, m), e in zip(layers.items(), eligible, strict=True)
    }


def resolve_plan(model: nn.Module, plan: Any, scope: str = "conv") -> dict[str, float]:
    """Turn a plan into {parameter name: sparsity}.

    `plan` is a float (uniform over the scope), a dict {layer or layer.weight: sparsity}
    (unlisted layers stay dense), or {"global": s[, "max_layer_sparsity": c]} (one magnitude
    threshold across the scope reaching overall sparsity s, resolved to per-layer sparsities).
    """
    layers = _layers_or_raise(model, scope)
    if isinstance(plan, dict) and "global" in plan:
        extra = set(plan) - {"global", "max_layer_sparsity"}
        if extra:
            raise PlanError(
                f"a global plan takes only 'global' and 'max_layer_sparsity', "
                f"got also {sorted(extra)}"
            )
        cap = plan.get("max_layer_sparsity")
        cap = None if cap is None else _plan_sparsity(cap, "max_layer_sparsity")
        out = _global_plan(layers, _plan_sparsity(plan["global"], "global"), cap)
    elif isinstance(plan, dict):
        if not plan:
            raise PlanError("empty plan: name at least one layer")
        out = {}
        for name, value in plan.items():
            pname = _param_name(str(name), layers, scope)
            if pname in out:
                raise PlanError(f"layer {name!r} is listed twice in the plan")
            out[pname] = _plan_sparsity(value, f"layer {name!r}")
    else:
        s = _plan_sparsity(plan, "plan")
        out = {f"{n}.weight": s for n in layers}
    full = [n for n, s in out.items() if s >= 1.0]
    if full:
        warnings.warn(
            f"plan prunes {', '.join(full)} to 100%: those layers output only their bias",
            stacklevel=2,
        )
    return out


class Pruner:
    """Holds one boolean mask per pruned weight and keeps pruned weights (and optimizer state) at 0.

    Masks are computed once from the current weights; call `apply()` to zero the weights (the
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
        """Re-attach saved masks (e.g. a checkpoint's 'masks'), checking names and shapes."""
        params = dict(model.named_parameters())
        for name, m in masks.items():
            if name not in params:
                raise PlanError(
                    f"mask {name!r} names no parameter of the model; valid: "
                    f"{', '.join(n for n, p in params.items() if p.dim() > 1)}"
                )
            if tuple(m.shape) != tuple(params[name].shape):
                raise PlanError(
                    f"mask {name!r} has shape {tuple(m.shape)}, the parameter has "
                    f"{tuple(params[name].shape)}"
                )
        self = cls.__new__(cls)
        self.model = model
        self.masks = {n: m.to(params[n].device).bool() for n, m in masks.items()}
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


def encoded_nbytes(weight: torch.Tensor) -> tuple[int, str]:
    """Bytes of a real sparse encoding: fp32 non-zero values plus the cheaper position index.

    Positions are stored either as a bitmask (ceil(numel/8) bytes, cost independent of
    sparsity) or as uint16 gaps between consecutive non-zeros (2 bytes each; a gap of 2^16 or
    more needs a filler entry holding a zero value, as in Deep Compression). Gaps cost less
    than the bitmask once density drops below 1/16, i.e. above ~94% sparsity, so we take
    whichever is smaller for each tensor instead of fixing one format.
    """
    flat = weight.detach().flatten()
    pos = torch.nonzero(flat).flatten().cpu()
    nnz = pos.numel()
    gaps = torch.diff(pos, prepend=torch.tensor([-1])) - 1  # zeros before each non-zero
    fillers = int((gaps // UINT16_SPAN).sum())
    bitmask = math.ceil(flat.numel() / 8)
    relative = 2 * (nnz + fillers) + 4 * fillers
    if relative < bitmask:
        return 4 * nnz + relative, "uint16-relative"
    return 4 * nnz + bitmask, "bitmask"


def _output_shapes(
    model: nn.Module, layers: dict[str, nn.Module], input_size: tuple[int, ...]
) -> dict[str, list[tuple[int, ...]]]:
    """Output shape of every call of each layer during one forward pass of a zero image."""
    shapes: dict[str, list[tuple[int, ...]]] = {n: [] for n in layers}
    hooks = [
        m.register_forward_hook(lambda _m, _i, out, n=n: shapes[n].append(tuple(out.shape)))
        for n, m in layers.items()
    ]
    param = next(model.parameters())
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_size, device=param.device, dtype=param.dtype))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return shapes


def sparsity_report(
    model: nn.Module, scope: str = "conv", input_size: tuple[int, ...] | None = (3, 32, 32)
) -> dict[str, Any]:
    """Per-layer and total sparsity, MACs (dense and zero-skipping, per image) and sizes in MiB.

    MACs need output sizes, so one forward pass of a zero input of `input_size` runs with
    hooks (pass None to skip MACs). Conv MACs = out_h * out_w * numel(weight); Linear MACs =
    numel(weight) per output row. Sizes: dense fp32, non-zeros only at fp32 (the study's
    way, ignoring the index), and a real encoding (see `encoded_nbytes`).
    """
    layers = _layers_or_raise(model, scope)
    shapes = _output_shapes(model, layers, input_size) if input_size is not None else {}
    rows = []
    for name, m in layers.items():
        w = m.weight.detach()
        nnz = int(torch.count_nonzero(w))
        spatial = [
            math.prod(s[2:] if isinstance(m, nn.Conv2d) else s[1:-1]) for s in shapes.get(name, [])
        ]
        enc, encoding = encoded_nbytes(w)
        rows.append(
            {
                "name": name,
                "param": f"{name}.weight",
                "shape": list(w.shape),
                "params": w.numel(),
                "nonzeros": nnz,
                "sparsity": (w.numel() - nnz) / w.numel(),
                "macs_dense": sum(spatial) * w.numel() if shapes else None,
                "macs_sparse": sum(spatial) * nnz if shapes else None,
                "mib_dense": w.numel() * 4 / 2**20,
                "mib_nonzero": nnz * 4 / 2**20,
                "mib_encoded": enc / 2**20,
                "encoding": encoding,
            }
        )
    params = [p.detach() for p in model.parameters()]
    n_all = sum(p.numel() for p in params)
    z_all = sum(p.numel() - int(torch.count_nonzero(p)) for p in params)
    weights = [p for p in params if p.dim() > 1]
    n_w = sum(p.numel() for p in weights)
    z_w = sum(p.numel() - int(torch.count_nonzero(p)) for p in weights)
    n_scope = sum(r["params"] for r in rows)
    z_scope = n_scope - sum(r["nonzeros"] for r in rows)
    macs = rows[0]["macs_dense"] is not None
    return {
        "scope": scope,
        "input_size": list(input_size) if input_size is not None else None,
        "layers": rows,
        "prunable_params": n_scope,
        "prunable_zeros": z_scope,
        "prunable_sparsity": z_scope / n_scope,
        "model_params": n_all,
        "model_sparsity_all_params": z_all / n_all if n_all else 0.0,
        "model_weights": n_w,
        "model_sparsity_weights_only": z_w / n_w if n_w else 0.0,
        "macs_dense": sum(r["macs_dense"] for r in rows) if macs else None,
        "macs_sparse": sum(r["macs_sparse"] for r in rows) if macs else None,
        "mib_dense": sum(r["mib_dense"] for r in rows),
        "mib_nonzero": sum(r["mib_nonzero"] for r in rows),
        "mib_encoded": sum(r["mib_encoded"] for r in rows),
        "model_mib_dense": n_all * 4 / 2**20,
        "denominators": (
            f"prunable_sparsity = zeros / {n_scope} weights of the {len(rows)} layers in scope "
            f"{scope!r}; model_sparsity_all_params = zeros / all {n_all} parameters (including "
            f"BatchNorm and biases); model_sparsity_weights_only = zeros / {n_w} entries of "
            "parameters with 2+ dimensions (conv/linear weights; no BatchNorm, no biases)"
        ),
        "notes": (
            f"{z_all} exact zeros among all parameters: {z_scope} in the in-scope weights, "
            f"{z_w - z_scope} in other weights, {z_all - z_w} in 1-D parameters "
            "(BatchNorm/bias, e.g. biases initialised to 0). In an unpruned model these, not "
            "pruning, are where a small non-zero sparsity comes from."
        ),
    }


def format_sparsity_table(report: dict[str, Any]) -> str:
    """Markdown table of a sparsity_report, followed by what each total divides by."""

    def macs(v: int | None) -> str:
        return "-" if v is None else f"{v / 1e6:.2f}M"

    lines = [
        "| layer | shape | params | nonzeros | sparsity | MACs dense | MACs sparse "
        "| MiB dense | MiB nonzero | MiB encoded |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["layers"]:
        lines.append(
            f"| {r['name']} | {'x'.join(map(str, r['shape']))} | {r['params']:,} | "
            f"{r['nonzeros']:,} | {r['sparsity']:.4f} | {macs(r['macs_dense'])} | "
            f"{macs(r['macs_sparse'])} | {r['mib_dense']:.3f} | {r['mib_nonzero']:.3f} | "
            f"{r['mib_encoded']:.3f} ({r['encoding']}) |"
        )
    n = report["prunable_params"]
    lines.append(
        f"| **total** | | {n:,} | {n - report['prunable_zeros']:,} | "
        f"{report['prunable_sparsity']:.4f} | {macs(report['macs_dense'])} | "
        f"{macs(report['macs_sparse'])} | {report['mib_dense']:.3f} | "
        f"{report['mib_nonzero']:.3f} | {report['mib_encoded']:.3f} |"
    )
    lines += [
        "",
        f"- sparsity of prunable weights: {report['prunable_sparsity']:.6f}",
        f"- model sparsity, all parameters: {report['model_sparsity_all_params']:.6f}",
        f"- model sparsity, weights only: {report['model_sparsity_weights_only']:.6f}",
        f"- denominators: {report['denominators']}",
        f"- notes: {report['notes']}",
    ]
    return "\n".join(lines) + "\n"
