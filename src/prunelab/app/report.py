"""Figures and the study's report: results.json and a report.md a person can read."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..fileio import atomic_path, write_text  # noqa: E402
from ..latency_report import format_latency_table  # noqa: E402

# The seed study's published numbers (pretrained VGG, official CIFAR-10 test set).
PUBLISHED = {
    "dense": {"accuracy": 0.9271, "precision": 0.9272, "recall": 0.9271, "specificity": 0.9918},
    "pruned": {0.4: 0.9225, 0.5: 0.9085, 0.6: 0.8725},
    "finetune": {"adam": {0.4: 0.8134, 0.5: 0.6854, 0.6: 0.7227}, "sgd": {0.4: 0.9292}},
}


def model_label(dense: dict[str, Any]) -> str:
    """'VGG width 0.25' for the study's model, 'resnet20(width=0.5)' for others."""
    spec = dense.get("model") or {"name": "vgg", "kwargs": {"width": dense.get("width")}}
    kwargs = spec.get("kwargs") or {}
    if spec["name"] == "vgg":
        return f"VGG width {kwargs.get('width', dense.get('width', 1.0))}"
    args = ", ".join(f"{k}={v}" for k, v in kwargs.items())
    return f"{spec['name']}({args})" if args else spec["name"]


def save_figure(fig: Any, path: str | os.PathLike) -> Path:
    """Write a matplotlib figure as PNG atomically and close it."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_confusion(
    cm: list[list[int]], classes: list[str], path: str | os.PathLike, title: str = ""
) -> Path:
    """One confusion matrix, rows = truth, columns = prediction, counts written in."""
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    _draw_confusion(ax, cm, classes, title)
    return save_figure(fig, path)


def _draw_confusion(ax: Any, cm: list[list[int]], classes: list[str], title: str) -> None:
    ax.imshow(cm, cmap="Blues")
    k = len(classes)
    ax.set_xticks(range(k), classes, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(k), classes, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    top = max(max(r) for r in cm) or 1
    for i in range(k):
        for j in range(k):
            ax.text(
                j,
                i,
                str(cm[i][j]),
                ha="center",
                va="center",
                fontsize=5,
                color="white" if cm[i][j] > top / 2 else "black",
            )


def plot_confusion_grid(
    items: list[tuple[str, list[list[int]]]], classes: list[str], path: str | os.PathLike
) -> Path:
    """Confusion matrices of several models side by side."""
    n = len(items)
    cols = min(n, 4)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 4.0 * rows), squeeze=False)
    for ax, (title, cm) in zip(axes.flat, items, strict=False):
        _draw_confusion(ax, cm, classes, title)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_curves(
    histories: dict[str, list[dict[str, Any]]], path: str | os.PathLike, title: str = "fine-tuning"
) -> Path:
    """Training loss and validation accuracy per epoch, one line per run."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, hist in histories.items():
        ep = [h["epoch"] for h in hist]
        a1.plot(ep, [h["train_loss"] for h in hist], marker="o", label=name)
        if hist and "val_accuracy" in hist[0]:
            a2.plot(ep, [h["val_accuracy"] for h in hist], marker="o", label=name)
    a1.set_xlabel("epoch")
    a1.set_ylabel("training loss")
    a2.set_xlabel("epoch")
    a2.set_ylabel("validation accuracy")
    if a2.lines:
        a2.legend(fontsize=7)
    else:  # trained without a validation split: say so instead of an empty panel
        a2.text(0.5, 0.5, "no validation split", ha="center", va="center", transform=a2.transAxes)
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def _pct(v: float | None) -> str:
    return "" if v is None else f"{100 * v:.2f}"


def _f(v: float | None) -> str:
    return "" if v is None else f"{v:.4f}"


def study_table(rows: list[dict[str, Any]]) -> str:
    """The study's table: one row per model (dense, each sparsity), every metric computed."""
    out = [
        "| model | target sparsity | measured conv sparsity | accuracy % | precision | recall "
        "| specificity | F1 | non-zeros MiB (fp32) | published accuracy % |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        pub = (
            PUBLISHED["dense"]["accuracy"]
            if r["target"] == 0
            else PUBLISHED["pruned"].get(r["target"])
        )
        out.append(
            f"| {r['name']} | {r['target']:.2f} | {r['sparsity']:.4f} | {_pct(r['accuracy'])} | "
            f"{_f(r['precision'])} | {_f(r['recall'])} | {_f(r['specificity'])} | {_f(r['f1'])} | "
            f"{r['nonzero_mib']:.3f} | {_pct(pub)} |"
        )
    return "\n".join(out)


