"""Checkpoint files: read (tensors only, checked), rebuild their model, write atomically.

A file records its architecture (see arch.py), so loading needs no flags for registry models
and the study's VGG files, and asks the user to name the code for their own networks.
"""

from __future__ import annotations

import json
import os
import urllib.parse
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError
from ..fileio import atomic_path, cache_dir
from ..safeload import load_tensors
from .arch import apply_channel_record, arch_of, complete_arch, vgg_arch
from .factory import ModelError, build_model, registry_name
from .filecheck import check_arch, check_masks, check_meta, check_state, check_width
from .registry import REGISTRY
from .vgg import VGG

PRETRAINED_URL = "https://hanlab18.mit.edu/files/course/labs/vgg.cifar.pretrained.pth"
PRETRAINED_SHA256 = "6b4aff21d828395aded52a8f2d3144ceda75d645eb9f57ea38e025ca28ded21a"
KNOWN_SHA256 = {PRETRAINED_URL: PRETRAINED_SHA256}
VGG_KEY = "backbone.conv0.weight"


def _unwrap(obj: Any, source: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Accept a dict holding 'state_dict' (with optional extras) or a bare state dict."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        extras = {k: v for k, v in obj.items() if k != "state_dict"}
        return obj["state_dict"], extras
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj, {}
    raise CheckpointError(
        f"{source}: not a checkpoint (expected a state dict or a dict with a 'state_dict' key)"
    )


def _resolve(path_or_url: str | os.PathLike, cache: str | os.PathLike | None) -> Path:
    text = str(path_or_url)
    if urllib.parse.urlparse(text).scheme in ("http", "https", "file"):
        from ..download import download

        name = Path(urllib.parse.urlparse(text).path).name or "checkpoint.pth"
        dest = cache_dir(cache) / "checkpoints" / name
        return download(text, dest, KNOWN_SHA256.get(text), algo="sha256")
    path = Path(text)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist (expected a .pth file or a URL)")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a file")
    return path


def _read(
    path_or_url: str | os.PathLike, cache: str | os.PathLike | None, allow_nonfinite: bool
) -> tuple[dict[str, Any], bool]:
    """The checked checkpoint dict, and whether its record was inferred from VGG key names."""
    path = _resolve(path_or_url, cache)
    source = f"checkpoint {path}"
    state, extras = _unwrap(load_tensors(path, "checkpoint"), str(path))
    check_state(state, source, allow_nonfinite)
    out = dict(extras)
    out["state_dict"] = state
    out["meta"] = check_meta(extras.get("meta"), source)
    out["arch"] = check_arch(extras.get("arch"), source)
    out["path"] = str(path)
    masks = check_masks(extras.get("masks"), state, source)
    out.pop("masks", None)
    if masks is not None:
        out["masks"] = masks
    width = check_width(extras.get("width"), source)
    looks_vgg = isinstance(state.get(VGG_KEY), torch.Tensor) and state[VGG_KEY].dim() == 4
    if width is None and looks_vgg:
        width = infer_width(state)
    if width is not None:
        out["width"] = width
    inferred = out["arch"] is None and looks_vgg
    if inferred:
        classifier = state.get("classifier.weight")
        num_classes = classifier.shape[0] if classifier is not None and classifier.dim() else 10
        try:
            out["arch"] = vgg_arch(width, num_classes, state[VGG_KEY].shape[1])
        except ValueError as e:
            raise CheckpointError(f"{source}: not a readable VGG ({e})") from None
    return out, inferred


def read_checkpoint(
    path_or_url: str | os.PathLike,
    cache: str | os.PathLike | None = None,
    allow_nonfinite: bool = False,
) -> dict:
    """Load a checkpoint file into {'state_dict', 'meta', 'arch', 'path', ['masks'], ['width']}.

    Truncated, corrupt or hostile files are refused by name instead of half-loading; 'arch'
    is the file's record, one inferred for a study VGG without one, or None.
    """
    return _read(path_or_url, cache, allow_nonfinite)[0]


def infer_width(state: dict[str, torch.Tensor]) -> float:
    """The width a state dict was saved at, read off its first convolution."""
    w = state.get("backbone.conv0.weight")
    if w is None:
        raise CheckpointError("checkpoint has no 'backbone.conv0.weight': not a prunelab/study VGG")
    return w.shape[0] / 64


def check_fits(
    model: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint"
) -> None:
    """Raise naming the first missing, unexpected or mis-shaped key."""
    own = model.state_dict()
    for k, v in own.items():
        if k not in state:
            raise CheckpointError(f"{source}: missing key {k!r} (shape {tuple(v.shape)})")
        if tuple(state[k].shape) != tuple(v.shape):
            raise CheckpointError(
                f"{source}: {k!r} has shape {tuple(state[k].shape)}, "
                f"the model expects {tuple(v.shape)}"
            )
    extra = [k for k in state if k not in own]
    if extra:
        raise CheckpointError(f"{source}: unexpected key {extra[0]!r} (not in the model)")


