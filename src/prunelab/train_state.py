"""The resumable state of a training run, and the settings that say which run it belongs to.

`--resume` may only continue the run that was started: the state records every setting that
changes the result (the TrainConfig fields below, the caller's `run_key` with model, data and
plan, a digest of the pruning masks at the start, the input normalisation and the number of
training images), and resuming with any of them changed is refused by name. The file holds
only tensors and plain types, so it loads with weights_only=True (prunelab.safeload).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import CheckpointError, PrunelabError
from .fileio import atomic_path
from .safeload import load_tensors

# TrainConfig fields that change the weights a run ends with (channels_last and
# eval_batch_size only change speed)
RESULT_FIELDS = (
    "optimizer",
    "lr",
    "momentum",
    "nesterov",
    "weight_decay",
    "schedule",
    "warmup",
    "label_smoothing",
    "epochs",
    "batch_size",
    "augment",
    "bf16",
    "seed",
    "keep_best",
)


def masks_digest(masks: Mapping[str, torch.Tensor] | None) -> str | None:
    """A short sha256 of the masks (names, shapes and bits, in name order); None without masks."""
    if masks is None:
        return None
    h = hashlib.sha256()
    for name in sorted(masks):
        m = masks[name].detach().to("cpu", torch.bool).contiguous()
        h.update(f"{name}:{tuple(m.shape)};".encode())
        h.update(m.numpy().tobytes())
    return h.hexdigest()[:16]


def plain_run_key(run_key: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """`run_key` as plain JSON types (tuples become lists), or a one-line error naming it."""
    if run_key is None:
        return None
    if not isinstance(run_key, Mapping):
        raise PrunelabError(f"run_key must be a dict of plain values, got {type(run_key).__name__}")
    try:
        return json.loads(json.dumps(dict(run_key), sort_keys=True, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise PrunelabError(
            f"run_key must hold only str, int, float, bool, None, lists and dicts ({e})"
        ) from None


def run_settings(
    cfg: Any,
    run_key: Mapping[str, Any] | None = None,
    masks: Mapping[str, torch.Tensor] | None = None,
    normalize: Any = None,
    train_images: int | None = None,
) -> dict[str, Any]:
    """The settings that define a run, as plain types (what the state file records)."""
    config = asdict(cfg)
    out: dict[str, Any] = {k: config[k] for k in RESULT_FIELDS}
    out["run_key"] = plain_run_key(run_key)
    out["masks"] = masks_digest(masks)
    out["normalize"] = None if normalize is None else [[float(v) for v in p] for p in normalize]
    out["train_images"] = train_images
    return out


def _differences(saved: Any, now: Any, name: str) -> list[tuple[str, Any, Any]]:
    if isinstance(saved, dict) and isinstance(now, dict):
        keys = list(now) + [k for k in saved if k not in now]
        missing = object()
        return [
            d
            for k in keys
            for d in _differences(saved.get(k, missing), now.get(k, missing), f"{name}.{k}")
        ]
    return [] if saved == now else [(name, saved, now)]


def _show(v: Any) -> str:
    return "(not set)" if type(v) is object else repr(v)


def check_settings(state: Mapping[str, Any], now: dict[str, Any], path: str | Path) -> None:
    """Refuse to resume a state saved with other settings, naming the first one that differs.

    A state written before settings were recorded is checked on its config alone."""
    saved = state.get("settings")
    if saved is None:
        config = state.get("config") or {}
        saved = {k: config[k] for k in RESULT_FIELDS if k in config}
        now = {k: now[k] for k in saved}
    diffs = [d for k in now for d in _differences(saved.get(k, object()), now[k], k)]
    if diffs:
        name, old, new = diffs[0]
        raise PrunelabError(
            f"--resume: {name} was {_show(old)} in the saved state, now {_show(new)}; "
            f"rerun with the same settings or delete {path} to start over"
        )


def save_state(
    path: str | Path | None,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    pruner: Any,
    epoch: int,
    batch: int,
    result: Any,
    best_state: dict[str, torch.Tensor] | None,
    cfg: Any,
    rank: int,
    gen: torch.Generator | None,
    settings: dict[str, Any] | None = None,
) -> None:
    """Everything needed to resume, written atomically (rank 0 only)."""
    if path is None or rank != 0:
        return
    state = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "masks": getattr(pruner, "masks", None),
        "epoch": epoch,
        "batch": batch,
        "history": result.history,
        "best_epoch": result.best_epoch,
        "best_val": result.best_val_accuracy,
        "best_state": best_state,
        "config": asdict(cfg),
        "settings": settings,
        "gen_state": gen.get_state() if gen is not None else None,
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_state(
    path: str | Path,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    pruner: Any,
    settings: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Load a saved state into model, optimizer and pruner (None if there is no file).

    The settings are checked first, so a changed setting is named instead of surfacing as a
    shape mismatch."""
    path = Path(path)
    if not path.exists():
        return None
    state = load_tensors(path, "training state")
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"training state {path} holds no model state; delete it")
    if settings is not None:
        check_settings(state, settings, path)
    try:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
    except Exception as e:
        raise CheckpointError(
            f"training state {path} is truncated, corrupt or from another model "
            f"({type(e).__name__}); delete it to start over"
        ) from e
    if pruner is not None and state.get("masks") is not None:
        pruner.masks = {k: m.to(pruner.masks[k].device) for k, m in state["masks"].items()}
    return state
