"""The atomic writer under hostile and careless use: modes, long names, full disks, leftovers."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from prunelab import fileio
from prunelab.errors import PrunelabError
from prunelab.fileio import atomic_path, cache_dir, ensure_writable, file_digest, write_json


@pytest.fixture
def umask() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


def _temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_mode_follows_umask(tmp_path: Path, umask: None, mask: int, mode: int) -> None:
    os.umask(mask)
    write_json(tmp_path / "a.json", {"x": 1})
    with atomic_path(tmp_path / "b.pt") as tmp:
        torch.save({"w": torch.zeros(2)}, tmp)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == mode
    assert (tmp_path / "b.pt").stat().st_mode & 0o777 == mode


def test_replaced_target_gets_umask_mode_not_old_mode(tmp_path: Path, umask: None) -> None:
    p = tmp_path / "a.json"
    p.write_text("old")
    p.chmod(0o600)
    write_json(p, [1])
    assert p.stat().st_mode & 0o777 == 0o644 and json.loads(p.read_text()) == [1]


def test_longest_legal_name(tmp_path: Path) -> None:
    name = "n" * 250 + ".json"
    assert len(name.encode()) == 255
    write_json(tmp_path / name, {"ok": True})
    assert json.loads((tmp_path / name).read_text()) == {"ok": True}
    assert _temps(tmp_path) == []


def test_temp_name_is_short_and_matches_target(tmp_path: Path) -> None:
    target = tmp_path / ("é" * 127)  # 254 bytes
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and len(tmp.name) < 64
        tag = hashlib.sha256(os.fsencode(target.name)).hexdigest()[:8]
        assert tmp.name.startswith(f".plab-{os.getpid()}-{tag}-") and tmp.name.endswith(".tmp")
        tmp.write_bytes(b"x")
    assert target.read_bytes() == b"x"


def _full(tmp: Path) -> None:
    tmp.write_bytes(b"half")
    raise OSError(errno.ENOSPC, "No space left on device")


def _quota(tmp: Path) -> None:
    tmp.write_bytes(b"half")
    raise OSError(errno.EDQUOT, "Disk quota exceeded")


def _torch_full(tmp: Path) -> None:
    tmp.write_bytes(b"half")
    raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")


class _NoSpace:
    f_bavail = 0
    f_frsize = 4096


@pytest.mark.parametrize("fail", [_full, _quota, _torch_full])
def test_disk_full_keeps_previous_file(tmp_path: Path, monkeypatch, fail) -> None:
    monkeypatch.setattr(fileio.os, "statvfs", lambda _: _NoSpace())
    p = tmp_path / "ckpt.pt"
    p.write_bytes(b"previous")
    with pytest.raises(PrunelabError) as info, atomic_path(p) as tmp:
        fail(tmp)
    assert str(info.value) == f"no space left on device writing {p}; the previous {p} is unchanged"
    assert p.read_bytes() == b"previous" and _temps(tmp_path) == []


def test_disk_full_without_previous_file(tmp_path: Path) -> None:
    p = tmp_path / "new.json"
    with (
        pytest.raises(PrunelabError, match="no space left .* was not created"),
        atomic_path(p) as t,
    ):
        _full(t)
    assert not p.exists() and _temps(tmp_path) == []


class _Plenty:
    f_bavail = 1 << 30
    f_frsize = 4096


def test_runtime_error_with_free_space_is_not_disk_full(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(fileio.os, "statvfs", lambda _: _Plenty())
    p = tmp_path / "ckpt.pt"
    with pytest.raises(RuntimeError, match="unexpected pos"), atomic_path(p) as tmp:
        _torch_full(tmp)
    with pytest.raises(OSError) as info, atomic_path(p) as tmp:
        raise OSError(errno.EIO, "I/O error")
    assert info.value.errno == errno.EIO and not p.exists() and _temps(tmp_path) == []


def test_target_is_directory(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    ran = []
    with pytest.raises(PrunelabError) as info, atomic_path(tmp_path / "out"):
        ran.append(1)
    assert str(info.value) == f"{tmp_path / 'out'} is a directory; expected a file path"
    assert ran == [] and _temps(tmp_path) == []


def test_parent_is_file(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    target = tmp_path / "afile" / "sub" / "x.json"
    with pytest.raises(PrunelabError) as info:
        write_json(target, {})
    assert str(info.value) == f"cannot create {target}: {tmp_path / 'afile'} is a file"
    assert (tmp_path / "afile").read_text() == "x"


def test_missing_parents_are_created(tmp_path: Path) -> None:
    write_json(tmp_path / "a" / "b" / "c.json", [2])
    assert json.loads((tmp_path / "a" / "b" / "c.json").read_text()) == [2]


def _leftover(folder: Path, target: str, pid: int) -> Path:
    tag = hashlib.sha256(os.fsencode(target)).hexdigest()[:8]
    p = folder / f".plab-{pid}-{tag}-deadbeef.tmp"
    p.write_bytes(b"partial")
    return p


def test_leftovers_of_dead_writers_are_removed(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        gone = _leftover(tmp_path, "m.pt", dead.pid)
        mine = _leftover(tmp_path, "m.pt", os.getpid())
        other = _leftover(tmp_path, "m.pt", live.pid)
        foreign = _leftover(tmp_path, "other.pt", dead.pid)  # another target's: not ours
        write_json(tmp_path / "m.pt", {})
        assert not gone.exists()
        assert mine.exists() and other.exists() and foreign.exists()
    finally:
        live.kill()
        live.wait()


def test_failed_block_leaves_nothing_and_keeps_previous(tmp_path: Path) -> None:
    p = tmp_path / "r.json"
    write_json(p, [1])
    with pytest.raises(KeyboardInterrupt), atomic_path(p) as tmp:
        tmp.write_text("half")
        raise KeyboardInterrupt
    assert json.loads(p.read_text()) == [1] and _temps(tmp_path) == []


def test_helpers_unchanged(tmp_path: Path, monkeypatch) -> None:
    p = tmp_path / "f.bin"
    p.write_bytes(b"abc")
    assert file_digest(p) == hashlib.sha256(b"abc").hexdigest()
    assert file_digest(p, "md5") == hashlib.md5(b"abc").hexdigest()
    monkeypatch.setenv("PRUNELAB_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c" and cache_dir(tmp_path / "o") == tmp_path / "o"
    monkeypatch.delenv("PRUNELAB_CACHE")
    assert cache_dir() == Path.home() / ".cache" / "prunelab"
    ensure_writable(tmp_path / "new" / "out.json")
    with pytest.raises(PrunelabError, match="is a file, expected a folder"):
        ensure_writable(p / "out.json")