def _assemble(
    spec: str, kwargs: dict[str, Any], record: dict[str, Any] | None, source: str
) -> nn.Module:
    """Build `spec`, carry the record's data fields, then re-apply its channel record."""
    record = record or {}
    given, base = kwargs.keys(), record.get("kwargs") or {}
    model = build_model(
        spec,
        kwargs,
        num_classes=None if "num_classes" in given else base.get("num_classes"),
        in_channels=None if "in_channels" in given else base.get("in_channels"),
        input_shape=record.get("input_shape"),
        normalize=record.get("normalize"),
    )
    arch = dict(model.prunelab_arch)
    arch["channels"] = record.get("channels")
    model = apply_channel_record(model, arch["channels"], source)
    model.prunelab_arch = arch
    return model


def _plan(
    path: str, record: dict[str, Any] | None, model: str | None, model_args: dict | None
) -> tuple[str, dict[str, Any]]:
    """Which spec and kwargs rebuild the checkpoint's network; refuses to guess."""
    if model is not None:
        same = record is not None and record["model"] == (registry_name(model) or model)
        if model_args is not None:
            if not isinstance(model_args, dict):
                raise ModelError(
                    f"model {model}: arguments must be a dict, got {type(model_args).__name__}"
                )
            return model, dict(model_args)
        return model, dict(record["kwargs"]) if same else {}
    if record is None:
        raise CheckpointError(
            f"checkpoint {path} has no architecture record: "
            "pass --model NAME or package.module:factory"
        )
    spec = record["model"]
    if ":" in spec:
        raise CheckpointError(
            f"checkpoint {path} was made from {spec}; pass --model {spec} "
            "(prunelab never imports code named inside a file)"
        )
    if registry_name(spec) is None:
        raise CheckpointError(
            f"checkpoint {path}: architecture record names unknown model {spec!r} "
            f"(known: {', '.join(sorted(REGISTRY))})"
        )
    return spec, dict(record["kwargs"])


def load_model(
    path_or_url: str | os.PathLike,
    cache: str | os.PathLike | None = None,
    model: str | None = None,
    model_args: dict[str, Any] | None = None,
    allow_nonfinite: bool = False,
) -> tuple[nn.Module, dict]:
    """Rebuild the checkpoint's network and load it strictly; returns (model, checkpoint).

    The file's record decides the network; `model` (a registry name or
    package.module:factory, with `model_args`) overrides it, and is required for records
    naming user code and for files without a record.
    """
    ckpt, inferred = _read(path_or_url, cache, allow_nonfinite)
    state, path, record = ckpt["state_dict"], ckpt["path"], ckpt["arch"]
    source = f"checkpoint {path}"
    spec, kwargs = _plan(path, record, model, model_args)
    hint = (
        " (the file has no architecture record and was read as a VGG from its key names; "
        "pass --model if it is another network)"
        if inferred and model is None
        else ""
    )
    try:
        if registry_name(spec):  # registry code is safe to build on 'meta': no memory spent
            with torch.device("meta"):
                _fits(_assemble(spec, kwargs, record, source), state, source, hint)
        net = _assemble(spec, kwargs, record, source)
    except ModelError as e:
        if model is not None:
            raise
        raise CheckpointError(f"{source}: {e}") from None
    _fits(net, state, source, hint)
    net.load_state_dict(state, strict=True)
    ckpt["arch"] = net.prunelab_arch
    if isinstance(net, VGG):
        ckpt["width"] = float(net.width)
    return net, ckpt


def _fits(model: nn.Module, state: dict[str, torch.Tensor], source: str, hint: str) -> None:
    try:
        check_fits(model, state, source)
    except CheckpointError as e:
        raise CheckpointError(f"{e}{hint}") from None


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    meta: dict[str, Any] | None = None,
    masks: dict[str, torch.Tensor] | None = None,
    arch: dict[str, Any] | None = None,
    **extras: Any,
) -> Path:
    """Write {"state_dict", "meta", "arch", ["width"], ["masks"], ...extras}; atomic.

    `arch` defaults to the model's record (`prunelab_arch`, or one made for a study VGG);
    a VGG also keeps `width`, which readers older than records use.
    """
    record = arch if arch is not None else arch_of(model)
    if record is not None:
        try:
            record = complete_arch(record)
        except ValueError as e:
            raise CheckpointError(f"checkpoint {path}: cannot save the arch record: {e}") from None
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    # meta goes through JSON so the file holds plain types and loads with weights_only=True
    plain_meta = json.loads(json.dumps(meta or {}, default=str))
    obj: dict[str, Any] = {"state_dict": state, "meta": plain_meta, "arch": record}
    if isinstance(model, VGG):
        obj["width"] = float(model.width)
    if masks:
        obj["masks"] = {k: m.detach().cpu().bool() for k, m in masks.items()}
    obj.update(extras)
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return path
