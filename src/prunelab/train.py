"""One loop for training and fine-tuning, plus batched evaluation.

The data live on the training device as uint8 tensors and are augmented per batch.
Data order and augmentation are drawn from (seed, epoch), and the loop can stop at
any batch boundary and resume there, so an interrupted CPU run ends with the same
weights as an uninterrupted one. With a pruner attached the masks are re-applied
(and optimizer state zeroed at pruned positions) after every optimizer step.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .data import augment
from .errors import CheckpointError, PrunelabError
from .fileio import atomic_path
from .fold import fold_batchnorm
from .metrics import classification_metrics
from .safeload import load_tensors

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
        ]
        for name, ok, expected in checks:
            if not ok:
                raise PrunelabError(f"{name} must be {expected} (got {getattr(self, name)!r})")


def _num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA when present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise PrunelabError(f"device {name!r} asked for but CUDA is not available (use cpu)")
    return torch.device(name)


def autocast(device: torch.device, bf16: bool):
    """bf16 autocast (AMX on recent Xeons, tensor cores on GPUs) or a no-op."""
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _to_input(xb: torch.Tensor, channels_last: bool) -> torch.Tensor:
    x = xb.float().div_(255) if xb.dtype == torch.uint8 else xb.float()
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@torch.no_grad()
def predict(
    model: nn.Module,
    x: torch.Tensor,
    batch_size: int = 1000,
    device: torch.device | str = "cpu",
    bf16: bool = False,
    channels_last: bool = True,
    progress: bool = False,
    desc: str = "evaluate",
) -> torch.Tensor:
    """Predicted class of every image (uint8 or [0,1] float), in eval mode, fp32 by default."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    preds = []
    starts = range(0, len(x), batch_size)
    for i in tqdm(starts, desc=desc, disable=not progress, leave=False):
        xb = _to_input(x[i : i + batch_size].to(device, non_blocking=True), channels_last)
        with autocast(device, bf16):
            preds.append(model(xb).argmax(1).cpu())
    model.train(was_training)
    return torch.cat(preds) if preds else torch.empty(0, dtype=torch.long)


def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int = 10,
    fold_bn: bool = True,
    **kw: Any,
) -> dict[str, Any]:
    """The study's metrics of `model` on (x, y); also returns the predictions.

    fold_bn (default): evaluate a copy with each conv -> BatchNorm pair folded into one conv
    (prunelab.fold): the same model to fp32 rounding, 9-17% faster on the dev CPU, and on the
    10,000 test images not one prediction changed. fold_bn=False runs the model as it is.
    """
    if fold_bn:
        model = fold_batchnorm(model)
    preds = predict(model, x, **kw)
    out = classification_metrics(y.cpu(), preds, num_classes)
    out["num_images"] = int(len(y))
    out["predictions"] = preds
    return out


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
    """Training stopped on a signal after saving its state."""


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
) -> FitResult:
    """Train `model` in place; checkpoint the full loop state to `state_path` every epoch.

    `pruner` (if given) must offer `step(optimizer)`: optimizer step, re-mask, zero
    optimizer state at pruned positions. `step_hook(step, total_steps)` runs after
    each step (gradual pruning uses it). Under torchrun each rank takes its shard of
    every global batch and DistributedDataParallel averages the gradients.
    """
    cfg.validate()
    device = torch.device(device)
    rank, world = _rank_world()
    if world > 1 and device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())  # this rank's GPU
    if world > 1 and cfg.batch_size % world:
        raise PrunelabError(
            f"batch_size {cfg.batch_size} must be a multiple of the {world} ranks "
            "(each rank takes an equal share of every batch)"
        )
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    train_x, train_y = train_x.to(device), train_y.to(device)
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
    saved = _load_state(state_path, model, opt, pruner) if resume and state_path else None
    if saved is not None:
        start_epoch, start_batch = saved["epoch"], saved["batch"]
        result.history = saved["history"]
        result.best_epoch, result.best_val_accuracy = saved["best_epoch"], saved["best_val"]
        best_state = saved.get("best_state")
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
                if cfg.augment:
                    xb = augment(xb, gen)
                xb, yb = xb[rank::world], train_y[idx][rank::world]
                step = epoch * steps_per_epoch + b
                for g in opt.param_groups:
                    g["lr"] = cfg.lr * lr_factor(step, total, cfg.schedule, cfg.warmup)
                with autocast(device, cfg.bf16):
                    out = net(_to_input(xb, cfg.channels_last))
                    loss = F.cross_entropy(out.float(), yb, label_smoothing=cfg.label_smoothing)
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
                    _save_state(
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
                    )
                    raise Interrupted(
                        f"stopped by signal {stop.signal} at epoch {epoch + 1}, batch {b + 1}; "
                        f"state saved to {state_path}; rerun the same command with --resume"
                    )
            bar.close()
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
            _save_state(
                state_path, model, opt, pruner, epoch + 1, 0, result, best_state, cfg, rank, None
            )
    if cfg.keep_best and best_state is not None:
        model.load_state_dict(best_state)
    result.seconds = time.perf_counter() - t0
    return result


def _save_state(path, model, opt, pruner, epoch, batch, result, best_state, cfg, rank, gen) -> None:
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
        "gen_state": gen.get_state() if gen is not None else None,
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _load_state(path, model, opt, pruner) -> dict[str, Any] | None:
    path = Path(path)
    if not path.exists():
        return None
    state = load_tensors(path, "training state")
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
