"""The architecture record a model and its checkpoint carry, so a file can be rebuilt alone.

A record holds only plain JSON types (the checkpoint must load with weights_only=True):
    {"format": 2, "model": "vgg" | "package.module:factory", "kwargs": {...},
     "input_shape": [C, H, W], "normalize": null | {"mean": [...], "std": [...]},
     "channels": null | {layer_name: kept_output_channels}}
"""

from __future__ import annotations

import json
import math
from typing import Any

from torch import nn

from .vgg import VGG

FORMAT = 2
DEFAULT_INPUT_SHAPE = (3, 32, 32)
ARCH_KEYS = ("format", "model", "kwargs", "input_shape", "normalize", "channels")


def plain(value: Any, what: str) -> Any:
    """`value` as plain JSON types (tuples become lists); ValueError naming `what` if it can't."""
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what} must hold only plain values (numbers, text, lists): {e}") from e


def make_arch(
    model: str,
    kwargs: dict[str, Any] | None = None,
    input_shape: Any = None,
    normalize: dict[str, Any] | None = None,
    channels: dict[str, int] | None = None,
) -> dict[str, Any]:
    """A complete record; ValueError (one line) when a field is not what the format allows."""
    record = {
        "format": FORMAT,
        "model": model,
        "kwargs": plain(kwargs or {}, "model kwargs"),
        "input_shape": plain(
            list(input_shape) if input_shape is not None else DEFAULT_INPUT_SHAPE, "input_shape"
        ),
        "normalize": plain(normalize, "normalize"),
        "channels": plain(channels, "channels"),
    }
    problem = arch_problem(record)
    if problem:
        raise ValueError(problem)
    return record


def complete_arch(arch: dict[str, Any]) -> dict[str, Any]:
    """Fill a partial record's missing fields with their defaults and check it."""
    if not isinstance(arch, dict):
        raise ValueError(f"arch must be a dict, got {type(arch).__name__}")
    unknown = [k for k in arch if k not in ARCH_KEYS]
    if unknown:
        raise ValueError(f"arch has unknown field {unknown[0]!r} (known: {', '.join(ARCH_KEYS)})")
    if arch.get("format", FORMAT) != FORMAT:
        raise ValueError(f"arch format {arch['format']!r} is not {FORMAT}")
    return make_arch(
        arch.get("model"),  # type: ignore[arg-type]  # checked by make_arch
        arch.get("kwargs"),
        arch.get("input_shape"),
        arch.get("normalize"),
        arch.get("channels"),
    )


def _positive_ints(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) > 0
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    )


def _numbers(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) > 0
        and all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            for v in value
        )
    )


def normalize_problem(normalize: Any, channels: int | None = None) -> str | None:
    """Why `normalize` is not null or {"mean": [...], "std": [...]} (None when it is fine)."""
    if normalize is None:
        return None
    if not isinstance(normalize, dict) or set(normalize) != {"mean", "std"}:
        return "'normalize' must be null or {'mean': [...], 'std': [...]}"
    mean, std = normalize["mean"], normalize["std"]
    if not (_numbers(mean) and _numbers(std)) or len(mean) != len(std):
        return "'normalize' mean and std must be lists of numbers of the same length"
    if any(s <= 0 for s in std):
        return "'normalize' std values must be > 0"
    if channels is not None and len(mean) not in (1, channels):
        return f"'normalize' has {len(mean)} values, the input has {channels} channels"
    return None


def arch_problem(record: Any) -> str | None:
    """Why `record` is not a valid format-2 architecture record (None when it is)."""
    if not isinstance(record, dict):
        return f"architecture record is a {type(record).__name__}, expected a dict"
    if record.get("format") != FORMAT:
        return (
            f"architecture record format {record.get('format')!r} is not supported "
            f"(this prunelab reads format {FORMAT})"
        )
    spec, kwargs = record.get("model"), record.get("kwargs", {})
    if not isinstance(spec, str) or not spec:
        return f"architecture record 'model' is {spec!r}, expected a model name"
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        return "architecture record 'kwargs' must be a dict with text keys"
    shape = record.get("input_shape", list(DEFAULT_INPUT_SHAPE))
    if not _positive_ints(shape):
        return f"architecture record 'input_shape' is {shape!r}, expected [C, H, W] (ints > 0)"
    problem = normalize_problem(record.get("normalize"), shape[0])
    if problem:
        return f"architecture record {problem}"
    channels = record.get("channels")
    if channels is not None and not (
        isinstance(channels, dict)
        and all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v > 0
            for k, v in channels.items()
        )
    ):
        return "architecture record 'channels' must be null or {layer_name: channels > 0}"
    return None


def vgg_arch(
    width: float, num_classes: int, in_channels: int, input_shape: Any = None
) -> dict[str, Any]:
    """The record of a study VGG (for files and models made before records existed)."""
    kwargs = {"width": float(width), "num_classes": int(num_classes)}
    kwargs["in_channels"] = int(in_channels)
    return make_arch("vgg", kwargs, input_shape or [int(in_channels), 32, 32])


def _unwrapped(model: nn.Module) -> nn.Module:
    """The model inside a DataParallel/DistributedDataParallel wrapper."""
    if isinstance(model, nn.DataParallel | nn.parallel.DistributedDataParallel):
        return model.module
    return model


def arch_of(model: nn.Module) -> dict[str, Any] | None:
    """The model's record: `prunelab_arch`, else synthesized for a study VGG, else None."""
    model = _unwrapped(model)
    record = getattr(model, "prunelab_arch", None)
    if isinstance(record, dict):
        return record
    if isinstance(model, VGG):
        return vgg_arch(model.width, model.num_classes, model.backbone.conv0.in_channels)
    return None


def input_shape_of(model: nn.Module) -> tuple[int, ...]:
    """The (C, H, W) the model was built for, so accounting and training use the real size."""
    record = arch_of(model)
    return tuple(record["input_shape"]) if record else DEFAULT_INPUT_SHAPE


def normalize_of(model: nn.Module) -> dict[str, list[float]] | None:
    """The input normalization the model was trained with ({"mean", "std"}), or None."""
    record = arch_of(model)
    return record.get("normalize") if record else None


def apply_channel_record(
    model: nn.Module, channels: dict[str, int] | None, source: str = "checkpoint"
) -> nn.Module:
    """Cut the freshly built base model down to a channel-pruned checkpoint's channel counts.

    The one place channel (structured) pruning plugs into loading: every rebuild passes
    through here after the base model is built and before the state dict is checked.
    `channels` is {channel group: kept channels} (prunelab.channels.prune_channels); the
    model is traced on its record's input shape, also on the meta device. A record naming an
    unknown group or an impossible count raises CheckpointError (one line).
    """
    if channels is None:
        return model
    # imported here: channel surgery needs torch_pruning, which plain loading does not
    from ..channels.record import apply_record

    return apply_record(model, channels, input_shape_of(model), source)
