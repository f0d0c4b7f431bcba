"""The official CIFAR-100 python version (folder and archive), and image_size / channels on the
python versions."""

import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from prunelab.data import default_data_root, load_cifar10, load_images
from prunelab.errors import DataError

NAMES = ["apple", "bed", "cup", "zebra"]  # a real archive has 100, in label order


def write_cifar100(folder: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """train, test and meta pickles as the official ones (protocol 2, bytes keys)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    out = {}
    for split, n in (("train", 8), ("test", 4)):
        x = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        fine = [int(v) for v in rng.integers(0, len(NAMES), n)]
        batch = {b"data": x, b"fine_labels": fine, b"coarse_labels": [0] * n, b"filenames": []}
        (folder / split).write_bytes(pickle.dumps(batch, protocol=2))
        out[f"{split}_x"], out[f"{split}_y"] = x.reshape(n, 3, 32, 32), np.array(fine)
    meta = {b"fine_label_names": [c.encode() for c in NAMES], b"coarse_label_names": [b"all"]}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return out


@pytest.mark.parametrize("layout", ["parent", "folder", "archive", "archive-parent"])
def test_cifar100_loads_fine_labels_and_names(tmp_path, layout):
    expected = write_cifar100(tmp_path / "src/cifar-100-python")
    root = tmp_path / "src" if layout == "parent" else tmp_path / "src/cifar-100-python"
    if layout.startswith("archive"):
        root = tmp_path / "root/cifar-100-python.tar.gz"
        root.parent.mkdir()
        with tarfile.open(root, "w:gz") as tar:
            tar.add(tmp_path / "src/cifar-100-python", arcname="cifar-100-python")
        root = root.parent if layout == "archive-parent" else root
    d = load_images(root, cache=tmp_path / "cache", download=False)
    assert d.classes == NAMES and d.image_shape == (3, 32, 32) and d.val_x is None
    for key, want in expected.items():
        np.testing.assert_array_equal(getattr(d, key).numpy(), want)
    assert "CIFAR-100" in d.source
    with pytest.raises(DataError, match="expected CIFAR-10's"):
        load_cifar10(root, cache=tmp_path / "cache", download=False)


def test_cifar100_label_out_of_range(tmp_path):
    write_cifar100(tmp_path / "cifar-100-python")
    batch = {b"data": np.zeros((2, 3072), np.uint8), b"fine_labels": [0, 4]}
    (tmp_path / "cifar-100-python/test").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DataError, match=r"test: not a CIFAR-100 batch .*fine_labels.* 0\.\.3\)"):
        load_images(tmp_path, download=False)


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_cifar100_meta_with_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_cifar100(tmp_path / "cifar-100-python")
    (tmp_path / "cifar-100-python/meta").write_bytes(pickle.dumps({b"x": _Evil()}, protocol=2))
    with pytest.raises(DataError, match=r"meta: corrupt or truncated CIFAR-100 pickle"):
        load_images(tmp_path, download=False)
    assert not (tmp_path / "pwned").exists()


def test_image_size_and_channels_apply_to_python_versions(tmp_path):
    expected = write_cifar100(tmp_path / "cifar-100-python")
    d = load_images(tmp_path, image_size=16, channels=1, download=False)
    assert d.image_shape == (1, 16, 16) and d.train_x.shape[0] == 8
    assert d.notes == [
        "12 colour images converted to grayscale (channels=1)",
        "images resized to 16x16 (PIL bicubic)",
    ]
    im = Image.fromarray(expected["test_x"][2].transpose(1, 2, 0)).convert("L")
    want = np.asarray(im.resize((16, 16), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(d.test_x[2, 0].numpy(), want)


def test_default_root_is_the_cache_data_folder(tmp_path):
    assert default_data_root(tmp_path) == tmp_path / "data"
    with pytest.raises(DataError, match=f"{tmp_path / 'data'}/cifar-10-python.tar.gz: not found"):
        load_images(None, cache=tmp_path, download=False)
