"""What a model costs: parameters, MACs on its real input size, sizes, and sparsity.

MACs come from torch's own FlopCounterMode on one forward pass of a batch of 1, so any
model and any input size are counted the same way and no hand formula (output sizes, image
size, channels) can drift from what the model computes.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .errors import PrunelabError
from .scopes import prunable_layers, prunable_weights

UINT16_SPAN = 1 << 16
DEFAULT_INPUT_SHAPE = (3, 32, 32)
_UNSET: Any = object()


class InputShapeError(PrunelabError):
    """The input shape is malformed, or the model cannot run on it."""


def _check_shape(shape: Any) -> tuple[int, ...]:
    ok = isinstance(shape, list | tuple) and len(shape) > 0
    ok = ok and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape)
    if not ok:
        raise InputShapeError(
            f"input shape must be a list of integers > 0 without the batch (e.g. [3, 32, 32]), "
            f"got {shape!r}"
        )
    return tuple(shape)


def model_input_shape(model: nn.Module) -> tuple[int, ...]:
    """The (C, H, W) the model was built for: `prunelab.models.input_shape_of` where that
    exists, else (3, 32, 32), the study's CIFAR size."""
    from . import models

    input_shape_of = getattr(models, "input_shape_of", None)
    if input_shape_of is None:
        return DEFAULT_INPUT_SHAPE
    shape = input_shape_of(model)
    return DEFAULT_INPUT_SHAPE if shape is None else _check_shape(tuple(shape))


