"""Image-folder trees of any size, class count and channel count; every refusal is one line."""

import json
import os
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from prunelab.data import ImageData, decode, load_images, memory, validation_split
from prunelab.data import cache as cache_mod
from prunelab.errors import DataError


def write_tree(
    root: Path,
    classes=("cat", "ant", "bee"),
    splits=("train", "test"),
    n: int = 2,
    size: tuple[int, int] = (40, 40),
    gray: bool = False,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """PNGs with random pixels; returns the expected N x C x H x W arrays per split."""
    rng = np.random.default_rng(seed)
    w, h = size
    expected = {}
    for split in splits:
        xs, ys = [], []
        for label, cls in enumerate(sorted(classes)):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                img = rng.integers(0, 256, (h, w) if gray else (h, w, 3), dtype=np.uint8)
                Image.fromarray(img).save(root / split / cls / f"{i}.png")
                xs.append(img[None] if gray else img.transpose(2, 0, 1))
                ys.append(label)
        expected[f"{split}_x"], expected[f"{split}_y"] = np.stack(xs), np.array(ys)
    return expected


def load(root: Path, **kw) -> ImageData:
    return load_images(root, cache=root.parent / "cache", download=False, **kw)


def refusal(root: Path, **kw) -> str:
    with pytest.raises(DataError) as e:
        load(root, **kw)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def cache_files(tmp_path: Path) -> list[Path]:
    """The decoded copies (and any stray file), not the index naming the current ones."""
    files = (tmp_path / "cache").rglob("*")
    return sorted(p for p in files if p.is_file() and p.name != cache_mod.INDEX)


def test_three_class_rgb_tree_of_40px_pngs(tmp_path):
    expected = write_tree(tmp_path / "tree")
    d = load(tmp_path / "tree")
    assert d.classes == ["ant", "bee", "cat"]  # sorted by folder name: that is the label order
    assert d.image_shape == (3, 40, 40) and d.train_x.dtype == torch.uint8
    for key, want in expected.items():
        np.testing.assert_array_equal(getattr(d, key).numpy(), want)
    assert d.train_y.dtype == torch.int64 and d.val_x is None and d.val_y is None
    assert d.notes == [] and len(d.fingerprint()) == 16
    (cached,) = cache_files(tmp_path)
    assert cached.name.startswith("images-")
    again = load(tmp_path / "tree")
    assert "decoded copy" in again.source and again.fingerprint() == d.fingerprint()


def test_jpeg_suffixes_any_case(tmp_path):
    write_tree(tmp_path / "tree")
    img = Image.fromarray(np.zeros((40, 40, 3), np.uint8))
    for name in ("x.JPG", "y.Jpeg", "z.PNG"):
        img.save(tmp_path / "tree/train/ant" / name, format="PNG" if name.endswith("G") else "JPEG")
    (tmp_path / "tree/train/ant/notes.txt").write_text("not an image: ignored")
    d = load(tmp_path / "tree")
    assert d.train_y.bincount().tolist() == [5, 2, 2]


def test_val_folder_is_loaded_and_used(tmp_path):
    expected = write_tree(tmp_path / "tree", splits=("train", "test", "val"), n=3)
    d = load(tmp_path / "tree")
    np.testing.assert_array_equal(d.val_x.numpy(), expected["val_x"])
    np.testing.assert_array_equal(d.val_y.numpy(), expected["val_y"])
    tx, ty, vx, vy = validation_split(d)
    assert torch.equal(vx, d.val_x) and torch.equal(tx, d.train_x) and len(vx) == 9
    cached = load(tmp_path / "tree")
    assert torch.equal(cached.val_x, d.val_x) and cached.fingerprint() == d.fingerprint()


def test_grayscale_tree_keeps_one_channel_also_from_cache(tmp_path):
    expected = write_tree(tmp_path / "tree", gray=True)
    d = load(tmp_path / "tree")
    assert d.image_shape == (1, 40, 40)
    assert d.notes == ["grayscale images kept as 1 channel"]
    np.testing.assert_array_equal(d.train_x.numpy(), expected["train_x"])
    np.testing.assert_array_equal(d.test_x.numpy(), expected["test_x"])
    again = load(tmp_path / "tree")
    assert "decoded copy" in again.source and again.notes == d.notes
    assert torch.equal(again.train_x, d.train_x)


def test_forced_channels_convert_and_say_so(tmp_path):
    gray = write_tree(tmp_path / "gray", gray=True)
    d = load(tmp_path / "gray", channels=3)
    assert d.image_shape == (3, 40, 40)
    assert d.notes == ["12 grayscale images converted to RGB (channels=3)"]
    assert (d.train_x == torch.from_numpy(gray["train_x"])).all()  # each plane is the gray one
    write_tree(tmp_path / "rgb")
    d = load(tmp_path / "rgb", channels=1)
    first = Image.open(tmp_path / "rgb/train/ant/0.png").convert("L")
    assert d.image_shape == (1, 40, 40) and "converted to grayscale" in d.notes[0]
    np.testing.assert_array_equal(d.train_x[0, 0].numpy(), np.asarray(first))


def test_mixed_grayscale_and_colour_becomes_rgb(tmp_path):
    expected = write_tree(tmp_path / "tree")
    gray = np.arange(1600, dtype=np.uint16).reshape(40, 40).astype(np.uint8)
    Image.fromarray(gray).save(tmp_path / "tree/test/bee/1.png")
    d = load(tmp_path / "tree")
    assert d.image_shape == (3, 40, 40) and "mixed grayscale and colour" in d.notes[0]
    expected["test_x"][3] = gray[None]
    np.testing.assert_array_equal(d.test_x.numpy(), expected["test_x"])


def test_16_bit_grayscale_keeps_the_top_byte(tmp_path):
    write_tree(tmp_path / "tree", gray=True)
    deep = np.full((40, 40), 0x8A10, np.uint16)
    Image.fromarray(deep).save(tmp_path / "tree/train/ant/0.png")
    d = load(tmp_path / "tree")
    assert d.image_shape[0] == 1 and (d.train_x[0] == 0x8A).all()


def test_mixed_sizes_name_both_files_and_the_option(tmp_path):
    write_tree(tmp_path / "tree")
    bad = tmp_path / "tree/test/cat/1.png"
    Image.fromarray(np.zeros((30, 50, 3), np.uint8)).save(bad)
    msg = refusal(tmp_path / "tree")
    first = tmp_path / "tree/train/ant/0.png"
    assert f"{bad}: image is 50x30 but {first} is 40x40" in msg and "--image-size N" in msg
    assert cache_files(tmp_path) == []


def test_image_size_resizes_every_image(tmp_path):
    write_tree(tmp_path / "tree")
    odd = tmp_path / "tree/test/cat/1.png"
    Image.fromarray(np.full((30, 50, 3), 9, np.uint8)).save(odd)
    d = load(tmp_path / "tree", image_size=24)
    assert d.image_shape == (3, 24, 24) and d.notes == ["images resized to 24x24 (PIL bicubic)"]
    assert (d.test_x[5] == 9).all()
    with Image.open(tmp_path / "tree/train/ant/0.png") as im:
        want = np.asarray(im.convert("RGB").resize((24, 24), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(d.train_x[0].numpy(), want.transpose(2, 0, 1))
    assert "--image-size N" in refusal(tmp_path / "tree")  # without the option: still refused
    assert len(cache_files(tmp_path)) == 1


def test_image_size_is_part_of_the_cache_key(tmp_path):
    write_tree(tmp_path / "tree")
    a, b = load(tmp_path / "tree"), load(tmp_path / "tree", image_size=20)
    assert a.image_shape == (3, 40, 40) and b.image_shape == (3, 20, 20)
    assert len(cache_files(tmp_path)) == 2
    assert load(tmp_path / "tree", image_size=20).fingerprint() == b.fingerprint()


def test_a_touched_tree_replaces_its_decoded_copy_instead_of_adding_one(tmp_path):
    expected = write_tree(tmp_path / "tree")
    load(tmp_path / "tree", image_size=20)  # another decoding of the same folder: kept
    first = load(tmp_path / "tree")
    files = cache_files(tmp_path)
    assert len(files) == 2
    later = os.stat(tmp_path / "tree" / "train" / "ant" / "0.png").st_mtime_ns + 10**9
    os.utime(tmp_path / "tree" / "train" / "ant" / "0.png", ns=(later, later))
    again = load(tmp_path / "tree")  # a new key (mtimes are part of it): decoded again
    now = cache_files(tmp_path)
    assert len(now) == 2 and set(now) != set(files)  # the stale copy went, the 20 px one stayed
    assert again.fingerprint() == first.fingerprint()
    assert np.array_equal(again.train_x.numpy(), expected["train_x"])
    assert load(tmp_path / "tree", image_size=20).image_shape == (3, 20, 20)
    assert len(cache_files(tmp_path)) == 2  # read from its copy, not decoded again


def test_the_cache_index_never_deletes_what_it_does_not_name(tmp_path):
    write_tree(tmp_path / "tree")
    (tmp_path / "keep.npys").write_text("not ours")
    load(tmp_path / "tree")
    index_path = tmp_path / "cache" / "data" / cache_mod.INDEX
    index = json.loads(index_path.read_text())
    index = dict.fromkeys(index, "../../keep.npys")  # a damaged or hostile index
    index_path.write_text(json.dumps(index))
    os.utime(tmp_path / "tree" / "test" / "bee" / "1.png", ns=(10**18, 10**18))
    load(tmp_path / "tree")
    assert (tmp_path / "keep.npys").read_text() == "not ours"


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"image_size": 0}, "image_size=0: expected a whole number of pixels > 0"),
        ({"image_size": -3}, "image_size=-3"),
        ({"image_size": 2.5}, "image_size=2.5"),
        ({"channels": 2}, "channels=2: expected 1"),
    ],
)
def test_bad_options(tmp_path, kw, message):
    write_tree(tmp_path / "tree", n=1)
    assert message in refusal(tmp_path / "tree", **kw)


