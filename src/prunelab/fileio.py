"""Atomic file writes: a crash or Ctrl-C never leaves a half-written output in place."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def file_digest(path: str | os.PathLike, algo: str = "sha256") -> str:
    """Hex digest of a file, read in chunks so large archives do not fill memory."""
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """Where downloads and decoded data go: --cache-dir, $PRUNELAB_CACHE, or ~/.cache/prunelab."""
    if override:
        return Path(override)
    env = os.environ.get("PRUNELAB_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "prunelab"


def ensure_writable(path: Path) -> None:
    """Fail early, naming the path, if an output file or folder could not be created."""
    from .errors import PrunelabError

    target = path if not path.suffix else path.parent
    probe = target
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise PrunelabError(f"output {path}: {probe} is a file, expected a folder")
    if not os.access(probe, os.W_OK):
        raise PrunelabError(f"output {path}: {probe} is not writable")
