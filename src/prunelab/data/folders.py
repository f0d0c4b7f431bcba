"""Image-folder trees: train/<class>/*, test/<class>/* and optionally val/<class>/*, PNG or
JPEG. Listed in name order, decoded once, and the decoded copy kept in the cache."""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .cache import CACHE_MAGIC, read_cache, replace_older_copy, write_cache
from .cifar import CLASSES, default_data_root
from .dataset import ImageData, one_line, show
from .decode import Decoder
from .memory import check_memory

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SPLITS = ("train", "test", "val")


@dataclass
class Tree:
    """A listed tree: class names, files and labels per split, and a key over all of it."""

    root: Path
    classes: list[str]
    files: dict[str, tuple[list[str], list[int]]]
    key: str


def is_tree(root: Path) -> bool:
    return (root / "train").is_dir() and (root / "test").is_dir()


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")  # names that are not UTF-8 hash as their bytes


def _class_folders(folder: Path) -> list[str]:
    try:
        return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as e:
        raise DataError(f"{show(folder)}: cannot list ({one_line(e)})") from e


def _images_in(folder: Path) -> list[tuple[str, str, int, int]]:
    """(name, path, size, mtime_ns) of the images in one class folder, sorted by name."""
    try:
        with os.scandir(folder) as it:
            entries = sorted((e for e in it if _is_image_name(e.name)), key=lambda e: e.name)
        return [(e.name, e.path, e.stat().st_size, e.stat().st_mtime_ns) for e in entries]
    except OSError as e:  # unreadable folder, or a broken link named like an image
        raise DataError(f"{show(folder)}: cannot list ({one_line(e)})") from e


def _is_image_name(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_SUFFIXES)


def _names(names: list[str] | set[str]) -> str:
    return "[" + ", ".join(show(n) for n in sorted(names)) + "]"


def scan_tree(
    root: Path, image_size: int | None, channels: int | None, expect: list[str] | None = None
) -> Tree:
    """List the tree (no decoding); refuse class lists that differ, one class, empty folders."""
    splits = [s for s in SPLITS if (root / s).is_dir()]
    found = {s: _class_folders(root / s) for s in splits}
    raw = found["train"]
    if expect is not None and raw != sorted(expect):
        where = show(root / "train")
        raise DataError(f"{where}: found class folders {_names(raw)}, expected {expect}")
    for split in splits[1:]:
        if found[split] != raw:
            only_train, only_other = set(raw) - set(found[split]), set(found[split]) - set(raw)
            raise DataError(
                f"{show(root)}: class folders differ between train/ and {split}/ (only in train: "
                f"{_names(only_train)}; only in {split}: {_names(only_other)})"
            )
    if len(raw) < 2:
        raise DataError(
            f"{show(root / 'train')}: found {len(raw)} class folder(s) {_names(raw)}; "
            "expected at least 2 (train/<class>/*.png|jpg)"
        )
    h = hashlib.sha256(_encode(f"{CACHE_MAGIC}\n{root.resolve()}\n"))
    files = {}
    for split in splits:
        paths, labels = [], []
        for label, cls in enumerate(raw):
            images = _images_in(root / split / cls)
            if not images:
                raise DataError(f"{show(root / split / cls)}: class folder has no .png/.jpg images")
            for name, path, size, mtime in images:
                h.update(_encode(f"{split}/{cls}/{name}\t{size}\t{mtime}\n"))
                paths.append(path)
                labels.append(label)
        files[split] = (paths, labels)
    for name, value in (("image_size", image_size), ("channels", channels)):
        if value is not None:  # so the default settings keep the key they always had
            h.update(f"{name}={value}\n".encode())
    return Tree(root, [show(c) for c in raw], files, h.hexdigest())


def decode_tree(
    tree: Tree, image_size: int | None, channels: int | None
) -> tuple[list[np.ndarray], list[str]]:
    """Decode every split (after checking the result fits in memory): [x, y, x, y, ...], notes."""
    if image_size:
        h = w = image_size
    else:  # the first image sets the size; the decoder refuses any other
        h, w = Decoder().files(tree.files["train"][0][:1]).shape[-2:]
    n = sum(len(paths) for paths, _ in tree.files.values())
    check_memory(n, (1 if channels == 1 else 3, h, w), show(tree.root))
    decoder = Decoder(image_size, channels)
    xs = [decoder.files(paths) for paths, _ in tree.files.values()]
    xs, notes = decoder.finish(xs)
    ys = [np.asarray(labels, dtype=np.int64) for _, labels in tree.files.values()]
    return [a for pair in zip(xs, ys, strict=True) for a in pair], notes


def load_tree(
    root: Path,
    cache: str | os.PathLike | None,
    image_size: int | None = None,
    channels: int | None = None,
    expect: list[str] | None = None,
) -> ImageData:
    """Load a tree from its decoded copy in the cache, or decode it and write that copy."""
    tree = scan_tree(root, image_size, channels, expect)
    prefix = "cifar10-images" if tree.classes == CLASSES else "images"
    path = default_data_root(cache) / f"{prefix}-{tree.key[:20]}.npys"
    if path.exists():
        arrays, notes = read_cache(path, 2 * len(tree.files))
        source = f"{show(root)} (image folders, decoded copy {show(path)})"
    else:
        arrays, notes = decode_tree(tree, image_size, channels)
        source = f"{show(root)} (image folders)"
        try:
            write_cache(path, arrays, notes)
            slot = f"{root.resolve()} image_size={image_size} channels={channels}"
            replace_older_copy(path, slot)
        except OSError as e:
            warnings.warn(f"could not cache decoded images in {show(path)}: {e}", stacklevel=3)
    t = [torch.from_numpy(a) for a in arrays]
    val = t[4:6] if len(t) == 6 else [None, None]
    return ImageData(*t[:4], tree.classes, source, *val, notes=notes)
