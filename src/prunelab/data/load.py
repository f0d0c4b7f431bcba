"""Pick the loader for a path: official python archive/folder, image-folder tree, or (no path)
the CIFAR-10 download in the cache."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

from ..errors import DataError
from .cifar import ARCHIVE, BATCH_DIR, CLASSES, find_official, load_archive, load_from_cache_dir
from .dataset import ImageData, show
from .decode import Decoder
from .folders import is_tree, load_tree
from .memory import check_memory

LAYOUTS = (
    f"expected the official python version ({ARCHIVE}, or {BATCH_DIR}/ holding "
    "data_batch_1..5, test_batch, batches.meta; or cifar-100-python.tar.gz, or "
    "cifar-100-python/ holding train, test, meta) or an image-folder tree "
    "(train/<class>/*.png|jpg and test/<class>/*.png|jpg, optionally val/<class>/)"
)


def load_images(
    root: str | os.PathLike | None,
    cache: str | os.PathLike | None = None,
    image_size: int | None = None,
    channels: int | None = None,
    download: bool = True,
) -> ImageData:
    """Load any supported data set; `image_size` resizes to NxN, `channels` forces 1 or 3.

    With `root` None, CIFAR-10 from `default_data_root(cache)`, downloaded when absent.
    """
    return _load(root, cache, image_size, channels, download, None)


def load_cifar10(
    root: str | os.PathLike | None, cache: str | os.PathLike | None = None, download: bool = True
) -> ImageData:
    """CIFAR-10 from `root` (any layout) or the cache: its ten classes as 3 x 32 x 32 images."""
    data = _load(root, cache, None, None, download, CLASSES)
    where = show(root) if root is not None else data.source
    if data.classes != CLASSES:
        raise DataError(f"{where}: classes {data.classes}, expected CIFAR-10's {CLASSES}")
    if data.image_shape != (3, 32, 32):
        c, h, w = data.image_shape
        raise DataError(f"{where}: images are {c}x{h}x{w}, expected 3x32x32 for CIFAR-10")
    return data


def _check_options(image_size: int | None, channels: int | None) -> None:
    if image_size is not None and (
        isinstance(image_size, bool) or not isinstance(image_size, int) or image_size <= 0
    ):
        raise DataError(f"image_size={image_size!r}: expected a whole number of pixels > 0")
    if channels is not None and channels not in (1, 3):
        raise DataError(f"channels={channels!r}: expected 1 (grayscale) or 3 (RGB)")


def _load(
    root: str | os.PathLike | None,
    cache: str | os.PathLike | None,
    image_size: int | None,
    channels: int | None,
    download: bool,
    expect: list[str] | None,
) -> ImageData:
    _check_options(image_size, channels)
    if root is None:
        return _convert(load_from_cache_dir(cache, download), image_size, channels)
    root = Path(root)
    if not root.exists():
        raise DataError(f"{show(root)}: does not exist; {LAYOUTS}")
    if root.is_file() and root.name.endswith((".tar.gz", ".tgz")):
        return _convert(load_archive(root), image_size, channels)
    if not root.is_dir():
        raise DataError(f"{show(root)}: not a folder; {LAYOUTS}")
    data = find_official(root)
    if data is not None:
        return _convert(data, image_size, channels)
    if is_tree(root):
        return load_tree(root, cache, image_size, channels, expect)
    raise DataError(f"{show(root)}: no data set found; {LAYOUTS}")


def _convert(data: ImageData, image_size: int | None, channels: int | None) -> ImageData:
    """Apply image_size / channels to already decoded arrays (the python versions)."""
    if image_size is None and channels is None:
        return data
    decoder = Decoder(image_size, channels)
    n = len(data.train_x) + len(data.test_x)
    _, h, w = data.image_shape
    check_memory(n, (1 if channels == 1 else 3, image_size or h, image_size or w), data.source)
    xs = [decoder.arrays(x.numpy(), data.source) for x in (data.train_x, data.test_x)]
    xs, notes = decoder.finish(xs)
    return dataclasses.replace(
        data,
        train_x=torch.from_numpy(xs[0]),
        test_x=torch.from_numpy(xs[1]),
        notes=[*data.notes, *notes],
    )
