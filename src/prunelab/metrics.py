"""Classification metrics from a confusion matrix: the study's accuracy, precision,
recall (sensitivity) and specificity, plus F1, macro-averaged and per class."""

from __future__ import annotations

from typing import Any

import torch

from .errors import PrunelabError


def confusion_matrix(y_true: torch.Tensor, y_pred: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts C[t, p] of true class t predicted as p (rows: truth, columns: prediction)."""
    y_true = torch.as_tensor(y_true).long().flatten()
    y_pred = torch.as_tensor(y_pred).long().flatten()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has {y_true.numel()} labels but y_pred has {y_pred.numel()}")
    for what, v in (("label", y_true), ("prediction", y_pred)):
        if v.numel() and (int(v.min()) < 0 or int(v.max()) >= num_classes):
            bad = int(v.min()) if int(v.min()) < 0 else int(v.max())
            raise PrunelabError(
                f"{what} {bad} is outside the {num_classes} classes (0..{num_classes - 1})"
            )
    idx = y_true * num_classes + y_pred
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes
    )


def _safe_div(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num/den with 0 where den is 0 (scikit-learn's zero_division=0)."""
    return torch.where(den > 0, num / den.clamp(min=1), torch.zeros_like(num))


def metrics_from_confusion(cm: torch.Tensor) -> dict[str, Any]:
    """Accuracy and macro/per-class precision, recall, specificity, F1 of a confusion matrix."""
    cm = cm.double()
    total = cm.sum()
    tp = cm.diag()
    fp = cm.sum(0) - tp
    fn = cm.sum(1) - tp
    tn = total - tp - fp - fn
    precision = _safe_div(tp, tp + fp)
    recall = _safe_div(tp, tp + fn)
    specificity = _safe_div(tn, tn + fp)
    f1 = _safe_div(2 * tp, 2 * tp + fp + fn)
    return {
        "accuracy": float(tp.sum() / total) if total > 0 else 0.0,
        "precision": float(precision.mean()),
        "recall": float(recall.mean()),
        "specificity": float(specificity.mean()),
        "f1": float(f1.mean()),
        "per_class": {
            "precision": precision.tolist(),
            "recall": recall.tolist(),
            "specificity": specificity.tolist(),
            "f1": f1.tolist(),
            "support": cm.sum(1).long().tolist(),
        },
        "confusion_matrix": cm.long().tolist(),
    }


def classification_metrics(y_true, y_pred, num_classes: int) -> dict[str, Any]:
    """The study's metrics for predictions; equal to scikit-learn's macro averages."""
    return metrics_from_confusion(confusion_matrix(y_true, y_pred, num_classes))


def format_metrics(m: dict[str, Any], classes: list[str]) -> str:
    """A summary line and a Markdown per-class table."""
    lines = [
        f"accuracy {m['accuracy']:.4f} | precision {m['precision']:.4f} | recall {m['recall']:.4f}"
        f" | specificity {m['specificity']:.4f} | F1 {m['f1']:.4f}  (macro averages)",
        "",
        "| class | precision | recall | specificity | F1 | support |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    pc = m["per_class"]
    for i, name in enumerate(classes):
        lines.append(
            f"| {name} | {pc['precision'][i]:.4f} | {pc['recall'][i]:.4f} | "
            f"{pc['specificity'][i]:.4f} | {pc['f1'][i]:.4f} | {pc['support'][i]} |"
        )
    return "\n".join(lines)