def test_single_class_is_refused(tmp_path):
    write_tree(tmp_path / "tree", classes=("only",))
    msg = refusal(tmp_path / "tree")
    assert f"{tmp_path / 'tree/train'}: found 1 class folder(s) [only]; expected at least 2" in msg


@pytest.mark.parametrize("split", ["test", "val"])
def test_class_lists_that_differ_are_named(tmp_path, split):
    write_tree(tmp_path / "tree", splits=("train", "test", "val"), n=1)
    (tmp_path / f"tree/{split}/bee").rename(tmp_path / f"tree/{split}/wasp")
    msg = refusal(tmp_path / "tree")
    only = f"(only in train: [bee]; only in {split}: [wasp])"
    assert f"differ between train/ and {split}/ {only}" in msg


def test_empty_class_folder_is_refused(tmp_path):
    write_tree(tmp_path / "tree", n=1)
    (tmp_path / "tree/test/cat/0.png").unlink()
    msg = refusal(tmp_path / "tree")
    assert f"{tmp_path / 'tree/test/cat'}: class folder has no .png/.jpg images" in msg


def _truncated_jpeg(path: Path) -> None:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(path, "JPEG")
    path.write_bytes(path.read_bytes()[:300])


@pytest.mark.parametrize(
    "name, damage",
    [
        ("t.jpg", _truncated_jpeg),
        ("fake.png", lambda p: p.write_bytes(b"this is text, not a PNG\n" * 10)),
        ("empty.jpeg", lambda p: p.write_bytes(b"")),
    ],
)
def test_undecodable_file_is_one_error_naming_it(tmp_path, name, damage):
    write_tree(tmp_path / "tree", n=1)
    bad = tmp_path / "tree/train/bee" / name
    damage(bad)
    msg = refusal(tmp_path / "tree")
    assert re.match(f"{re.escape(str(bad))}: unreadable image \\(.+\\)$", msg)
    assert cache_files(tmp_path) == []


