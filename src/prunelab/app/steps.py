"""The study's steps, each with one home: load data, train a dense model, prune a checkpoint,
fine-tune a checkpoint (one-shot or gradual), scan into a folder, evaluate. The CLI and every
recipe flow call these; each works on any registry model or user `module:factory`."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from .. import __version__
from ..batchnorm import recalibrate_bn
from ..data import load_images, split_validation, subset, validation_split
from ..errors import PrunelabError
from ..fold import batchnorms
from ..gradual import GradualPruner
from ..latency import cpu_name
from ..models import arch_of, build_model, load_model, normalize_of, save_checkpoint
from ..precision import bf16_is_slow
from ..pruning import Pruner, sparsity_report
from ..sensitivity import (
    plot_layer_params,
    plot_sensitivity,
    plot_weight_histograms,
    sensitivity_scan,
    write_scan,
)
from ..train import FitResult, TrainConfig, check_distillation, evaluate, fit, reapply_masks
from .validation_check import fine_tune_check, fine_tune_warning


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
    notes: list[str] = field(default_factory=list)

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])

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


# the study's hold-out (45,000 + 5,000 of CIFAR-10's training images); a smaller tree gets a
# tenth of its training images instead, so the default never asks for more than it has
DEFAULT_VAL_SIZE = 5000


def default_val_size(train_images: int) -> int:
    """The hold-out when none is asked for: 5,000 images, or a tenth of train/ when fewer."""
    return min(DEFAULT_VAL_SIZE, train_images // 10)


def load_splits(
    data_dir: str | os.PathLike | None,
    cache: str | os.PathLike | None = None,
    val_size: int | str | None = DEFAULT_VAL_SIZE,
    seed: int = 0,
    train_subset: int | None = None,
    test_subset: int | None = None,
    image_size: int | None = None,
    val_fraction: float | None = None,
    channels: int | None = None,
) -> Splits:
    """Images with a validation set: the tree's val/ folder when it has one, else `val_size`
    images (or `val_fraction` of train/) held out of the training images, never the test set;
    val_size="default": default_val_size of train/. `data_dir=None` uses CIFAR-10 in the cache
    folder (downloaded when absent)."""
    data = load_images(data_dir, cache=cache, image_size=image_size, channels=channels)
    for note in data.notes:
        tqdm.write(f"data: {note}")
    train_x, train_y = data.train_x, data.train_y
    has_val_folder = data.val_x is not None
    if val_size == "default":
        val_size = default_val_size(len(train_x))
        if val_size < DEFAULT_VAL_SIZE and not (has_val_folder or val_fraction):
            tqdm.write(
                f"data: {val_size} of the {len(train_x)} training images held out for "
                "validation (a tenth; --val-size N to choose)"
            )
    hold_out = 0 if has_val_folder or val_fraction else (val_size or 0)
    if train_subset:
        train_x, train_y = subset(train_x, train_y, train_subset + hold_out, seed=seed)
    test_x, test_y = data.test_x, data.test_y
    if test_subset:
        test_x, test_y = subset(test_x, test_y, test_subset, seed=seed)
    if has_val_folder:
        val_x, val_y = data.val_x, data.val_y
    elif val_fraction:
        part = dataclasses.replace(data, train_x=train_x, train_y=train_y)
        train_x, train_y, val_x, val_y = validation_split(part, val_fraction, seed=seed)
    elif hold_out:
        train_x, train_y, val_x, val_y = split_validation(train_x, train_y, hold_out, seed=seed)
    else:
        val_x, val_y = train_x[:0], train_y[:0]
    if len(test_y) == 0:
        raise PrunelabError(f"{data.source}: the test set is empty")
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
        list(data.notes),
    )


def recipe_splits(rec: dict[str, Any], data_dir: Any, cache: Any = None) -> Splits:
    """The splits a recipe's [data] table and seed describe (the seed fixes the hold-out)."""
    d = rec["data"]
    return load_splits(
        data_dir if data_dir is not None else d.get("dir"),
        cache,
        val_size=d.get("val_size"),
        seed=rec["seed"],
        train_subset=d.get("train_subset"),
        test_subset=d.get("test_subset"),
        image_size=d.get("image_size"),
        val_fraction=d.get("val_fraction"),
        channels=d.get("channels"),
    )