def count_params(model: nn.Module) -> int:
    """Number of parameter entries, each distinct parameter once (a shared weight counts once)."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_shape: Any = None) -> dict[str, Any]:
    """Multiply-accumulates of one forward pass of one input of `input_shape` (no batch dim).

    Count rule: MACs = FLOPs / 2 as torch.utils.flop_counter.FlopCounterMode counts them, i.e.
    convolutions (transposed and grouped too), linear layers and matmuls (attention
    included); BatchNorm, pooling, activations, additions and biases count nothing. Returns
    {"total": all counted MACs, "per_layer": {name: MACs}} where per_layer covers every
    Conv*/ConvTranspose*/Linear module (every call of it added up). `input_shape` defaults to
    the model's own (`model_input_shape`). The model runs in eval mode under no_grad on a
    zero input; its training flag is restored.
    """
    shape = model_input_shape(model) if input_shape is None else _check_shape(input_shape)
    layers = prunable_layers(model, "all")
    per_layer = dict.fromkeys(layers, 0)
    counter = FlopCounterMode(display=False)
    starts: dict[str, list[int]] = {n: [] for n in layers}

    def before(name: str) -> Any:
        return lambda _m, _i: starts[name].append(counter.get_total_flops())

    def after(name: str) -> Any:
        def hook(_m: nn.Module, _i: Any, _o: Any) -> None:
            per_layer[name] += (counter.get_total_flops() - starts[name].pop()) // 2

        return hook

    hooks = [m.register_forward_pre_hook(before(n)) for n, m in layers.items()]
    hooks += [m.register_forward_hook(after(n)) for n, m in layers.items()]
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad(), counter:
            model(torch.zeros(1, *shape, device=device, dtype=dtype))
    except (RuntimeError, ValueError, TypeError, IndexError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise InputShapeError(
            f"{type(model).__name__} cannot run on an input of shape {list(shape)} ({first}); "
            "pass the input shape the model was built for"
        ) from None
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return {"total": counter.get_total_flops() // 2, "per_layer": per_layer}


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


def sparsity_report(
    model: nn.Module,
    scope: str = "conv",
    input_shape: Any = None,
    *,
    macs: bool = True,
    input_size: Any = _UNSET,
) -> dict[str, Any]:
    """Per-weight and total sparsity, MACs (dense and zero-skipping, per image) and sizes in MiB.

    One row per distinct weight of the scope (a weight shared by layers is counted once;
    `name` is the first layer using it, its MACs add up every layer using it). MACs come
    from `count_macs` on `input_shape` (default: the model's own, see `model_input_shape`);
    `macs=False` skips the forward pass. `macs_sparse` is theoretical: the MACs left if
    kernels skipped the zero weights (dense kernels do not). Sizes: dense fp32, non-zeros
    only at fp32 (the study's way, ignoring the index), and a real encoding (see
    `encoded_nbytes`). `input_size` is the former name of `input_shape` (None: no MACs).
    """
    if input_size is not _UNSET:
        if input_size is None:
            macs = False
        else:
            input_shape = input_size
    weights = prunable_weights(model, scope)
    shape: tuple[int, ...] | None = None
    per_layer: dict[str, int] = {}
    if macs:
        shape = model_input_shape(model) if input_shape is None else _check_shape(input_shape)
        per_layer = count_macs(model, shape)["per_layer"]
    rows = []
    for w in weights.values():
        t = w.param.detach()
        nnz = int(torch.count_nonzero(t))
        dense = sum(per_layer[layer] for layer in w.layers) if macs else None
        enc, encoding = encoded_nbytes(t)
        rows.append(
            {
                "name": w.layer,
                "param": w.name,
                "shape": list(t.shape),
                "params": t.numel(),
                "nonzeros": nnz,
                "sparsity": (t.numel() - nnz) / t.numel(),
                "macs_dense": dense,
                "macs_sparse": None if dense is None else dense * nnz // t.numel(),
                "mib_dense": t.numel() * 4 / 2**20,
                "mib_nonzero": nnz * 4 / 2**20,
                "mib_encoded": enc / 2**20,
                "encoding": encoding,
            }
        )
    params = [p.detach() for p in model.parameters()]
    n_all = sum(p.numel() for p in params)
    z_all = sum(p.numel() - int(torch.count_nonzero(p)) for p in params)
    weights_2d = [p for p in params if p.dim() > 1]
    n_w = sum(p.numel() for p in weights_2d)
    z_w = sum(p.numel() - int(torch.count_nonzero(p)) for p in weights_2d)
    n_scope = sum(r["params"] for r in rows)
    z_scope = n_scope - sum(r["nonzeros"] for r in rows)
    return {
        "scope": scope,
        "input_size": list(shape) if shape is not None else None,
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

    def fmt(v: int | None) -> str:
        return "-" if v is None else f"{v / 1e6:.2f}M"

    lines = [
        "| layer | shape | params | nonzeros | sparsity | MACs dense | MACs zero-skip "
        "(theoretical) | MiB dense | MiB nonzero | MiB encoded |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["layers"]:
        lines.append(
            f"| {r['name']} | {'x'.join(map(str, r['shape']))} | {r['params']:,} | "
            f"{r['nonzeros']:,} | {r['sparsity']:.4f} | {fmt(r['macs_dense'])} | "
            f"{fmt(r['macs_sparse'])} | {r['mib_dense']:.3f} | {r['mib_nonzero']:.3f} | "
            f"{r['mib_encoded']:.3f} ({r['encoding']}) |"
        )
    n = report["prunable_params"]
    lines.append(
        f"| **total** | | {n:,} | {n - report['prunable_zeros']:,} | "
        f"{report['prunable_sparsity']:.4f} | {fmt(report['macs_dense'])} | "
        f"{fmt(report['macs_sparse'])} | {report['mib_dense']:.3f} | "
        f"{report['mib_nonzero']:.3f} | {report['mib_encoded']:.3f} |"
    )
    lines += [
        "",
        f"- sparsity of prunable weights: {report['prunable_sparsity']:.6f}",
        f"- model sparsity, all parameters: {report['model_sparsity_all_params']:.6f}",
        f"- model sparsity, weights only: {report['model_sparsity_weights_only']:.6f}",
    ]
    if report.get("input_size") is not None:
        lines.append(
            f"- MACs per input of shape {report['input_size']} (FlopCounterMode: conv, linear "
            "and matmul; MACs zero-skip is what sparse kernels could save, dense ones do not)"
        )
    lines += [
        f"- denominators: {report['denominators']}",
        f"- notes: {report['notes']}",
    ]
    return "\n".join(lines) + "\n"