def finetune_table(rows: list[dict[str, Any]], optimizers: list[str], dense_acc: float) -> str:
    """Accuracy before and after fine-tuning with each optimizer, beside the study's."""
    head = (
        "| sparsity | before % | "
        + " | ".join(f"after {o} % | Δ dense ({o}) | published {o} %" for o in optimizers)
        + " |"
    )
    out = [head, "|---:|---:|" + "---:|---:|---:|" * len(optimizers)]
    for r in rows:
        cells = []
        for o in optimizers:
            a = r["after"].get(o)
            pub = PUBLISHED["finetune"].get(o, {}).get(r["target"])
            delta = "" if a is None else f"{100 * (a - dense_acc):+.2f}"
            cells.append(f"{_pct(a)} | {delta} | {_pct(pub)}")
        out.append(f"| {r['target']:.2f} | {_pct(r['before'])} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def data_and_machine(r: dict[str, Any]) -> list[str]:
    """The data and environment lines of the channels and goals reports."""
    env = r["environment"]
    check = r.get("validation_check")
    seen = []
    if check and check["seen"]:
        seen = [
            f"- the scan's validation images were probably trained on: the dense model scores "
            f"{100 * check['val_accuracy']:.2f} % on them and {100 * check['test_accuracy']:.2f} %"
            f" on {check['images']:,} test images (the scan's ranking of layers rests on them; "
            "the accuracies below are on the test images)"
        ]
    return [
        f"- data: {r['data']['source']}; {r['data']['test_images']} test images",
        *seen,
        f"- environment: {env['device']}, torch {env['torch']}, prunelab {env['prunelab']}",
    ]


def write_report(run_dir: str | os.PathLike, results: dict[str, Any]) -> Path:
    """report.md from results.json's numbers (so the two can never disagree)."""
    run_dir = Path(run_dir)
    r = results
    dense = r["models"][0]
    lines = [
        f"# prunelab study report: {r['recipe']['name']}",
        "",
        r["recipe"].get("description", ""),
        "",
        f"- dense model: {r['dense']['source']} ({model_label(r['dense'])})",
        f"- data: {r['data']['source']} (fingerprint `{r['data']['fingerprint']}`); "
        f"{r['data']['test_images']} test images, {r['data']['val_images']} validation images "
        "held out of the training set",
        f"- environment: Python {r['environment']['python']}, torch {r['environment']['torch']}, "
        f"prunelab {r['environment']['prunelab']}, {r['environment']['device']}",
        f"- sparsity is measured over the scope's weights ({r['scope']}: "
        "zeros / weights of every layer in scope); BatchNorm and biases are not pruned",
        "",
        "## Pruning without fine-tuning",
        "",
        study_table(r["models"]),
        "",
        "Precision, recall (sensitivity), specificity and F1 are macro averages over the "
        f"{r['data'].get('classes', 10)} classes. *Published* is the seed study's number "
        "(pretrained full-width VGG, official lossless test images).",
        "",
    ]
    if r.get("finetune"):
        opts = r["finetune_optimizers"]
        lines += [
            "## Fine-tuning with the masks held fixed",
            "",
            finetune_table(r["finetune"], opts, dense["accuracy"]),
            "",
            "Test accuracy of the epoch with the best validation accuracy. Sparsity before and "
            "after fine-tuning (measured): "
            + ", ".join(
                f"{f['name']}: {f['sparsity_before']:.4f} → {f['sparsity_after']:.4f}"
                for f in r["finetune_runs"]
            )
            + ".",
            "",
            "![fine-tuning curves](figures/finetune_curves.png)",
            "",
        ]
    if r.get("sensitivity"):
        s = r["sensitivity"]
        lines += [
            "## Per-layer sensitivity",
            "",
            f"Each layer pruned alone, every point from the original weights; accuracy on the "
            f"{s['split']} split ({s['images']} images, dense {100 * s['dense_accuracy']:.2f}%).",
            "",
            "![sensitivity](figures/sensitivity.png)",
            "",
            "![parameters per layer](figures/layer_params.png)",
            "",
        ]
    if r.get("latency"):
        lines += [
            "## Latency (measured)",
            "",
            "The dense and the pruned models (before fine-tuning; fine-tuning changes weights, "
            "not shapes) timed in one interleaved run. Fine-grained masks leave every channel "
            "in place, so the same dense kernels run: expect no speed-up here (channel pruning, "
            "`prunelab prune --channels`, is what makes a model faster).",
            "",
            format_latency_table(r["latency"]),
        ]
    lines += [
        "## Confusion matrices",
        "",
        "![confusion matrices](figures/confusion.png)",
        "",
        "## Weights before and after pruning",
        "",
        "![dense weights](figures/weights_dense.png)",
        "",
        "![pruned weights](figures/weights_pruned.png)",
        "",
        "## Reading the results",
        "",
        *[f"- {t}" for t in r.get("reading", [])],
        "",
        "## How this run differs from the published study",
        "",
        *[f"- {t}" for t in r.get("differences", [])],
        "",
    ]
    path = run_dir / "report.md"
    write_text(path, "\n".join(lines))
    return path


def left_whole_lines(left_whole: dict[str, str]) -> list[str]:
    """One report line per reason some layers kept every channel: a channel ratio applies
    to the other layers only, so the report must not let it read as the whole model's."""
    layers_of: dict[str, list[str]] = {}
    for layer, why in left_whole.items():
        layers_of.setdefault(why, []).append(layer)
    return [
        f"- left whole by channel pruning (the ratios apply to the other layers): "
        f"{', '.join(layers)} ({why})"
        for why, layers in layers_of.items()
    ]
