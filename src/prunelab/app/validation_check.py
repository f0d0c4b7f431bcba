"""Did a checkpoint train on the validation images a scan or a fine-tune reads?

A recipe holds its validation images out of the training folder. A dense model the recipe
trains never sees them, but a checkpoint trained on the whole training folder (the shared
full-width VGG was) has: it scored 95.45 % on the goals recipe's 2,000 validation images
and 89.50 % on 2,000 test images. A scan on such images measures how pruning hurts
memorised images, and its accuracies are not comparable to test accuracies (on that VGG the
ranking of layers moved little: docs/goals/findings.md, but nothing promises that). So when the
dense model comes from a checkpoint, its accuracy on as many test images is set beside the
scan's, and a gap too large for sampling noise is reported. Nothing is chosen on the test
images: they only decide whether to warn.

Fine-tuning reads the same validation images: it prints their accuracy every epoch and, with
keep_best, keeps the epoch that scored best on them. From such a checkpoint the goals
recipe's fine-tunes logged 91-93 % there and reached 88-89 % on test. A pruned model starts
too damaged for a check before training to show it, but the memory comes back as it
recovers, so the check runs after fine-tuning on the accuracies it already has: no extra
evaluation.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..evaluation import Normalize
from ..train import FitResult, TrainConfig, evaluate

# with 2,000 images on each side the gap's standard error is about one point at 90 %
SEEN_GAP = 0.03


def gap_is_seen(
    val_accuracy: float, val_images: int, test_accuracy: float, test_images: int
) -> bool:
    """True when validation scores SEEN_GAP or more above test, and at least three standard
    errors above it (a two-proportion test, the variance pooled so that a small set scoring
    100 % still counts as uncertain): a small validation set does not warn by chance."""
    n_val, n_test = max(val_images, 1), max(test_images, 1)
    pooled = (val_accuracy * n_val + test_accuracy * n_test) / (n_val + n_test)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_val + 1 / n_test))
    return val_accuracy - test_accuracy >= max(SEEN_GAP, 3 * se)


def seen_validation(
    model: nn.Module,
    test: tuple[torch.Tensor, torch.Tensor],
    classes: int,
    val_accuracy: float,
    val_images: int,
    normalize: Normalize = None,
) -> dict[str, Any]:
    """The model's accuracy on `test` (images, labels; as many as the scan read, normalised
    as the model expects) beside `val_accuracy`, its accuracy on the scan's `val_images`
    validation images; "seen" when the gap says so (gap_is_seen)."""
    x, y = test
    device = next(model.parameters()).device
    res = evaluate(model, x, y, classes, normalize=normalize, fold_bn=True, device=device)
    test_accuracy = float(res["accuracy"])
    return {
        "val_accuracy": float(val_accuracy),
        "test_accuracy": test_accuracy,
        "images": len(y),
        "seen": gap_is_seen(val_accuracy, val_images, test_accuracy, len(y)),
    }


def seen_warning(check: dict[str, Any], scan: str) -> str | None:
    """One line for the log when the check says the validation images were trained on."""
    if not check["seen"]:
        return None
    return (
        f"warning: the dense model scores {100 * check['val_accuracy']:.2f} % on the "
        f"validation images the {scan} ranks layers on and {100 * check['test_accuracy']:.2f} %"
        f" on {check['images']:,} test images: it probably trained on them, so the scan "
        "ranks layers on memorised images (give the data a val/ folder of images the "
        "checkpoint never saw)"
    )


def fine_tune_check(
    res: FitResult, cfg: TrainConfig, val_images: int, test_accuracy: float, test_images: int
) -> dict[str, Any] | None:
    """The validation accuracy of the weights a fine-tune kept beside their test accuracy
    (`seen` as for a scan); None when it had no validation images."""
    kept = res.best_epoch if cfg.keep_best and res.best_epoch is not None else len(res.history)
    val = res.history[kept - 1].get("val_accuracy") if kept else None
    if val is None:
        return None
    return {
        "val_accuracy": float(val),
        "test_accuracy": float(test_accuracy),
        "images": test_images,
        "val_images": val_images,
        "epoch": kept,
        "keep_best": bool(cfg.keep_best),
        "seen": gap_is_seen(val, val_images, test_accuracy, test_images),
    }


def fine_tune_warning(check: dict[str, Any] | None, desc: str) -> str | None:
    """One line for the log when a fine-tune's validation images were probably trained on."""
    if not check or not check["seen"]:
        return None
    chose = " and kept its best epoch on them" if check["keep_best"] else ""
    return (
        f"warning: {desc} scored {100 * check['val_accuracy']:.2f} % on its "
        f"{check['val_images']:,} validation images{chose}, but "
        f"{100 * check['test_accuracy']:.2f} % on the {check['images']:,} test images: the "
        "checkpoint it started from probably trained on them, so its validation accuracy "
        "reads high (give the data a val/ folder of images the checkpoint never saw)"
    )
