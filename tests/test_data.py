"""CIFAR-10 loading (both layouts, cache, errors) and batched augmentation against a reference."""

import os
import pickle
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from prunelab.data import (
    ARCHIVE,
    BATCH_DIR,
    CLASSES,
    TRAIN_BATCHES,
    augment,
    cifar,
    decode,
    load_cifar10,
    split_validation,
    subset,
    to_float,
)
from prunelab.data.cache import INDEX
from prunelab.errors import DataError

# --- official python batches, written in the real format -------------------------------------


def write_batches(folder: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """5 train batches of 4 images and a test batch of 6, as the official pickles (protocol 2)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    rows, labels = {"train": [], "test": []}, {"train": [], "test": []}
    for name in [*TRAIN_BATCHES, "test_batch"]:
        split = "test" if name == "test_batch" else "train"
        n = 6 if split == "test" else 4
        x = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        y = [int(v) for v in rng.integers(0, 10, n)]
        batch = {b"batch_label": name.encode(), b"labels": y, b"data": x, b"filenames": [b"f"] * n}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
        rows[split].append(x)
        labels[split] += y
    meta = {b"label_names": [c.encode() for c in CLASSES], b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return {
        "train_rows": np.concatenate(rows["train"]),
        "train_y": np.array(labels["train"]),
        "test_rows": np.concatenate(rows["test"]),
        "test_y": np.array(labels["test"]),
    }


def make_archive(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    expected = write_batches(tmp_path / "src" / BATCH_DIR)
    archive = tmp_path / "root" / ARCHIVE
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / BATCH_DIR, arcname=BATCH_DIR)
    return archive, expected


def planes_to_images(rows: np.ndarray) -> np.ndarray:
    """Reference for the official row format: pixel (c, r, col) sits at c*1024 + r*32 + col."""
    c, r, col = np.meshgrid(np.arange(3), np.arange(32), np.arange(32), indexing="ij")
    return rows[:, c * 1024 + r * 32 + col]


@pytest.mark.parametrize("layout", ["extracted", "batches-dir", "archive", "archive-file"])
def test_official_layout_pixels_labels_classes(tmp_path, layout):
    if layout.startswith("archive"):
        archive, expected = make_archive(tmp_path)
        root = archive if layout == "archive-file" else archive.parent
    else:
        expected = write_batches(tmp_path / BATCH_DIR)
        root = tmp_path if layout == "extracted" else tmp_path / BATCH_DIR
    d = load_cifar10(root, cache=tmp_path / "cache", download=False)
    assert d.train_x.shape == (20, 3, 32, 32) and d.test_x.shape == (6, 3, 32, 32)
    assert d.train_x.dtype == torch.uint8 and d.train_y.dtype == torch.int64
    np.testing.assert_array_equal(d.train_x.numpy(), planes_to_images(expected["train_rows"]))
    np.testing.assert_array_equal(d.test_x.numpy(), planes_to_images(expected["test_rows"]))
    # one pixel spelled out: green plane, row 2, column 5 of the 7th training image
    assert d.train_x[6, 1, 2, 5] == expected["train_rows"][6, 1024 + 2 * 32 + 5]
    np.testing.assert_array_equal(d.train_y.numpy(), expected["train_y"])
    np.testing.assert_array_equal(d.test_y.numpy(), expected["test_y"])
    assert d.classes == CLASSES
    assert d.classes[:3] == ["airplane", "automobile", "bird"] and d.classes[-1] == "truck"
    assert len(d.fingerprint()) == 16
    assert not (tmp_path / "cache").exists()  # the official layout is read, never cached


def test_truncated_archive_is_refused_by_name(tmp_path):
    archive, _ = make_archive(tmp_path)
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(DataError, match=f"{ARCHIVE}: corrupt or truncated archive"):
        load_cifar10(archive.parent, download=False)


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


@pytest.mark.parametrize(
    "content, message",
    [
        (b"\x00garbage" * 10, "corrupt or truncated CIFAR-10 pickle"),
        ("truncated", "corrupt or truncated CIFAR-10 pickle"),
        (pickle.dumps({b"data": _Evil()}, protocol=2), "refusing to load global"),
        (pickle.dumps({b"data": np.zeros((4, 100), np.uint8), b"labels": [0] * 4}), "not a CIFAR"),
    ],
)
def test_corrupt_pickle_is_refused_by_name(tmp_path, monkeypatch, content, message):
    monkeypatch.chdir(tmp_path)
    write_batches(tmp_path / BATCH_DIR)
    batch = tmp_path / BATCH_DIR / "data_batch_3"
    if content == "truncated":
        content = batch.read_bytes()[:5000]
    batch.write_bytes(content)
    with pytest.raises(DataError, match=f"data_batch_3: .*{message}"):
        load_cifar10(tmp_path, download=False)
    assert not (tmp_path / "pwned").exists()


def test_wrong_label_names_in_meta(tmp_path):
    write_batches(tmp_path / BATCH_DIR)
    meta = {b"label_names": [c.encode() for c in reversed(CLASSES)]}
    (tmp_path / BATCH_DIR / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    with pytest.raises(DataError, match="batches.meta: label_names"):
        load_cifar10(tmp_path, download=False)


def test_missing_batch_file(tmp_path):
    write_batches(tmp_path / BATCH_DIR)
    (tmp_path / BATCH_DIR / "test_batch").unlink()
    with pytest.raises(DataError, match="missing test_batch"):
        load_cifar10(tmp_path, download=False)


# --- root None: archive in the cache, download -------------------------------------------------


def test_md5_mismatch_leaves_nothing_in_cache(tmp_path, monkeypatch):
    bogus = tmp_path / "bogus.tar.gz"
    bogus.write_bytes(b"not the CIFAR-10 archive")
    monkeypatch.setattr(cifar, "URL", bogus.as_uri())
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="md5 mismatch"):
        load_cifar10(None, cache=cache)
    assert [p for p in cache.rglob("*") if p.is_file()] == []


def test_archive_already_in_cache_without_download(tmp_path):
    archive, expected = make_archive(tmp_path)
    (tmp_path / "cache" / "data").mkdir(parents=True)
    archive.rename(tmp_path / "cache" / "data" / ARCHIVE)
    d = load_cifar10(None, cache=tmp_path / "cache", download=False)
    np.testing.assert_array_equal(d.test_y.numpy(), expected["test_y"])


def test_no_root_no_download_no_archive(tmp_path):
    with pytest.raises(DataError, match=f"{ARCHIVE}: not found"):
        load_cifar10(None, cache=tmp_path, download=False)


# --- bad roots ---------------------------------------------------------------------------------


def test_missing_root(tmp_path):
    with pytest.raises(DataError, match="nope: does not exist"):
        load_cifar10(tmp_path / "nope")


def test_root_in_neither_layout(tmp_path):
    (tmp_path / "train").mkdir()  # a train folder alone is not an image-folder tree
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(DataError) as e:
        load_cifar10(tmp_path, cache=tmp_path / "cache")
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path) in msg
    assert BATCH_DIR in msg and ARCHIVE in msg and "train/<class>" in msg


# --- image-folder tree -------------------------------------------------------------------------


def write_tree(root: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """PNGs written out of name order (b, a, c) so the test sees that loading sorts by name."""
    rng = np.random.default_rng(seed)
    expected = {}
    for split, names in (("train", ["b.png", "a.png", "c.png"]), ("test", ["z.png"])):
        xs, ys = [], []
        for label, cls in enumerate(CLASSES):
            (root / split / cls).mkdir(parents=True)
            imgs = {}
            for name in names:
                imgs[name] = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(imgs[name]).save(root / split / cls / name)
            xs += [imgs[name].transpose(2, 0, 1) for name in sorted(names)]
            ys += [label] * len(names)
        expected[f"{split}_x"], expected[f"{split}_y"] = np.stack(xs), np.array(ys)
    return expected


def test_png_tree_round_trips_exactly(tmp_path):
    expected = write_tree(tmp_path / "tree")
    gray = np.arange(1024, dtype=np.uint16).reshape(32, 32).astype(np.uint8)
    Image.fromarray(gray).save(tmp_path / "tree/train/bird/a.png")  # -> RGB
    expected["train_x"][6] = gray[None]
    d = load_cifar10(tmp_path / "tree", cache=tmp_path / "cache")
    for key in ("train_x", "train_y", "test_x", "test_y"):
        np.testing.assert_array_equal(getattr(d, key).numpy(), expected[key])
    assert d.train_x.dtype == torch.uint8 and d.train_y.dtype == torch.int64
    assert d.classes == CLASSES


def _no_decoding(self, paths):
    raise AssertionError("decoded images although a valid cache exists")


def cache_files(cache: Path) -> list[Path]:
    """The decoded copies (and any stray file), not the index naming the current ones."""
    return sorted(p for p in cache.rglob("*") if p.is_file() and p.name != INDEX)


def test_second_load_comes_from_cache(tmp_path, monkeypatch):
    write_tree(tmp_path / "tree")
    first = load_cifar10(tmp_path / "tree", cache=tmp_path / "cache")
    files = cache_files(tmp_path / "cache")
    assert len(files) == 1 and files[0].parent == tmp_path / "cache" / "data"  # no temp left
    monkeypatch.setattr(decode.Decoder, "files", _no_decoding)
    second = load_cifar10(tmp_path / "tree", cache=tmp_path / "cache")
    assert "decoded copy" in second.source and "decoded copy" not in first.source
    for key in ("train_x", "train_y", "test_x", "test_y"):
        assert torch.equal(getattr(first, key), getattr(second, key))
    assert first.fingerprint() == second.fingerprint()


def test_changed_file_invalidates_cache(tmp_path, monkeypatch):
    write_tree(tmp_path / "tree")
    load_cifar10(tmp_path / "tree", cache=tmp_path / "cache")
    img = tmp_path / "tree/test/cat/z.png"
    Image.fromarray(np.full((32, 32, 3), 7, np.uint8)).save(img)
    os.utime(img, ns=(1, 1))
    d = load_cifar10(tmp_path / "tree", cache=tmp_path / "cache")
    assert "decoded copy" not in d.source
    assert (d.test_x[3] == 7).all()


@pytest.mark.parametrize("damage", ["truncate", "flip-byte"])
def test_damaged_cache_is_refused_by_name(tmp_path, damage):
    write_tree(tmp_path / "tree")
    load_cifar10(tmp_path / "tree", cache=tmp_path / "cache")
    (cache,) = cache_files(tmp_path / "cache")
    raw = bytearray(cache.read_bytes())
    if damage == "truncate":
        raw = raw[: len(raw) // 2]
    else:
        raw[len(raw) // 2] ^= 0xFF
    cache.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=f"{cache.name}: corrupt or truncated cache.*delete it"):
        load_cifar10(tmp_path / "tree", cache=tmp_path / "cache")


def test_unreadable_image_is_named_and_nothing_cached(tmp_path):
    write_tree(tmp_path / "tree")
    bad = tmp_path / "tree/train/horse/zz.jpg"
    bad.write_bytes(b"\xff\xd8 this is not a jpeg")
    with pytest.raises(DataError, match=f"{re.escape(str(bad))}: unreadable image"):
        load_cifar10(tmp_path / "tree", cache=tmp_path / "cache")
    assert cache_files(tmp_path / "cache") == []


def test_wrong_class_names(tmp_path):
    write_tree(tmp_path / "tree")
    (tmp_path / "tree/test/cat").rename(tmp_path / "tree/test/kitten")
    msg = r"differ between train/ and test/ \(only in train: \[cat\]; only in test: \[kitten\]\)"
    with pytest.raises(DataError, match=msg):
        load_cifar10(tmp_path / "tree", cache=tmp_path / "cache")
    (tmp_path / "tree/train/cat").rename(tmp_path / "tree/train/kitten")
    with pytest.raises(DataError, match=r"train: found class folders \[.*kitten.*expected \["):
        load_cifar10(tmp_path / "tree", cache=tmp_path / "cache")


def test_wrong_image_size_is_named(tmp_path):
    write_tree(tmp_path / "tree")
    bad = tmp_path / "tree/train/ship/a.png"
    Image.fromarray(np.zeros((32, 31, 3), np.uint8)).save(bad)
    first = tmp_path / "tree/train/airplane/a.png"
    msg = f"{re.escape(str(bad))}: image is 31x32 but {re.escape(str(first))} is 32x32"
    with pytest.raises(DataError, match=msg):
        load_cifar10(tmp_path / "tree", cache=tmp_path / "cache")
    assert cache_files(tmp_path / "cache") == []


# --- the real JPEG tree ------------------------------------------------------------------------


def test_real_tree_shapes_and_balance(cifar):
    assert cifar.train_x.shape == (50000, 3, 32, 32) and cifar.test_x.shape == (10000, 3, 32, 32)
    assert cifar.train_x.dtype == torch.uint8 and cifar.test_y.dtype == torch.int64
    assert cifar.train_y.bincount().tolist() == [5000] * 10
    assert cifar.test_y.bincount().tolist() == [1000] * 10
    assert cifar.classes == CLASSES
    assert 100 < cifar.train_x.float().mean() < 140  # real photos, not zeros or noise


def test_real_tree_cached_load(cifar, jpeg_root, cifar_cache, monkeypatch):
    monkeypatch.setattr(decode.Decoder, "files", _no_decoding)
    again = load_cifar10(jpeg_root, cache=cifar_cache)
    assert "decoded copy" in again.source
    assert again.fingerprint() == cifar.fingerprint()
    assert torch.equal(again.test_x, cifar.test_x)


# --- augmentation ------------------------------------------------------------------------------


def reference_crops(img: np.ndarray) -> dict[tuple[int, int, bool], np.ndarray]:
    """Every (row offset, column offset, flip) crop of the zero-padded image, one at a time."""
    padded = np.pad(img, ((0, 0), (4, 4), (4, 4)))
    out = {}
    for oy in range(9):
        for ox in range(9):
            crop = padded[:, oy : oy + 32, ox : ox + 32]
            out[(oy, ox, False)] = crop
            out[(oy, ox, True)] = crop[:, :, ::-1]
    return out


def random_images(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)


def test_augment_each_image_is_a_padded_shifted_flipped_crop():
    x = random_images(48)
    out = augment(x, torch.Generator().manual_seed(1))
    assert out.shape == x.shape and out.dtype == torch.uint8
    seen = []
    for i in range(len(x)):
        crops = reference_crops(x[i].numpy())
        match = [k for k, c in crops.items() if np.array_equal(c, out[i].numpy())]
        assert len(match) == 1, f"image {i} is not exactly one crop of its padded input"
        seen.append(match[0])
    assert {flip for _, _, flip in seen} == {False, True}
    assert len({(oy, ox) for oy, ox, _ in seen}) > 10  # offsets differ per image


def coordinates(n: int) -> torch.Tensor:
    """Images whose channels hold row+1 and column+1, so the crop and flip can be read back."""
    r = torch.arange(1, 33).view(32, 1).expand(32, 32)
    return torch.stack([r, r.T, r]).expand(n, 3, 32, 32).to(torch.uint8)


def test_augment_draws_all_offsets_and_flips_half():
    out = augment(coordinates(4000), torch.Generator().manual_seed(0)).long()
    oy = out[:, 0, 16, 16] - 1 - 12
    flip = out[:, 1, 16, 17] < out[:, 1, 16, 16]
    ox = torch.where(flip, out[:, 1, 16, 16] - 1 - 11, out[:, 1, 16, 16] - 1 - 12)
    assert oy.min() == 0 and oy.max() == 8 and ox.min() == 0 and ox.max() == 8
    assert len(set(zip(oy.tolist(), ox.tolist(), strict=True))) == 81
    assert 0.45 < flip.float().mean() < 0.55
    assert (out[(oy == 0)][:, :, :4, :] == 0).all()  # shifted down: top rows are padding


def test_augment_is_deterministic_and_keeps_dtype():
    x = random_images(64)
    a = augment(x, torch.Generator().manual_seed(5))
    b = augment(x, torch.Generator().manual_seed(5))
    c = augment(x, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert (a != x).flatten(1).any(1).float().mean() > 0.9  # nearly every image changed
    assert torch.equal(x, random_images(64))  # input untouched
    f = augment(to_float(x), torch.Generator().manual_seed(5))
    assert f.dtype == torch.float32 and torch.equal(f, to_float(a))
    assert augment(x[:0]).shape == (0, 3, 32, 32)
    assert augment(x).shape == x.shape  # global RNG when no generator is given


def test_to_float():
    x = torch.tensor([0, 51, 255], dtype=torch.uint8)
    y = to_float(x)
    assert y.dtype == torch.float32 and y.tolist() == pytest.approx([0.0, 0.2, 1.0])
    with pytest.raises(ValueError, match="uint8"):
        to_float(y)


# --- splits ------------------------------------------------------------------------------------


def test_split_validation_is_a_seeded_partition():
    x, y = torch.arange(100).view(100, 1), torch.arange(100) % 10
    tx, ty, vx, vy = split_validation(x, y, 20, seed=3)
    assert len(tx) == 80 and len(vx) == 20
    assert sorted(tx.flatten().tolist() + vx.flatten().tolist()) == list(range(100))
    assert torch.equal(ty, tx.flatten() % 10) and torch.equal(vy, vx.flatten() % 10)
    assert torch.equal(vx, split_validation(x, y, 20, seed=3)[2])
    assert not torch.equal(vx, split_validation(x, y, 20, seed=4)[2])
    with pytest.raises(DataError, match="hold-out of 101 validation images: expected 0 to 100"):
        split_validation(x, y, 101)


def test_subset_is_class_balanced_and_seeded():
    x, y = torch.arange(100).view(100, 1), torch.arange(100) % 10
    sx, sy = subset(x, y, 30, seed=1)
    assert sy.bincount().tolist() == [3] * 10 and torch.equal(sy, sx.flatten() % 10)
    assert len(set(sx.flatten().tolist())) == 30
    assert torch.equal(sx, subset(x, y, 30, seed=1)[0])
    assert not torch.equal(sx, subset(x, y, 30, seed=2)[0])
    assert sorted(subset(x, y, 25)[1].bincount().tolist()) == [2] * 5 + [3] * 5
    with pytest.raises(DataError, match="only 10 images"):
        subset(x, y, 200)
