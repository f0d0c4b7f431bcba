"""One loop for training and fine-tuning (evaluation lives in prunelab.evaluation, the
resumable state in prunelab.train_state; both are re-exported here).

The data live on the training device as uint8 tensors and are augmented per batch.
Data order and augmentation are drawn from (seed, epoch), and the loop can stop at
any batch boundary and resume there, so an interrupted CPU run ends with the same
weights as an uninterrupted one; resuming is refused when a setting of the run changed.
With a pruner attached the masks are re-applied before the first step and (with optimizer
state zeroed at pruned positions) after every optimizer step.
"""

from __future__ import annotations

import math
import signal
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .data import augment, augment_pad
from .errors import PrunelabError
from .evaluation import (
    Normalize,
    autocast,
    evaluate,
    example_batch,
    normalizer,
    predict,
    resolve_device,
    to_input,
)
from .fold import fold_batchnorm
from .memory_format import channels_last_training_is_safe
from .precision import use_bf16
from .teacher_cache import TeacherLogits
from .train_state import load_state, run_settings, save_state

_save_state, _load_state, _to_input = save_state, load_state, to_input  # older names

__all__ = [
    "OPTIMIZERS",
    "SCHEDULES",
    "FitResult",
    "Interrupted",
    "TrainConfig",
    "autocast",
    "evaluate",
    "fit",
    "lr_factor",
    "make_optimizer",
    "predict",
    "resolve_device",
]

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("onecycle", "cosine", "constant")


@dataclass
class TrainConfig:
    """Hyper-parameters of one training or fine-tuning run (a recipe step holds one)."""

    epochs: int = 10
    batch_size: int = 256
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "onecycle"
    warmup: float = 0.2  # fraction of steps spent rising (onecycle only)
    label_smoothing: float = 0.1
    augment: bool = True
    bf16: bool = False
    channels_last: bool = True
    seed: int = 0
    eval_batch_size: int = 1000
    keep_best: bool = False  # restore the epoch with the best validation accuracy
    distill: float = 0.0  # weight of the teacher's soft targets in the loss (fit's teacher)
    temperature: float = 4.0  # softening of both logits for the distillation term

    def validate(self) -> None:
        """Refuse impossible settings before any work starts."""
        checks = [
            ("epochs", isinstance(self.epochs, int) and self.epochs >= 0, "an integer >= 0"),
            (
                "batch_size",
                isinstance(self.batch_size, int) and self.batch_size > 0,
                "an integer > 0",
            ),
            ("optimizer", self.optimizer in OPTIMIZERS, f"one of {', '.join(OPTIMIZERS)}"),
            ("lr", _num(self.lr) and self.lr > 0, "a number > 0"),
            ("momentum", _num(self.momentum) and 0 <= self.momentum < 1, "in [0, 1)"),
            ("weight_decay", _num(self.weight_decay) and self.weight_decay >= 0, ">= 0"),
            ("schedule", self.schedule in SCHEDULES, f"one of {', '.join(SCHEDULES)}"),
            ("warmup", _num(self.warmup) and 0 <= self.warmup < 1, "in [0, 1)"),
            (
                "label_smoothing",
                _num(self.label_smoothing) and 0 <= self.label_smoothing < 1,
                "in [0, 1)",
            ),
            ("distill", _num(self.distill) and 0 <= self.distill <= 1, "in [0, 1]"),
            ("temperature", _num(self.temperature) and self.temperature > 0, "a number > 0"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise PrunelabError(f"{name} must be {expected} (got {getattr(self, name)!r})")


def _num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, t: float) -> torch.Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), averaged over the batch; the T^2
    keeps its gradients on the scale of the cross-entropy's as T changes (Hinton et al.)."""
    return F.kl_div(
        F.log_softmax(student / t, 1),
        F.log_softmax(teacher / t, 1),
        reduction="batchmean",
        log_target=True,
    ) * (t * t)


def check_distillation(cfg: TrainConfig, has_teacher: bool) -> None:
    """Distillation needs both a teacher and a weight: one without the other is refused."""
    if has_teacher != (cfg.distill != 0):
        raise PrunelabError(
            "distillation needs both a teacher model and distill > 0 "
            f"(got distill={cfg.distill}, teacher {'given' if has_teacher else 'none'})"
        )


