"""Augmentation for any image size and channel count; CIFAR-size output pinned bit for bit."""

import hashlib

import pytest
import torch

from prunelab.data import augment, augment_pad, to_float

# sha256[:16] of augment's output recorded with the CIFAR-10-only implementation (pad 4)
PINNED = {0: "c7c4d861f1d0b1dd", 1: "acf594a15653eb78", 7: "273a8089b8203212"}


def sha(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()[:16]


def images(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)


@pytest.mark.parametrize("seed", sorted(PINNED))
def test_cifar_size_output_is_unchanged(seed):
    x = images((64, 3, 32, 32))
    assert sha(augment(x, torch.Generator().manual_seed(seed))) == PINNED[seed]
    assert sha(augment(x, torch.Generator().manual_seed(seed), pad=4, flip=True)) == PINNED[seed]


def test_cifar_size_float_and_one_channel_are_unchanged():
    x = images((64, 3, 32, 32))
    assert sha(augment(to_float(x), torch.Generator().manual_seed(3))) == "f20ca85306f1ec31"
    x1 = images((16, 1, 32, 32), seed=2)
    assert sha(augment(x1, torch.Generator().manual_seed(4))) == "572c6883ddd72631"


@pytest.mark.parametrize("h, pad", [(32, 4), (40, 5), (28, 4), (224, 28), (8, 1), (3, 1), (1, 1)])
def test_default_pad_is_an_eighth_of_the_height(h, pad):
    assert augment_pad(h) == pad


def coordinates(n: int, c: int, h: int, w: int) -> torch.Tensor:
    """Channel 0 holds row+1, the others column+1, so a crop's offset and flip read back."""
    r = torch.arange(1, h + 1).view(h, 1).expand(h, w)
    col = torch.arange(1, w + 1).view(1, w).expand(h, w)
    planes = [r] + [col] * (c - 1)
    return torch.stack(planes).expand(n, c, h, w).to(torch.uint8)


@pytest.mark.parametrize("c, h, w", [(3, 40, 40), (2, 24, 40), (4, 40, 24)])
def test_offsets_span_the_scaled_pad_any_shape(c, h, w):
    pad = augment_pad(h)
    out = augment(coordinates(3000, c, h, w), torch.Generator().manual_seed(0)).long()
    assert out.shape == (3000, c, h, w)
    my, mx = h // 2, w // 2
    oy = out[:, 0, my, mx] - 1 - my + pad
    flip = out[:, 1, my, mx + 1] < out[:, 1, my, mx]
    col = out[:, 1, my, mx] - 1
    ox = torch.where(flip, col - (w - 1 - mx) + pad, col - mx + pad)
    assert oy.min() == 0 and oy.max() == 2 * pad and ox.min() == 0 and ox.max() == 2 * pad
    assert 0.4 < flip.float().mean() < 0.6
    assert torch.equal(out[:, 1:], out[:, 1:2].expand_as(out[:, 1:]))  # channels move together


def test_one_channel_40px_uses_pad_5():
    x = torch.full((500, 1, 40, 40), 9, dtype=torch.uint8)
    out = augment(x, torch.Generator().manual_seed(0))
    zero_rows = (out[:, 0] == 0).all(2).sum(1)  # rows of padding shifted into view
    assert zero_rows.max() == 5 and out.shape == x.shape


def test_explicit_pad_and_no_flip():
    x = images((16, 3, 20, 30))
    assert torch.equal(augment(x, torch.Generator().manual_seed(0), pad=0, flip=False), x)
    flipped = augment(x, torch.Generator().manual_seed(0), pad=0)
    pairs = zip(flipped, x, strict=True)
    assert all(torch.equal(f, i) or torch.equal(f, i.flip(2)) for f, i in pairs)
    assert not torch.equal(flipped, x)
    with pytest.raises(ValueError, match="pad must be >= 0"):
        augment(x, pad=-1)
