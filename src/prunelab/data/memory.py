"""Refuse to decode a data set that would not fit in memory, before decoding starts."""

from __future__ import annotations

import os

from ..errors import DataError

SHARE = 0.8  # of the available memory: the rest is for the model, the batches and the OS


def available_memory() -> int | None:
    """Bytes that can be allocated without swapping (MemAvailable), None when unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def check_memory(n: int, shape: tuple[int, int, int], where: str) -> None:
    """Raise when `n` uint8 images of `shape` (C, H, W) plus int64 labels would not fit."""
    need = n * (shape[0] * shape[1] * shape[2] + 8)
    available = available_memory()
    if available is not None and need > SHARE * available:
        c, h, w = shape
        raise DataError(
            f"{where}: {n} images of {c}x{h}x{w} need about {need / 2**30:.2f} GiB decoded, "
            f"but only {available / 2**30:.2f} GiB of memory is available; "
            "pass a smaller --image-size or use fewer images"
        )