def _frozen_teacher(
    teacher: nn.Module, device: torch.device, channels_last: bool, example: torch.Tensor | None
) -> nn.Module:
    """The teacher on `device` as prunelab.fold.fold_batchnorm returns it: a copy in eval mode
    (its BatchNorm statistics stay as trained), gradients off, BatchNorm folded into its convs
    (the same function, a cheaper forward per step); the caller's model is left as it was."""
    teacher = fold_batchnorm(teacher, example=example).to(device)
    return teacher.to(memory_format=torch.channels_last) if channels_last else teacher


class _StopFlag:
    """Turns SIGINT/SIGTERM into a flag the loop checks at each batch boundary."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal is not None:  # second Ctrl-C: give up at once
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


class Interrupted(PrunelabError):
    """Training stopped on a signal after saving its state. `what`: where it stopped and
    where the state is; `hint`: how to go on, which depends on the command that trained."""

    def __init__(self, what: str, hint: str = "rerun the same command with --resume"):
        super().__init__(f"{what}; {hint}")
        self.what = what


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD (momentum, optional Nesterov) or Adam/AdamW; no weight decay on BN and biases."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0
        )
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def lr_factor(step: int, total: int, schedule: str, warmup: float) -> float:
    """Multiplier of the peak lr at `step` of `total` (onecycle: triangular; cosine; constant)."""
    if total <= 0 or schedule == "constant":
        return 1.0
    t = step / total
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * t))
    rise = max(warmup, 1e-9)
    return 0.1 + 0.9 * t / rise if t < rise else max(0.0, (1 - t) / (1 - rise))


@dataclass
class FitResult:
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None
    best_val_accuracy: float | None = None
    seconds: float = 0.0


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def fit(
    model: nn.Module,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    cfg: TrainConfig,
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
    pruner: Any = None,
    state_path: str | Path | None = None,
    resume: bool = False,
    device: torch.device | str = "cpu",
    progress: bool = True,
    desc: str = "train",
    step_hook: Callable[[int, int], None] | None = None,
    normalize: Normalize = None,
    run_key: Mapping[str, Any] | None = None,
    teacher: nn.Module | None = None,
    teacher_cache: str | Path | None = None,
) -> FitResult:
    """Train `model` in place; checkpoint the full loop state to `state_path` every epoch.

    Inputs: uint8 or [0, 1] float, N x C x H x W images (any C, H, W) or any other N x ...
    tensors (e.g. flat vectors for an MLP: no augmentation, no channels_last for those).
    `cfg.augment` (default on, the study's choice) is a random crop with zero padding
    prunelab.data.augment_pad(H) = max(1, round(H / 8)) px (4 for 32x32) plus a horizontal
    flip. `normalize`: optional per-channel (mean, std) applied after /255, also to `val`.
    `run_key`: plain-JSON facts that define the run beyond cfg (model architecture, data
    fingerprint, plan digest); with the config, the masks and `normalize` it is stored in the
    state, and `resume=True` refuses a state saved with any of them different, by name.

    `pruner` (if given) must offer `masks`, `apply()` and `step(optimizer)` (optimizer step,
    re-mask, zero optimizer state at pruned positions); its masks are re-applied before the
    first step (with one warning if that changed weights). `step_hook(step, total_steps)` runs
    after each step (gradual pruning uses it). Under torchrun each rank takes its shard of
    every global batch and DistributedDataParallel averages the gradients.

    `teacher` with cfg.distill > 0: knowledge distillation (Hinton et al. 2015). The loss is
    (1 - distill) * cross-entropy + distill * T^2 * KL(teacher's softened logits || the
    model's), T = cfg.temperature; the teacher (frozen, eval mode, same inputs) is typically
    the dense model a pruned one came from, so the pruned one learns its full output
    distribution rather than the labels alone. `teacher_cache`: a folder where the teacher's
    logits are saved per epoch and read back by any later fit with the same teacher, data,
    seed and input pipeline (prunelab.teacher_cache; not under torchrun).
    """
    cfg.validate()
    check_distillation(cfg, teacher is not None)
    device = torch.device(device)
    rank, world = _rank_world()
    if world > 1 and device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())  # this rank's GPU
    if world > 1 and cfg.batch_size % world:
        raise PrunelabError(
            f"batch_size {cfg.batch_size} must be a multiple of the {world} ranks "
            "(each rank takes an equal share of every batch)"
        )
    if len(train_x) != len(train_y):
        raise PrunelabError(
            f"{len(train_x)} training inputs but {len(train_y)} labels: they must pair up"
        )
    images = train_x.dim() == 4
    channels_last = cfg.channels_last and images and channels_last_training_is_safe(model, device)
    do_augment = cfg.augment and images
    bf16 = use_bf16(cfg.bf16, device)
    pad = augment_pad(train_x.shape[2]) if do_augment else 0
    settings = run_settings(
        cfg,
        run_key,
        getattr(pruner, "masks", None) if pruner is not None else None,
        normalize,
        len(train_x),
    )
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    logit_cache = None
    if teacher is not None and teacher_cache is not None and world == 1:
        logit_cache = TeacherLogits(
            teacher_cache,
            teacher,
            train_x,
            train_y,
            {
                "seed": cfg.seed,
                "batch_size": cfg.batch_size,
                "pad": pad,
                "channels_last": channels_last,
                "bf16": bf16,
                "normalize": normalize,
                "torch": torch.__version__,
            },
        )
    if teacher is not None:
        example = example_batch(teacher, train_x[:8], normalize)  # on the teacher's device
        teacher = _frozen_teacher(teacher, device, channels_last, example)
    norm = normalizer(normalize, train_x.shape, device)
    train_x, train_y = train_x.to(device), train_y.to(device)
    top_label = _label_range(train_y)
    net: nn.Module = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    opt = make_optimizer(model, cfg)
    steps_per_epoch = len(train_x) // cfg.batch_size  # drop the ragged last batch
    if steps_per_epoch == 0:
        raise PrunelabError(
            f"batch_size {cfg.batch_size} is larger than the {len(train_x)} training images"
        )
    total = steps_per_epoch * cfg.epochs
    result = FitResult()
    start_epoch, start_batch, best_state = 0, 0, None
    saved = None
    if resume and state_path:
        saved = load_state(state_path, model, opt, pruner, settings)
    if saved is not None:
        start_epoch, start_batch = saved["epoch"], saved["batch"]
        result.history = saved["history"]
        result.best_epoch, result.best_val_accuracy = saved["best_epoch"], saved["best_val"]
        best_state = saved.get("best_state")
    if pruner is not None:
        reapply_masks(model, pruner)
    check_width = True
    t0 = time.perf_counter()
    with _StopFlag() as stop:
        for epoch in range(start_epoch, cfg.epochs):
            gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
            perm = torch.randperm(len(train_x), generator=gen).to(device)
            first = start_batch if epoch == start_epoch else 0
            if first and saved is not None:
                gen.set_state(saved["gen_state"])
            net.train()
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), device=device, dtype=torch.long)
            seen, e0 = 0, time.perf_counter()
            cached = collected = None
            if logit_cache is not None:
                cached = logit_cache.load(epoch, steps_per_epoch * cfg.batch_size, device)
                collected = [] if cached is None and first == 0 else None
            bar = tqdm(
                range(first, steps_per_epoch),
                desc=f"{desc} epoch {epoch + 1}/{cfg.epochs}",
                disable=not progress or rank != 0,
                leave=False,
                unit="batch",
            )
            for b in bar:
                idx = perm[b * cfg.batch_size : (b + 1) * cfg.batch_size]
                xb = train_x[idx]
                if do_augment:
                    xb = augment(xb, gen, pad=pad)
                xb, yb = xb[rank::world], train_y[idx][rank::world]
                step = epoch * steps_per_epoch + b
                for g in opt.param_groups:
                    g["lr"] = cfg.lr * lr_factor(step, total, cfg.schedule, cfg.warmup)
                with autocast(device, bf16):
                    inp = to_input(xb, channels_last, norm)
                    out = net(inp)
                    if check_width:
                        _check_logits(out, top_label)
                        check_width = False
                    logits = out.float()
                    loss = F.cross_entropy(logits, yb, label_smoothing=cfg.label_smoothing)
                    if teacher is not None:
                        if cached is not None:
                            soft = cached[b * cfg.batch_size : (b + 1) * cfg.batch_size]
                        else:
                            with torch.no_grad():
                                soft = teacher(inp).float()
                            if collected is not None:
                                collected.append(soft)
                        loss = (1 - cfg.distill) * loss + cfg.distill * distill_loss(
                            logits, soft, cfg.temperature
                        )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if pruner is not None:
                    pruner.step(opt)
                else:
                    opt.step()
                if step_hook is not None:
                    step_hook(step + 1, total)
                loss_sum += loss.detach() * len(yb)
                correct += (out.argmax(1) == yb).sum()
                seen += len(yb)
                if progress and rank == 0 and b % 10 == 0:
                    dt = time.perf_counter() - e0
                    bar.set_postfix(
                        loss=f"{loss_sum.item() / seen:.3f}",
                        acc=f"{correct.item() / seen:.3f}",
                        img_s=f"{seen * world / dt:.0f}",
                    )
                if stop.signal is not None:
                    bar.close()
                    save_state(
                        state_path,
                        model,
                        opt,
                        pruner,
                        epoch,
                        b + 1,
                        result,
                        best_state,
                        cfg,
                        rank,
                        gen,
                        settings,
                    )
                    raise Interrupted(
                        f"stopped by signal {stop.signal} at epoch {epoch + 1}, batch {b + 1}; "
                        f"state saved to {state_path}"
                    )
            bar.close()
            if collected:
                logit_cache.save(epoch, torch.cat(collected))
            if world > 1:
                # DDP broadcasts buffers before each forward, so after the last one every rank
                # holds BatchNorm statistics of its own shard: make them rank 0's everywhere
                for buf in model.buffers():
                    dist.broadcast(buf, 0)
            row: dict[str, Any] = {
                "epoch": epoch + 1,
                "train_loss": loss_sum.item() / max(seen, 1),
                "train_accuracy": correct.item() / max(seen, 1),
                "seconds": time.perf_counter() - e0,
                "images_per_second": seen * world / max(time.perf_counter() - e0, 1e-9),
            }
            if val is not None:
                row["val_accuracy"] = evaluate(
                    model,
                    val[0],
                    val[1],
                    normalize=normalize,
                    batch_size=cfg.eval_batch_size,
                    device=device,
                    bf16=cfg.bf16,
                    channels_last=cfg.channels_last,
                )["accuracy"]
                if (
                    result.best_val_accuracy is None
                    or row["val_accuracy"] > result.best_val_accuracy
                ):
                    result.best_val_accuracy, result.best_epoch = row["val_accuracy"], epoch + 1
                    if cfg.keep_best:
                        best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            result.history.append(row)
            if rank == 0:  # one log line per epoch, with or without progress bars
                msg = " ".join(
                    f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
                )
                tqdm.write(f"{desc}: {msg}")
            save_state(
                state_path,
                model,
                opt,
                pruner,
                epoch + 1,
                0,
                result,
                best_state,
                cfg,
                rank,
                None,
                settings,
            )
    if cfg.keep_best and best_state is not None:
        model.load_state_dict(best_state)
    result.seconds = time.perf_counter() - t0
    return result


def _label_range(y: torch.Tensor) -> int:
    """The largest label, after refusing an empty or negative one (checked once, not per batch)."""
    if y.dtype.is_floating_point or y.dtype == torch.bool:
        raise PrunelabError(f"labels must be integer class indices, got {y.dtype}")
    if len(y) and int(y.min()) < 0:
        raise PrunelabError(f"labels must be >= 0, found {int(y.min())}")
    return int(y.max()) if len(y) else -1


def _check_logits(out: torch.Tensor, top_label: int) -> None:
    """On the first batch: the model's logits must have a column for every label."""
    if out.dim() != 2:
        raise PrunelabError(
            f"the model returned {tuple(out.shape)}; expected logits shaped N x classes"
        )
    if top_label >= out.shape[1]:
        raise PrunelabError(
            f"labels go up to {top_label} but the model has {out.shape[1]} outputs "
            f"(classes 0..{out.shape[1] - 1}); the data and the model do not fit"
        )


def reapply_masks(model: nn.Module, pruner: Any) -> None:
    """Zero the pruned weights before the first step; warn once if any were not zero
    (masks or weights edited after pruning), instead of training and failing afterwards."""
    masks = getattr(pruner, "masks", None)
    if not isinstance(masks, dict) or not callable(getattr(pruner, "apply", None)):
        return  # a custom pruner without masks: its step() is all fit relies on
    params = dict(model.named_parameters())
    revived = 0
    with torch.no_grad():
        for name, mask in masks.items():
            p = params.get(name)
            if p is not None and p.shape == mask.shape:
                revived += int(torch.count_nonzero(p[~mask.to(p.device, torch.bool)]))
        pruner.apply()
    if revived:
        warnings.warn(
            f"{revived} weight(s) were non-zero at masked positions before training; "
            "the masks were re-applied, so they start at zero",
            stacklevel=3,
        )