def calibration_images(splits: Splits, n: int, seed: int) -> torch.Tensor | None:
    """`n` training images drawn with `seed`, for re-estimating the BatchNorm statistics of
    channel-scan probes (prunelab.batchnorm.recalibrate_bn); None when n is 0."""
    if not n:
        return None
    return splits.train_x[train_sample(splits, n, seed)]


def train_sample(splits: Splits, n: int, seed: int) -> torch.Tensor:
    """Indices of `n` training images drawn with `seed` (calibration and scan recovery)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(len(splits.train_x), generator=g)[:n]


def recovery_config(ft: TrainConfig, lr: float) -> TrainConfig:
    """The short fine-tune a channel-scan probe gets (scan.recover): one pass at a constant
    `lr`, labels only, otherwise the table's own fine-tuning settings (batch, bf16, aug)."""
    return dataclasses.replace(
        ft, epochs=1, lr=lr, schedule="constant", distill=0.0, keep_best=False
    )


def recovery(
    splits: Splits,
    n: int,
    cfg: TrainConfig | None,
    normalize: Any,
    device: torch.device | str = "cpu",
) -> Callable[[nn.Module], None] | None:
    """A probe's recovery for prunelab.channels.channel_scan: `cfg` (recovery_config) on `n`
    training images drawn with cfg.seed, the same for every probe. None when n is 0.

    Why: a scan scores each layer pruned alone and before fine-tuning, and a layer that
    looks ruined then may recover in fine-tuning (on the full-width VGG the first
    convolution cut to 16 channels scored 6 points down, yet a plan cutting it that far
    fine-tuned as well as uniform pruning), which misleads a plan made from the scan."""
    if not n or cfg is None:
        return None
    idx = train_sample(splits, n, cfg.seed)
    x, y = splits.train_x[idx], splits.train_y[idx]

    def recover(model: nn.Module) -> None:
        fit(model, x, y, cfg, device=device, progress=False, normalize=normalize, desc="recover")

    return recover


def data_record(splits: Splits) -> dict[str, Any]:
    """Where a run's images came from and how many went where (for results.json)."""
    return {
        "source": splits.source,
        "fingerprint": splits.fingerprint,
        "image_shape": list(splits.image_shape),
        "classes": len(splits.classes),
        "train_images": len(splits.train_y),
        "val_images": len(splits.val_y),
        "test_images": len(splits.test_y),
        "notes": splits.notes,
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
        else f"{cpu_name()} ({os.cpu_count()} cores{_bf16_note()})",
        "threads": torch.get_num_threads(),
    }


def _bf16_note() -> str:
    """A CPU without oneDNN bf16 runs bf16 requests in fp32 (prunelab.precision): say so."""
    return "; bf16 requests ran fp32: no oneDNN bf16" if bf16_is_slow(torch.device("cpu")) else ""


