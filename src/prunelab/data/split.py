"""Seeded splits and subsets of a loaded data set (validation hold-out, class-balanced picks)."""

from __future__ import annotations

import torch

from ..errors import DataError
from .dataset import ImageData

Quad = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def split_validation(x: torch.Tensor, y: torch.Tensor, n_val: int, seed: int = 0) -> Quad:
    """Hold out a seeded random `n_val` images: (train_x, train_y, val_x, val_y)."""
    if not 0 <= n_val <= len(x):
        raise DataError(
            f"a hold-out of {n_val} validation images: expected 0 to {len(x)} (the training "
            "images); ask for fewer (--val-size, a recipe's data.val_size), a fraction "
            "(--val-fraction) or add a val/ folder"
        )
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    val, train = perm[:n_val].sort().values, perm[n_val:].sort().values
    return x[train], y[train], x[val], y[val]


def validation_split(
    data: ImageData, fraction: float = 0.1, seed: int = 0, max_images: int | None = None
) -> Quad:
    """(train_x, train_y, val_x, val_y): the tree's own val/ split when it has one, else a
    seeded class-balanced `fraction` of train/ (at least one image per class), at most
    `max_images` validation images either way."""
    if not 0 < fraction < 1:
        raise DataError(f"validation fraction {fraction}: expected a number between 0 and 1")
    n_classes = len(data.classes)
    if max_images is not None and max_images < n_classes:
        raise DataError(f"max_images={max_images}: expected at least one per class ({n_classes})")
    gen = torch.Generator().manual_seed(seed)
    if data.val_x is not None:
        vx, vy = data.val_x, data.val_y
        if max_images is not None and len(vx) > max_images:
            keep = torch.randperm(len(vx), generator=gen)[:max_images].sort().values
            vx, vy = vx[keep], vy[keep]
        return data.train_x, data.train_y, vx, vy
    y = data.train_y
    counts = torch.bincount(y, minlength=n_classes).tolist()
    want = [max(1, round(fraction * n)) for n in counts]
    if max_images is not None and sum(want) > max_images:
        share = [max_images // n_classes + (i < max_images % n_classes) for i in range(n_classes)]
        want = [min(w, s) for w, s in zip(want, share, strict=True)]
    for label, (n, k) in enumerate(zip(counts, want, strict=True)):
        if n - k < 1:
            raise DataError(
                f"{data.source}: class {data.classes[label]!r} has {n} training image(s); "
                f"need at least {k + 1} to hold out {k} for validation and keep one for training"
            )
    perm = torch.randperm(len(y), generator=gen)
    y_perm = y[perm]
    val = torch.cat([perm[y_perm == label][:k] for label, k in enumerate(want)]).sort().values
    is_val = torch.zeros(len(y), dtype=torch.bool)
    is_val[val] = True
    return data.train_x[~is_val], y[~is_val], data.train_x[val], y[val]


def subset(
    x: torch.Tensor, y: torch.Tensor, n: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded class-balanced subset of `n` images (the remainder goes to the first classes)."""
    labels = y.unique().tolist()
    if n < 0 or (n and not labels):
        raise DataError(f"subset of {n}: need n >= 0 and a non-empty data set")
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    y_perm = y[perm]
    picks = []
    for i, label in enumerate(labels):
        want = n // len(labels) + (i < n % len(labels))
        idx = perm[y_perm == label][:want]
        if len(idx) < want:
            raise DataError(f"subset of {n}: class {label} has only {len(idx)} images, need {want}")
        picks.append(idx)
    idx = torch.cat(picks).sort().values if picks else torch.zeros(0, dtype=torch.long)
    return x[idx], y[idx]
