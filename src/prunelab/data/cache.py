"""The decoded copy of an image tree: .npy records in one file, checked by sha256 on load."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..fileio import atomic_path, write_json
from .dataset import digest, one_line, show

CACHE_MAGIC = "prunelab-cifar10-images-v1"  # also part of every cache key: keep it as it is
INDEX = "decoded-copies.json"  # {folder and options: the name of its current decoded copy}


def _checksum(arrays: list[np.ndarray], notes: list[str]) -> str:
    extra = [np.frombuffer("\n".join(notes).encode(), np.uint8)] if notes else []
    return digest([*arrays, *extra])


def write_cache(path: Path, arrays: list[np.ndarray], notes: list[str]) -> None:
    """A header [magic, checksum, *notes], then one .npy record per array (no zip overhead)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, np.array([CACHE_MAGIC, _checksum(arrays, notes), *notes]))
        for a in arrays:
            np.save(f, a)


def read_cache(path: Path, count: int) -> tuple[list[np.ndarray], list[str]]:
    """Read and verify `count` arrays and the notes; a damaged file is refused, never used."""
    bad = f"{show(path)}: corrupt or truncated cache file; delete it and load again"
    try:
        with open(path, "rb") as f:
            head = np.load(f, allow_pickle=False)
            arrays = [np.load(f, allow_pickle=False) for _ in range(count)]
            trailing = f.read(1)
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"{bad} ({one_line(e)})") from e
    if head.dtype.kind != "U" or head.ndim != 1 or len(head) < 2 or head[0] != CACHE_MAGIC:
        raise DataError(f"{bad} (not a prunelab cache header)")
    notes = [str(n) for n in head[2:]]
    if trailing or _checksum(arrays, notes) != head[1]:
        raise DataError(f"{bad} (checksum mismatch)")
    return arrays, notes


def replace_older_copy(path: Path, slot: str) -> None:
    """Record `path` as the decoded copy for `slot` (a folder with its decoding options) and
    delete the copy it replaces. A folder whose files changed, or were only touched, gets a
    new key (the key covers sizes and mtimes), and its old copy would never be read again:
    without this the cache grows by a full copy (185 MB for CIFAR-10) per change. The index
    holds bare file names; anything else in it is ignored, never deleted."""
    index_path = path.parent / INDEX
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError):
        index = {}
    if not isinstance(index, dict):
        index = {}
    old = index.get(slot)
    index[slot] = path.name
    try:
        write_json(index_path, index)
    except OSError:
        return  # a read-only cache keeps its copies; nothing is lost
    if isinstance(old, str) and old != path.name and old == Path(old).name:
        if old.endswith(".npys"):
            (path.parent / old).unlink(missing_ok=True)
