"""CIFAR-10 is not moved by the generalisation: same tensors, fingerprint and cache key."""

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import prunelab.data
from prunelab.data import CIFAR10, CLASSES, ImageData, load_cifar10, load_images
from prunelab.errors import DataError

GOLDEN_FINGERPRINT = "8fb74b4cf90ff2f7"  # tests/test_golden.py, recorded before the rebuild


def v1_cache_name(root: Path) -> str:
    """The cache file name the CIFAR-10-only loader used (a key over paths, sizes, mtimes)."""
    h = hashlib.sha256(f"prunelab-cifar10-images-v1\n{root.resolve()}\n".encode())
    for split in ("train", "test"):
        for cls in CLASSES:
            for p in sorted((root / split / cls).iterdir(), key=lambda p: p.name):
                if p.suffix.lower() in (".png", ".jpg", ".jpeg") and not p.name.startswith("."):
                    st = p.stat()
                    h.update(f"{split}/{cls}/{p.name}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return f"cifar10-images-{h.hexdigest()[:20]}.npys"


def test_real_tree_same_data_both_ways(cifar, jpeg_root, cifar_cache):
    assert cifar.fingerprint() == GOLDEN_FINGERPRINT
    assert (cifar_cache / "data" / v1_cache_name(jpeg_root)).is_file()
    d = load_images(jpeg_root, cache=cifar_cache)
    assert d.fingerprint() == GOLDEN_FINGERPRINT and d.classes == CLASSES
    for a, b in zip(d.arrays(), cifar.arrays(), strict=True):
        assert a.dtype == b.dtype and torch.equal(a, b)
    assert d.val_x is None and d.notes == [] and d.image_shape == (3, 32, 32)
    assert len(list((cifar_cache / "data").glob("*.npys"))) == 1  # one key for both loaders


def test_old_names_still_work():
    assert CIFAR10 is ImageData
    x = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    y = torch.zeros(2, dtype=torch.int64)
    d = CIFAR10(x, y, x, y, classes=list(CLASSES), source="s")  # the old positional order
    assert d.image_shape == (3, 32, 32) and d.notes == [] and d.val_x is None
    assert d.fingerprint() == CIFAR10(x, y, x, y, list(CLASSES), "other").fingerprint()


def test_tree_cache_key_unchanged_for_the_defaults(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for cls in CLASSES:
            (tmp_path / "tree" / split / cls).mkdir(parents=True)
            img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(img).save(tmp_path / "tree" / split / cls / "a.png")
    load_cifar10(tmp_path / "tree", cache=tmp_path / "cache")
    names = [p.name for p in (tmp_path / "cache/data").glob("*.npys")]
    assert names == [v1_cache_name(tmp_path / "tree")]


def test_cifar10_loader_refuses_other_shapes(tmp_path):
    for split in ("train", "test"):
        for cls in CLASSES:
            (tmp_path / split / cls).mkdir(parents=True)
            Image.fromarray(np.zeros((31, 32, 3), np.uint8)).save(tmp_path / split / cls / "a.png")
    with pytest.raises(DataError, match="images are 3x31x32, expected 3x32x32 for CIFAR-10"):
        load_cifar10(tmp_path, cache=tmp_path / "cache")
    assert load_images(tmp_path, cache=tmp_path / "cache").image_shape == (3, 31, 32)


def test_data_layer_never_names_the_shared_folder():
    for path in Path(prunelab.data.__file__).parent.rglob("*.py"):
        assert "../shared" not in path.read_text() and "shared/data" not in path.read_text(), path