@pytest.mark.parametrize("limit", [100, 1000])  # 1600 pixels: over 2x the limit, and over 1x
def test_decompression_bomb_is_refused_by_name(tmp_path, monkeypatch, limit):
    write_tree(tmp_path / "tree", n=1)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    msg = refusal(tmp_path / "tree")
    first = tmp_path / "tree/train/ant/0.png"
    assert msg.startswith(f"{first}: unreadable image (") and "decompression bomb" in msg


def test_png_header_claiming_a_huge_size_is_refused(tmp_path):
    write_tree(tmp_path / "tree", n=1)
    bomb = tmp_path / "tree/test/ant/bomb.png"
    size = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)  # 10 G pixels, 8-bit gray
    chunks = [(b"IHDR", size), (b"IDAT", zlib.compress(b"\0" * 100)), (b"IEND", b"")]
    raw = b"".join(
        struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d)) for t, d in chunks
    )
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n" + raw)
    msg = refusal(tmp_path / "tree")
    assert msg.startswith(f"{bomb}: unreadable image (") and "decompression bomb" in msg


def test_names_that_are_not_utf8_load_and_print_escaped(tmp_path):
    write_tree(tmp_path / "tree", n=1)
    folder = os.fsencode(tmp_path / "tree/train/ant")
    Image.fromarray(np.full((40, 40, 3), 5, np.uint8)).save(os.path.join(folder, b"\xff.png"))
    d = load(tmp_path / "tree")
    assert d.train_y.bincount().tolist() == [2, 1, 1] and (d.train_x[1] == 5).all()
    with open(os.path.join(folder, b"caf\xe9.png"), "wb") as f:
        f.write(b"not an image")
    msg = refusal(tmp_path / "tree")
    assert f"{tmp_path / 'tree/train/ant'}/caf\\xe9.png: unreadable image" in msg
    assert msg.encode("utf-8") and json.loads(json.dumps({"e": msg}, ensure_ascii=False))


