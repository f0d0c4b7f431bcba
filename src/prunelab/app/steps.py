"""The study's steps as functions: load splits, train a dense VGG, evaluate, prune,
fine-tune. The CLI and recipes both call these; users can too."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import __version__
from ..data import load_cifar10, split_validation, subset
from ..errors import PrunelabError
from ..models import VGG, save_checkpoint
from ..pruning import Pruner, sparsity_report
from ..train import FitResult, TrainConfig, evaluate, fit


@dataclass
class Splits:
    """Train / validation / test images (uint8) and labels, plus provenance."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]
    source: str
    fingerprint: str

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """('test' | 'val' | 'train') -> (images, labels)."""
        if name == "test":
            return self.test_x, self.test_y
        if name in ("val", "validation"):
            if len(self.val_x) == 0:
                raise PrunelabError("split 'val' asked for but val_size is 0 (set val_size > 0)")
            return self.val_x, self.val_y
        if name == "train":
            return self.train_x, self.train_y
        raise PrunelabError(f"unknown split {name!r} (expected test, val or train)")


def load_splits(
    data_dir: str | os.PathLike | None,
    cache: str | os.PathLike | None = None,
    val_size: int = 5000,
    seed: int = 0,
    train_subset: int | None = None,
    test_subset: int | None = None,
) -> Splits:
    """CIFAR-10 with a validation set held out of the training images (never the test set)."""
    data = load_cifar10(data_dir, cache=cache)
    train_x, train_y = data.train_x, data.train_y
    if train_subset:
        train_x, train_y = subset(train_x, train_y, train_subset + val_size, seed=seed)
    test_x, test_y = data.test_x, data.test_y
    if test_subset:
        test_x, test_y = subset(test_x, test_y, test_subset, seed=seed)
    if val_size:
        train_x, train_y, val_x, val_y = split_validation(train_x, train_y, val_size, seed=seed)
    else:
        val_x, val_y = train_x[:0], train_y[:0]
    return Splits(
        train_x,
        train_y,
        val_x,
        val_y,
        test_x,
        test_y,
        list(data.classes),
        data.source,
        data.fingerprint(),
    )


def recipe_splits(rec: dict[str, Any], data_dir: Any, cache: Any = None) -> Splits:
    """The splits a recipe's [data] table and seed describe (the seed fixes the hold-out)."""
    d = rec["data"]
    return load_splits(
        data_dir,
        cache,
        val_size=d["val_size"],
        seed=rec["seed"],
        train_subset=d["train_subset"],
        test_subset=d["test_subset"],
    )


def data_record(splits: Splits) -> dict[str, Any]:
    """Where a run's images came from and how many went where (for results.json)."""
    return {
        "source": splits.source,
        "fingerprint": splits.fingerprint,
        "train_images": len(splits.train_y),
        "val_images": len(splits.val_y),
        "test_images": len(splits.test_y),
    }


def state_path_for(out: str | os.PathLike) -> Path:
    """Where a run writing `out` keeps its resume state (deleted once `out` is saved)."""
    out = Path(out)
    return out.with_name(out.name + ".state")


def environment() -> dict[str, Any]:
    """Versions and device, recorded beside every result."""
    import platform

    return {
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "prunelab": __version__,
        "device": torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
    }


def summarize(metrics: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers of an evaluation (no predictions, no per-class lists)."""
    keys = ("accuracy", "precision", "recall", "specificity", "f1", "num_images")
    return {k: metrics[k] for k in keys if k in metrics}


def train_dense(
    splits: Splits,
    width: float,
    cfg: TrainConfig,
    out: str | os.PathLike,
    device: torch.device | str = "cpu",
    resume: bool = False,
    progress: bool = True,
    extra_meta: dict[str, Any] | None = None,
) -> tuple[VGG, dict[str, Any]]:
    """Train a VGG from scratch; save it (published format + metadata) to `out`."""
    cfg.validate()
    torch.manual_seed(cfg.seed)
    model = VGG(width=width, num_classes=len(splits.classes))
    out = Path(out)
    state = state_path_for(out)
    res = fit(
        model,
        splits.train_x,
        splits.train_y,
        cfg,
        val=(splits.val_x, splits.val_y) if len(splits.val_x) else None,
        state_path=state,
        resume=resume,
        device=device,
        progress=progress,
        desc="train",
    )
    test = evaluate(
        model,
        splits.test_x,
        splits.test_y,
        len(splits.classes),
        batch_size=cfg.eval_batch_size,
        device=device,
    )
    meta = {
        "produced_by": "prunelab train",
        "width": width,
        "test_accuracy": test["accuracy"],
        "val_accuracy": res.history[-1].get("val_accuracy") if res.history else None,
        "sparsity": 0.0,
        "seconds": res.seconds,
        "config": asdict(cfg),
        "data": {"source": splits.source, "fingerprint": splits.fingerprint},
        "environment": environment(),
        "history": res.history,
        "source": f"trained by prunelab ({cfg.epochs} epochs, {res.seconds:.0f} s)",
        **(extra_meta or {}),
    }
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()) or (
        torch.distributed.get_rank() == 0
    ):  # under torchrun only rank 0 writes
        save_checkpoint(out, model, meta)
        state.unlink(missing_ok=True)  # the run finished; its resume state is not needed
    return model, meta


def prune(model: nn.Module, plan: Any, scope: str = "conv") -> Pruner:
    """Attach masks for `plan` and zero the pruned weights now."""
    pruner = Pruner(model, plan, scope=scope)
    pruner.apply()
    return pruner


def finetune(
    model: nn.Module,
    pruner: Pruner | None,
    splits: Splits,
    cfg: TrainConfig,
    out: str | os.PathLike | None = None,
    resume: bool = False,
    device: torch.device | str = "cpu",
    progress: bool = True,
    desc: str = "finetune",
    step_hook: Any = None,
) -> tuple[FitResult, dict[str, float]]:
    """Fine-tune with the masks held fixed; proves the sparsity did not change.

    `out`: the checkpoint the caller will write; the resume state lives beside it
    (state_path_for) and the caller removes it once that checkpoint is saved."""
    before = sparsity_report(model)["prunable_sparsity"] if pruner is not None else 0.0
    val = (splits.val_x, splits.val_y) if len(splits.val_x) else None
    res = fit(
        model,
        splits.train_x,
        splits.train_y,
        cfg,
        val=val,
        pruner=pruner,
        state_path=None if out is None else state_path_for(out),
        resume=resume,
        device=device,
        progress=progress,
        desc=desc,
        step_hook=step_hook,
    )
    after = sparsity_report(model)["prunable_sparsity"] if pruner is not None else 0.0
    if step_hook is None and pruner is not None and after != before:
        raise AssertionError(f"fine-tuning changed sparsity from {before} to {after}")
    return res, {"sparsity_before": before, "sparsity_after": after}
