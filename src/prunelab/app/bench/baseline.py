"""The straightforward baseline every prunelab figure is compared with: what a plain PyTorch
script does (per-sample Dataset + DataLoader, fp32, NCHW, whole-network re-evaluation)."""

from __future__ import annotations

import copy
import random
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ...models import VGG
from ...pruning import fine_grained_mask
from ...train import TrainConfig, lr_factor, make_optimizer

BASELINE_BATCH = 256
PAD = 4


def hits(preds: torch.Tensor, y: torch.Tensor) -> int:
    """Correct predictions; accuracies are hits / n in Python floats, as in the scan."""
    return int((preds == y).sum())


class PerSampleDataset(Dataset):
    """What a plain script does: convert (and augment) one image at a time in Python."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, augment: bool = False, seed: int = 0):
        self.x, self.y, self.augment = x, y, augment
        self.rng = random.Random(seed)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = self.x[i].float() / 255
        if self.augment:  # RandomCrop(32, padding=4) + RandomHorizontalFlip, per image
            h, w = img.shape[1:]
            padded = F.pad(img, (PAD, PAD, PAD, PAD))
            oy, ox = self.rng.randint(0, 2 * PAD), self.rng.randint(0, 2 * PAD)
            img = padded[:, oy : oy + h, ox : ox + w]
            if self.rng.random() < 0.5:
                img = img.flip(-1)
        return img, int(self.y[i])


def baseline_model(model: nn.Module) -> nn.Module:
    """A copy in plain NCHW (contiguous) memory format, as a script that never thinks of it."""
    return copy.deepcopy(model).to(memory_format=torch.contiguous_format)


@torch.no_grad()
def baseline_predict(
    model: nn.Module, x: torch.Tensor, batch_size: int = BASELINE_BATCH
) -> torch.Tensor:
    """Predictions through Dataset + DataLoader, fp32, NCHW, in eval mode."""
    model.eval()
    loader = DataLoader(PerSampleDataset(x, torch.zeros(len(x))), batch_size=batch_size)
    return torch.cat([model(xb).argmax(1) for xb, _ in loader])


def baseline_train(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: TrainConfig,
    masks: dict[str, torch.Tensor] | None = None,
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
    step_hook: Callable[[int], None] | None = None,
) -> list[float]:
    """A plain training loop with `cfg`'s hyper-parameters (fp32, NCHW, per-sample
    augmentation, loss.item() every step); `masks` are re-applied after each step.
    With `val` and cfg.keep_best the best epoch's weights are kept. Returns the losses."""
    gen = torch.Generator().manual_seed(cfg.seed)
    data = PerSampleDataset(x, y, augment=cfg.augment, seed=cfg.seed)
    loader = DataLoader(
        data, batch_size=cfg.batch_size, shuffle=True, drop_last=True, generator=gen
    )
    opt = make_optimizer(model, cfg)
    params = dict(model.named_parameters())
    total, step, losses = len(loader) * cfg.epochs, 0, []
    best: tuple[float, dict[str, torch.Tensor]] | None = None
    for _ in range(cfg.epochs):
        model.train()
        for xb, yb in loader:
            for g in opt.param_groups:
                g["lr"] = cfg.lr * lr_factor(step, total, cfg.schedule, cfg.warmup)
            loss = F.cross_entropy(model(xb), yb, label_smoothing=cfg.label_smoothing)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if masks:
                with torch.no_grad():
                    for name, m in masks.items():
                        params[name].mul_(m)
            losses.append(loss.item())
            step += 1
            if step_hook is not None:
                step_hook(step)
        if val is not None:
            acc = hits(baseline_predict(model, val[0]), val[1]) / len(val[1])
            if cfg.keep_best and (best is None or acc > best[0]):
                best = (acc, copy.deepcopy(model.state_dict()))
    if best is not None:
        model.load_state_dict(best[1])
    return losses


@torch.no_grad()
def baseline_scan(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    layers: Sequence[str],
    sparsities: Sequence[float],
    batch_size: int = BASELINE_BATCH,
) -> dict[str, Any]:
    """Sensitivity scan the plain way: prune one layer, re-run the whole network, restore."""
    modules = dict(model.named_modules())

    def accuracy() -> float:
        return hits(baseline_predict(model, x, batch_size), y) / len(y)

    out: dict[str, Any] = {
        "dense_accuracy": accuracy(),
        "sparsities": list(sparsities),
        "layers": {},
    }
    for name in layers:
        w = modules[name].weight
        original = w.detach().clone()
        accs = []
        for s in sparsities:
            w.mul_(fine_grained_mask(original, s))
            accs.append(accuracy())
            w.copy_(original)
        out["layers"][name] = {"accuracy": accs}
    return out


def baseline_study(rec: dict[str, Any], data_dir: Any, cache: Any) -> dict[str, Any]:
    """The recipe's steps with baseline mechanics (fp32, NCHW, per-sample data, full scan)."""
    from ..steps import recipe_splits

    sp = recipe_splits(rec, data_dir, cache)
    val = (sp.val_x, sp.val_y) if len(sp.val_x) else None

    def test_acc(m: nn.Module) -> float:
        return hits(baseline_predict(m, sp.test_x), sp.test_y) / len(sp.test_y)

    torch.manual_seed(rec["seed"])
    dense = VGG(width=rec["dense"]["width"], num_classes=len(sp.classes))
    baseline_train(dense, sp.train_x, sp.train_y, rec["dense"]["train"], val=val)
    out: dict[str, Any] = {"dense": test_acc(dense), "finetune": {}}
    convs = [n for n, m in dense.named_modules() if isinstance(m, nn.Conv2d)]
    if "sensitivity" in rec:
        s = rec["sensitivity"]
        x, y = sp.split(s["split"])
        baseline_scan(dense, x, y, convs, s["sparsities"])
    scope = (nn.Conv2d,) if rec["prune"]["scope"] == "conv" else (nn.Conv2d, nn.Linear)
    for s in rec["prune"]["sparsities"]:
        pruned = copy.deepcopy(dense)
        masks = {
            f"{n}.weight": fine_grained_mask(m.weight, s)
            for n, m in pruned.named_modules()
            if isinstance(m, scope)
        }
        params = dict(pruned.named_parameters())
        with torch.no_grad():
            for name, m in masks.items():
                params[name].mul_(m)
        test_acc(pruned)
        for run in rec["finetune"]:
            m = copy.deepcopy(pruned)
            baseline_train(m, sp.train_x, sp.train_y, run["config"], masks=masks, val=val)
            out["finetune"][f"s{s:.2f}-{run['name']}"] = test_acc(m)
    return out