def test_too_big_for_memory_is_refused_before_decoding(tmp_path, monkeypatch):
    write_tree(tmp_path / "tree")
    monkeypatch.setattr(memory, "available_memory", lambda: 2**20)
    decoded = []
    real = decode.Decoder.files
    monkeypatch.setattr(decode.Decoder, "files", lambda s, p: decoded.append(p) or real(s, p))
    msg = refusal(tmp_path / "tree", image_size=1000)  # 12 x 3 x 1000 x 1000 = 0.03 GiB
    assert "12 images of 3x1000x1000 need about 0.03 GiB" in msg
    assert "only 0.00 GiB of memory is available" in msg
    assert decoded == [] and cache_files(tmp_path) == []
    monkeypatch.setattr(memory, "available_memory", lambda: 2**30)
    assert load(tmp_path / "tree", image_size=1000).image_shape == (3, 1000, 1000)


def test_available_memory_reads_the_kernel():
    got = memory.available_memory()
    assert got is None or 2**20 < got < 2**50


def test_cache_notes_are_covered_by_the_checksum(tmp_path):
    path = tmp_path / "c.npys"
    arrays = [np.zeros((2, 1, 4, 4), np.uint8), np.arange(2)]
    cache_mod.write_cache(path, arrays, ["grayscale images kept as 1 channel"])
    got, notes = cache_mod.read_cache(path, 2)
    assert notes == ["grayscale images kept as 1 channel"] and np.array_equal(got[1], arrays[1])
    raw = path.read_bytes().replace(b"k\x00\x00\x00e\x00\x00\x00p", b"x\x00\x00\x00e\x00\x00\x00p")
    path.write_bytes(raw)
    with pytest.raises(DataError, match="c.npys: corrupt or truncated cache file.*checksum"):
        cache_mod.read_cache(path, 2)


def test_broken_link_named_like_an_image_is_refused_by_folder(tmp_path):
    write_tree(tmp_path / "tree", n=1)
    (tmp_path / "tree/train/bee/gone.png").symlink_to(tmp_path / "nowhere.png")
    msg = refusal(tmp_path / "tree")
    assert msg.startswith(f"{tmp_path / 'tree/train/bee'}: cannot list (") and "gone.png" in msg
