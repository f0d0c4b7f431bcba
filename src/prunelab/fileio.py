"""Atomic file writes: a crash or Ctrl-C never leaves a half-written output in place.

The temporary file is `.plab-<pid>-<hash of target name>-<random>.tmp` beside the target: short,
so any legal target name fits; matched to its target by the hash, so the next write of that
target removes what a killed writer left behind (only when that writer's pid is gone).
The written file gets the mode a plain `open(path, "w")` of a new file would get (0644 under
umask 022): the temporary file is created with 0666 and the kernel applies the umask (or a
folder's default ACL) itself, so the umask is never read or swapped, which would race with
other threads. A replaced target does not keep its old mode: it is a new file, like any output.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import PrunelabError

_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
# How torch.save reports a failed write: it wraps the errno in a RuntimeError.
_WRITE_FAILED = ("unexpected pos", "write failed", "streamwriter failed", "iostream error")
_LOW_SPACE = 4 << 20  # bytes; below this a failed write is taken as a full disk


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it into place only if the block succeeds."""
    path = Path(path)
    _check_target(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tag = hashlib.sha256(os.fsencode(path.name)).hexdigest()[:8]
    _remove_dead_leftovers(path.parent, tag)
    tmp = _create_temp(path.parent, tag)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        if e.errno in _FULL_ERRNOS:
            raise _disk_full(path) from e
        raise
    except RuntimeError as e:
        if any(s in str(e).lower() for s in _WRITE_FAILED) and _low_space(path.parent):
            raise _disk_full(path) from e
        raise
    finally:
        tmp.unlink(missing_ok=True)


def _check_target(path: Path) -> None:
    """Refuse a folder as target, or a file where a parent folder must be, before any work."""
    if path.is_dir():
        raise PrunelabError(f"{path} is a directory; expected a file path")
    probe = path.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise PrunelabError(f"cannot create {path}: {probe} is a file")


def _create_temp(folder: Path, tag: str) -> Path:
    """Create a new empty temporary file (0666 less the umask) and return its path."""
    while True:
        tmp = folder / f".plab-{os.getpid()}-{tag}-{secrets.token_hex(4)}.tmp"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue


def _remove_dead_leftovers(folder: Path, tag: str) -> None:
    """Delete temporary files of this target left by writers that no longer run."""
    if os.name != "posix":  # os.kill(pid, 0) would terminate the process on Windows
        return
    for leftover in folder.glob(f".plab-*-{tag}-*.tmp"):
        pid = leftover.name.split("-")[1]
        if pid.isdigit() and int(pid) > 0 and not _pid_alive(int(pid)):
            leftover.unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def _low_space(folder: Path) -> bool:
    try:
        st = os.statvfs(folder)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < _LOW_SPACE


def _disk_full(path: Path) -> PrunelabError:
    kept = f"the previous {path} is unchanged" if path.exists() else f"{path} was not created"
    return PrunelabError(f"no space left on device writing {path}; {kept}")


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_png(fig: Any, path: str | os.PathLike, dpi: int = 120) -> None:
    """Write a matplotlib Figure as PNG atomically (format given: the temporary name ends in
    .tmp, which matplotlib could not guess a format from)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)


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
    target = path if not path.suffix else path.parent
    probe = target
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise PrunelabError(f"output {path}: {probe} is a file, expected a folder")
    if not os.access(probe, os.W_OK):
        raise PrunelabError(f"output {path}: {probe} is not writable")
