"""Checkpoint files: read (tensors only), check against a model, write atomically."""

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
from .vgg import VGG

PRETRAINED_URL = "https://hanlab18.mit.edu/files/course/labs/vgg.cifar.pretrained.pth"
PRETRAINED_SHA256 = "6b4aff21d828395aded52a8f2d3144ceda75d645eb9f57ea38e025ca28ded21a"
KNOWN_SHA256 = {PRETRAINED_URL: PRETRAINED_SHA256}


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


def read_checkpoint(path_or_url: str | os.PathLike, cache: str | os.PathLike | None = None) -> dict:
    """Load a checkpoint file into {'state_dict', 'width', 'meta', 'masks', ...}.

    Truncated or corrupt files are refused by name instead of half-loading.
    """
    path = _resolve(path_or_url, cache)
    obj = load_tensors(path, "checkpoint")
    state, extras = _unwrap(obj, str(path))
    out = dict(extras)
    out["state_dict"] = state
    out.setdefault("meta", {})
    out["path"] = str(path)
    if "width" not in out:
        out["width"] = infer_width(state)
    return out


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


def load_model(
    path_or_url: str | os.PathLike, cache: str | os.PathLike | None = None
) -> tuple[VGG, dict]:
    """Build a VGG of the checkpoint's width and load it strictly; returns (model, checkpoint)."""
    ckpt = read_checkpoint(path_or_url, cache)
    num_classes = ckpt["state_dict"].get("classifier.weight", torch.empty(10, 1)).shape[0]
    model = VGG(width=float(ckpt["width"]), num_classes=int(num_classes))
    check_fits(model, ckpt["state_dict"], ckpt["path"])
    model.load_state_dict(ckpt["state_dict"], strict=True)
    return model, ckpt


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    meta: dict[str, Any] | None = None,
    masks: dict[str, torch.Tensor] | None = None,
    **extras: Any,
) -> Path:
    """Write the published format ({"state_dict": ...}) plus width, metadata, masks; atomic."""
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    # meta goes through JSON so the file holds plain types and loads with weights_only=True
    plain_meta = json.loads(json.dumps(meta or {}, default=str))
    obj: dict[str, Any] = {"state_dict": state, "meta": plain_meta}
    if hasattr(model, "width"):
        obj["width"] = float(model.width)
    if masks:
        obj["masks"] = {k: m.detach().cpu().bool() for k, m in masks.items()}
    obj.update(extras)
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return path
