"""validation_split: the tree's val/ folder, or a seeded class-balanced share of train/."""

import pytest
import torch

from prunelab.data import ImageData, validation_split
from prunelab.errors import DataError


def dataset(counts: list[int], val: bool = False) -> ImageData:
    """Images whose single pixel is their index, so splits can be checked for overlap."""
    y = torch.cat([torch.full((n,), i) for i, n in enumerate(counts)])
    x = torch.arange(len(y)).view(-1, 1, 1, 1)
    v = (x[:3], y[:3]) if val else (None, None)
    return ImageData(x, y, x[:2], y[:2], [f"c{i}" for i in range(len(counts))], "test", *v)


def test_holds_out_a_balanced_seeded_fraction():
    d = dataset([50, 30, 20])
    tx, ty, vx, vy = validation_split(d, fraction=0.1, seed=0)
    assert vy.bincount().tolist() == [5, 3, 2] and len(tx) == 90
    assert sorted(tx.flatten().tolist() + vx.flatten().tolist()) == list(range(100))
    assert torch.equal(vy, d.train_y[vx.flatten()]) and torch.equal(ty, d.train_y[tx.flatten()])
    assert torch.equal(vx, validation_split(d, 0.1, seed=0)[2])
    assert not torch.equal(vx, validation_split(d, 0.1, seed=1)[2])


def test_at_least_one_per_class_and_a_cap():
    d = dataset([40, 3, 3])
    vy = validation_split(d, fraction=0.05)[3]
    assert vy.bincount().tolist() == [2, 1, 1]
    assert validation_split(d, fraction=0.5, max_images=5)[3].bincount().tolist() == [2, 2, 1]
    with pytest.raises(DataError, match="max_images=2: expected at least one per class"):
        validation_split(d, max_images=2)


def test_too_few_training_images_is_refused():
    with pytest.raises(DataError, match="test: class 'c1' has 1 training image.*need at least 2"):
        validation_split(dataset([10, 1]))
    with pytest.raises(DataError, match="fraction 1.0: expected a number between 0 and 1"):
        validation_split(dataset([10, 10]), fraction=1.0)


def test_val_folder_is_used_as_is_or_capped():
    d = dataset([10, 10], val=True)
    tx, ty, vx, vy = validation_split(d)
    assert tx is d.train_x and torch.equal(vx, d.val_x)
    capped = validation_split(d, max_images=2, seed=3)[2]
    assert len(capped) == 2 and set(capped.flatten().tolist()) <= {0, 1, 2}