def summarize(metrics: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers of an evaluation (no predictions, no per-class lists)."""
    keys = ("accuracy", "precision", "recall", "specificity", "f1", "num_images")
    return {k: metrics[k] for k in keys if k in metrics}


def norm(model: nn.Module) -> tuple[list[float], list[float]] | None:
    """The model's recorded input normalisation as evaluate/fit take it (None: inputs in [0, 1])."""
    n = normalize_of(model)
    return None if n is None else (n["mean"], n["std"])


def _rank0() -> bool:
    d = torch.distributed
    return not (d.is_available() and d.is_initialized()) or d.get_rank() == 0


def light(meta: dict[str, Any]) -> dict[str, Any]:
    """Metadata without bulky entries (histories of parents), for copying into children."""
    return {k: v for k, v in meta.items() if k != "history"}


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_key(model: nn.Module, splits: Splits, parent: str | None = None) -> dict[str, Any]:
    """What a resumed training run must share with the one that saved its state."""
    arch = getattr(model, "prunelab_arch", None)
    return {"model": _digest(arch), "data": splits.fingerprint, "parent": parent}


# ---------- steps ----------


def check_images_fit(model: nn.Module, images: torch.Tensor) -> None:
    """One line, before any work, when the images have other colour channels than the model
    was built for (a grayscale model given RGB images, say): the forward pass would fail
    with a traceback about conv weights. Sizes are not checked: many models pool to any size.
    """
    record = arch_of(model) or {}
    shape = record.get("input_shape")
    if not shape or images.dim() != 4 or images.shape[1] == shape[0]:
        return
    raise PrunelabError(
        f"the model takes {shape[0]}-channel images ({'x'.join(map(str, shape))}) but the "
        f"data has {images.shape[1]} channels: pass --image-channels {shape[0]} to convert them"
    )


def output_count(model: nn.Module, image_shape: tuple[int, ...]) -> int:
    """How many logits the model gives, from one blank image in eval mode (the record may not
    say: a user factory need not take num_classes)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            device = next(model.parameters(), torch.empty(0)).device
            out = model(torch.zeros(1, *image_shape, device=device))
    finally:
        model.train(was_training)
    if out.dim() != 2:
        raise PrunelabError(
            f"the model returned {tuple(out.shape)}; expected logits shaped N x classes"
        )
    return out.shape[1]


def check_classes_fit(model: nn.Module, splits: Splits, teacher: nn.Module | None = None) -> None:
    """One line, before training, when the model (or its teacher) has another number of
    outputs than the data has classes: outputs no label trains would still win predictions,
    and the evaluation after hours of fine-tuning would refuse them."""
    n = len(splits.classes)
    for who, net in (("the model", model), ("the teacher", teacher)):
        if net is None:
            continue
        k = output_count(net, splits.image_shape)
        if k != n:
            raise PrunelabError(
                f"{who} has {k} outputs but the data has {n} classes: fine-tune on data with "
                f"the model's {k} classes, or train a {n}-class model (prunelab train)"
            )


def evaluate_on(model: nn.Module, splits: Splits, split: str = "test", **kw: Any) -> dict[str, Any]:
    """The study's metrics of `model` on one split, with the model's own normalisation."""
    x, y = splits.split(split)
    check_images_fit(model, x)
    return evaluate(model, x, y, len(splits.classes), normalize=norm(model), **kw)


def train_dense(
    splits: Splits,
    model: str | float,
    cfg: TrainConfig,
    out: str | os.PathLike,
    device: torch.device | str = "cpu",
    resume: bool = False,
    progress: bool = True,
    extra_meta: dict[str, Any] | None = None,
    model_args: dict[str, Any] | None = None,
    normalize: dict[str, Any] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train `model` (a registry name or module:factory; a number means the study's VGG at
    that width) from scratch on the splits; save it with its architecture record to `out`."""
    cfg.validate()
    if not isinstance(model, str):
        model, model_args = "vgg", {"width": float(model), **(model_args or {})}
    torch.manual_seed(cfg.seed)
    net = build_model(
        model,
        model_args,
        num_classes=len(splits.classes),
        in_channels=splits.image_shape[0],
        input_shape=splits.image_shape,
        normalize=normalize,
    )
    out = Path(out)
    state = state_path_for(out)
    res = fit(
        net,
        splits.train_x,
        splits.train_y,
        cfg,
        val=(splits.val_x, splits.val_y) if len(splits.val_x) else None,
        state_path=state,
        resume=resume,
        device=device,
        progress=progress,
        desc="train",
        normalize=norm(net),
        run_key=run_key(net, splits),
    )
    test = evaluate_on(net, splits, batch_size=cfg.eval_batch_size, device=device)
    meta = {
        "produced_by": "prunelab train",
        "model": model,
        "model_args": model_args or {},
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
    if hasattr(net, "width"):
        meta["width"] = net.width
    if _rank0():  # under torchrun only rank 0 writes
        save_checkpoint(out, net, meta)
        state.unlink(missing_ok=True)  # the run finished; its resume state is not needed
    return net, meta


def prune(model: nn.Module, plan: Any, scope: str = "conv") -> Pruner:
    """Attach masks for `plan` and zero the pruned weights now."""
    pruner = Pruner(model, plan, scope=scope)
    pruner.apply()
    return pruner


def prune_checkpoint(
    src: str | os.PathLike,
    out: str | os.PathLike,
    plan: Any,
    scope: str = "conv",
    meta: dict[str, Any] | None = None,
    calibrate: Callable[[], torch.Tensor] | None = None,
    **load: Any,
) -> tuple[nn.Module, Pruner]:
    """Load `src`, magnitude-prune it to `plan` (a sparsity or {layer: sparsity}), save `out`.
    calibrate: returns the training images to re-estimate BatchNorm statistics on after
    pruning (see `recalibrated`)."""
    model, ck = load_model(src, **load)
    if ck.get("masks"):
        raise PrunelabError(
            f"{src} is already pruned (it holds masks): prune its dense parent instead"
        )
    pruner = prune(model, plan, scope=scope)
    info = dict(light(ck.get("meta", {})))
    info.update(
        {
            "produced_by": "prunelab prune",
            "parent": str(src),
            "plan": plan,
            "scope": scope,
            "sparsity": sparsity_report(model, scope=scope, macs=False)["prunable_sparsity"],
            "layers": pruner.report(),
            **recalibrated(model, calibrate, src),
            **(meta or {}),
        }
    )
    save_checkpoint(out, model, info, masks=pruner.masks)
    return model, pruner


def recalibrated(
    model: nn.Module, calibrate: Callable[[], torch.Tensor] | None, src: Any
) -> dict[str, Any]:
    """Re-estimate `model`'s BatchNorm statistics on the images `calibrate()` returns (None:
    leave them); the metadata that records it. `calibrate` is called only now, so a bad
    checkpoint is refused before any data is read."""
    if calibrate is None:
        return {}
    if not batchnorms(model):
        raise PrunelabError(
            f"{src} has no BatchNorm layers: there are no statistics to re-estimate "
            "(drop --calibrate)"
        )
    x = calibrate()
    check_images_fit(model, x)
    recalibrate_bn(model, x, norm(model))
    return {"bn_recalibrated_on": len(x)}


def channel_prune_checkpoint(
    src: str | os.PathLike,
    out: str | os.PathLike,
    plan: Any,
    importance: str = "l2",
    round_to: int | None = None,
    meta: dict[str, Any] | None = None,
    calibrate: Callable[[], torch.Tensor] | None = None,
    **load: Any,
) -> tuple[nn.Module, dict[str, Any]]:
    """Load `src`, remove channels (a uniform ratio or {layer: ratio}), save `out` with the
    kept channel counts in its architecture record (it reloads from plain tensors).
    calibrate: as for prune_checkpoint."""
    from ..accounting import count_macs, count_params
    from ..channels import graph_of, prune_channels

    model, ck = load_model(src, **load)
    if ck.get("masks"):
        raise PrunelabError(
            f"{src} holds fine-grained masks: channel-prune its dense parent, then prune "
            "weights of the slimmer model"
        )
    before = {"params": count_params(model), "macs": count_macs(model)["total"]}
    graph = graph_of(model)  # a group's channels (a Linear's too), before the cut
    channels_before = {n: g.channels for n, g in graph.groups.items()}
    left_whole = graph.unprunable  # said beside the table: no silent no-op
    kept = prune_channels(model, plan, importance=importance, round_to=round_to)
    info = dict(light(ck.get("meta", {})))
    info.update(
        {
            "produced_by": "prunelab prune --channels",
            "parent": str(src),
            "channel_plan": plan,
            "importance": importance,
            "round_to": round_to,
            "kept_channels": kept,
            **recalibrated(model, calibrate, src),
            **(meta or {}),
        }
    )
    save_checkpoint(out, model, info)
    layers = {n: {"channels": channels_before.get(n), "kept": k} for n, k in kept.items()}
    summary = {
        "layers": layers,
        "params": count_params(model),
        "macs": count_macs(model)["total"],
        "dense_params": before["params"],
        "dense_macs": before["macs"],
        "left_whole": left_whole,
    }
    return model, summary


def finetune(
    model: nn.Module,
    pruner: Any,
    splits: Splits,
    cfg: TrainConfig,
    out: str | os.PathLike | None = None,
    resume: bool = False,
    device: torch.device | str = "cpu",
    progress: bool = True,
    desc: str = "finetune",
    step_hook: Any = None,
    parent: str | None = None,
    teacher: nn.Module | None = None,
    teacher_cache: str | os.PathLike | None = None,
) -> tuple[FitResult, dict[str, float]]:
    """Fine-tune with the masks held fixed (or growing, with a gradual pruner's hook).

    `out`: the checkpoint the caller will write; the resume state lives beside it.
    `teacher`: distil from it (cfg.distill > 0; see prunelab.train.fit), with its logits saved
    in and read from the folder `teacher_cache` when given."""
    if pruner is not None and step_hook is None:
        reapply_masks(model, pruner)  # masks are the truth: edited weights are zeroed (warned)
    before = sparsity_report(model, macs=False)["prunable_sparsity"] if pruner else 0.0
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
        normalize=norm(model),
        run_key=run_key(model, splits, parent),
        teacher=teacher,
        teacher_cache=teacher_cache,
    )
    after = sparsity_report(model, macs=False)["prunable_sparsity"] if pruner else 0.0
    if step_hook is None and pruner is not None and after != before:
        raise PrunelabError(f"fine-tuning changed sparsity from {before} to {after}")
    return res, {"sparsity_before": before, "sparsity_after": after}


def finetune_checkpoint(
    src: str | os.PathLike,
    out: str | os.PathLike,
    splits: Splits | Callable[[], Splits],
    cfg: TrainConfig,
    target: Any = None,
    scope: str = "conv",
    gradual: dict[str, Any] | None = None,
    resume: bool = False,
    device: torch.device | str = "cpu",
    progress: bool = True,
    desc: str = "finetune",
    meta: dict[str, Any] | None = None,
    dense: bool = False,
    teacher: str | os.PathLike | None = None,
    teacher_cache: str | os.PathLike | None = None,
    **load: Any,
) -> tuple[nn.Module, Any, FitResult, dict[str, float]]:
    """Load `src`, fine-tune it with its masks fixed (or prune it gradually towards `target`
    when `gradual` holds the schedule's options), save `out` and clear the resume state.
    dense=True fine-tunes an unpruned checkpoint as it is (a control trained as long).
    teacher: a checkpoint (usually the dense parent) to distil from; cfg.distill > 0 says how
    much. It must take the same inputs (the same normalisation) as the model. teacher_cache: a
    folder for its logits, shared by students fine-tuned on the same data and seed.

    `splits` may be a function that loads them: it is called only once the checkpoint and
    its masks have been checked, so a bad checkpoint is refused before any data is read."""
    model, ck = load_model(src, **load)
    masks = ck.get("masks")
    hook = None
    if gradual is not None:
        if masks:
            raise PrunelabError(
                f"{src} already holds masks: gradual pruning starts from a dense checkpoint"
            )
        if target is None:
            raise PrunelabError("gradual pruning needs the final sparsity or plan")
        pruner = GradualPruner(model, target, scope=scope, **gradual)
        hook = pruner.hook
        cfg.keep_best = False  # earlier epochs have other masks: keep the final one
    elif masks:
        if target is not None:
            raise PrunelabError(
                f"{src} is already pruned (it holds masks); fine-tuning keeps its masks: "
                "omit --sparsity/--plan, or prune the dense parent to the new target"
            )
        pruner = Pruner.from_masks(model, masks)
    elif target is not None:
        pruner = prune(model, target, scope=scope)
    elif dense or (ck.get("arch") or {}).get("channels"):
        pruner = None  # channel-pruned (the removed channels are gone) or a dense control
    else:
        raise PrunelabError(
            f"{src} holds no masks and no removed channels: prune it first or give --sparsity"
        )
    guide = _teacher(teacher, model, cfg, **load)
    if callable(splits):
        splits = splits()
    check_images_fit(model, splits.train_x)
    check_classes_fit(model, splits, guide)
    res, sp = finetune(
        model,
        pruner,
        splits,
        cfg,
        out=out,
        resume=resume,
        device=device,
        progress=progress,
        desc=desc,
        step_hook=hook,
        parent=str(src),
        teacher=guide,
        teacher_cache=teacher_cache,
    )
    if gradual is not None and not pruner.frozen:
        raise PrunelabError(
            f"{desc}: the schedule did not reach the target "
            f"(at {pruner.current}, target {pruner.final_overall})"
        )
    test = evaluate_on(model, splits, device=device)
    check = fine_tune_check(res, cfg, len(splits.val_y), test["accuracy"], len(splits.test_y))
    line = fine_tune_warning(check, desc)
    if line and _rank0():
        tqdm.write(f"prunelab: {line}")
    info = dict(light(ck.get("meta", {})))
    info.update(
        {
            "produced_by": "prunelab finetune",
            "parent": str(src),
            "config": asdict(cfg),
            "test_accuracy": test["accuracy"],
            "history": res.history,
            "best_epoch": res.best_epoch,
            "seconds": res.seconds,
            **sp,
            "sparsity": sparsity_report(model, macs=False)["prunable_sparsity"],
            **({"updates": pruner.updates, "plan": target} if gradual is not None else {}),
            **({"teacher": str(teacher)} if teacher is not None else {}),
            **({"validation_check": check} if check else {}),
            **(meta or {}),
        }
    )
    if _rank0():
        save_checkpoint(out, model, info, masks=None if pruner is None else pruner.masks)
    state_path_for(out).unlink(missing_ok=True)  # every torchrun rank gets here: no race
    return model, pruner, res, {**sp, "test_accuracy": test["accuracy"]}


def _teacher(path: Any, student: nn.Module, cfg: TrainConfig, **load: Any) -> nn.Module | None:
    """The teacher model for distillation, checked against the student; None without one."""
    check_distillation(cfg, path is not None)  # before any loading
    if path is None:
        return None
    teacher, _ = load_model(path, **load)
    if norm(teacher) != norm(student):
        raise PrunelabError(
            f"teacher {path} normalises its inputs as {norm(teacher)}, the model as "
            f"{norm(student)}: distillation feeds both the same inputs, so they must match"
        )
    return teacher


def scan_to_folder(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    out: str | os.PathLike,
    figures: str | os.PathLike | None = None,
    extra: dict[str, Any] | None = None,
    plots: tuple[str, ...] = ("sensitivity", "layer_params"),
    **scan: Any,
) -> dict[str, Any]:
    """Run the per-layer sensitivity scan and write sensitivity.{json,csv} into `out`, and
    its figures into `figures` (default: `out`)."""
    res = sensitivity_scan(model, x, y, normalize=norm(model), **scan)
    res.update(extra or {})
    res["images"] = len(y)
    out = Path(out)
    figs = Path(figures) if figures is not None else out
    if "sensitivity" in plots:
        plot_sensitivity(res, figs / "sensitivity.png")
    if "layer_params" in plots:
        plot_layer_params(model, figs / "layer_params.png")
    if "weights" in plots:
        plot_weight_histograms(model, figs / "weight_histograms.png")
    write_scan(res, out / "sensitivity.json", out / "sensitivity.csv")
    return res
