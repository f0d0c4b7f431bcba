"""Batched augmentation with tensor ops: random crop with zero padding and horizontal flip."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def augment_pad(h: int) -> int:
    """The default crop padding for images of height `h`: 4 for CIFAR's 32 (an eighth)."""
    return max(1, round(h / 8))


def augment(
    x: torch.Tensor,
    generator: torch.Generator | None = None,
    pad: int | None = None,
    flip: bool = True,
) -> torch.Tensor:
    """Random crop with zero padding `pad` (default `augment_pad(H)`) and, with `flip`, a random
    horizontal flip, per image, as one gather. Any H, W and channel count."""
    if x.ndim != 4:
        raise ValueError(f"augment expects N x C x H x W images, got shape {tuple(x.shape)}")
    n, c, h, w = x.shape
    p = augment_pad(h) if pad is None else pad
    if p < 0:
        raise ValueError(f"augment pad must be >= 0, got {p}")
    gen_dev = generator.device if generator is not None else torch.device("cpu")
    # drawn in this order (rows, columns, flips) so seeded runs stay bit-identical
    oy = torch.randint(0, 2 * p + 1, (n,), generator=generator, device=gen_dev).to(x.device)
    ox = torch.randint(0, 2 * p + 1, (n,), generator=generator, device=gen_dev).to(x.device)
    wp = w + 2 * p
    padded = F.pad(x, (p, p, p, p)).reshape(n, c, (h + 2 * p) * wp)
    rows = oy[:, None] + torch.arange(h, device=x.device)
    cols = ox[:, None] + torch.arange(w, device=x.device)
    if flip:
        flips = (torch.rand(n, generator=generator, device=gen_dev) < 0.5).to(x.device)
        cols = torch.where(flips[:, None], cols.flip(1), cols)
    idx = (rows[:, :, None] * wp + cols[:, None, :]).reshape(n, 1, h * w).expand(n, c, h * w)
    return padded.gather(2, idx).reshape(n, c, h, w)


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 -> float32 in [0, 1]; no mean/std normalisation (what the pretrained model expects)."""
    if x.dtype != torch.uint8:
        raise ValueError(f"to_float expects uint8 images, got {x.dtype} (already converted?)")
    return x.float() / 255
