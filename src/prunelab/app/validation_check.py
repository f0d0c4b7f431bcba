"""Did the dense model train on the validation images a scan ranks layers on?

A recipe holds its validation images out of the training folder. A dense model the recipe
trains never sees them, but a checkpoint trained on the whole training folder (the shared
full-width VGG was) has: it scored 95.45 % on the goals recipe's 2,000 validation images
and 89.50 % on 2,000 test images. A scan on such images measures how pruning hurts
memorised images, and its accuracies are not comparable to test accuracies (on that VGG the
ranking of layers moved little: docs/goals/findings.md, but nothing promises that). So when the
dense model comes from a checkpoint, its accuracy on as many test images is set beside the
scan's, and a gap too large for sampling noise is reported. Nothing is chosen on the test
images: they only decide whether to warn.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..data import subset
from ..train import evaluate
from .steps import Splits, norm

# with 2,000 images on each side the gap's standard error is about one point at 90 %
SEEN_GAP = 0.03


def seen_validation(
    model: nn.Module, splits: Splits, val_accuracy: float, images: int, seed: int
) -> dict[str, Any]:
    """The model's accuracy on a seeded class-balanced subset of `images` test images beside
    `val_accuracy` (its accuracy on the scan's validation images); "seen" when the
    validation images score SEEN_GAP or more above."""
    x, y = subset(splits.test_x, splits.test_y, min(images, len(splits.test_y)), seed=seed)
    device = next(model.parameters()).device
    test = evaluate(
        model, x, y, len(splits.classes), normalize=norm(model), fold_bn=True, device=device
    )
    test_accuracy = float(test["accuracy"])
    return {
        "val_accuracy": float(val_accuracy),
        "test_accuracy": test_accuracy,
        "images": len(y),
        "seen": val_accuracy - test_accuracy >= SEEN_GAP,
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
