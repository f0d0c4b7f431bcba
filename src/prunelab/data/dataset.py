"""The loaded data set (uint8 images, int64 labels, provenance) and the helpers every loader
shares: the content digest and printable file names."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class ImageData:
    """uint8 N x C x H x W images and int64 labels per split, their class names and origin.

    `val_x`/`val_y` are None unless the source has its own validation split; `notes` says in
    plain words what loading changed (channels, size) so a run can record it.
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]
    source: str
    val_x: torch.Tensor | None = None
    val_y: torch.Tensor | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W): what a model's first layer and the augmentation must fit."""
        c, h, w = self.train_x.shape[1:]
        return int(c), int(h), int(w)

    def fingerprint(self) -> str:
        """Short sha256 of the arrays, so a run can record exactly which data it used."""
        return digest([t.detach().cpu().numpy() for t in self.arrays()])[:16]

    def arrays(self) -> list[torch.Tensor]:
        """train x/y, test x/y, then val x/y when present: the order of cache and digest."""
        extra = [] if self.val_x is None else [self.val_x, self.val_y]
        return [self.train_x, self.train_y, self.test_x, self.test_y, *extra]


CIFAR10 = ImageData  # the old name: CIFAR-10 is one ImageData among others


def digest(arrays: list[np.ndarray]) -> str:
    """sha256 over dtype, shape and bytes of each array (the cache checksum and fingerprint)."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.data)
    return h.hexdigest()


def show(path: str | bytes | os.PathLike) -> str:
    """A file name safe to print or put in JSON: bytes that are not UTF-8 appear as \\xNN."""
    name = os.fspath(path)
    if isinstance(name, str):
        try:
            name = name.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:  # a lone surrogate that did not come from os.fsdecode
            name = name.encode("utf-8", "backslashreplace")
    return name.decode("utf-8", "backslashreplace")


def one_line(e: BaseException) -> str:
    """An exception's message on one line (the CLI prints exactly one)."""
    return " ".join(show(str(e)).split()) or type(e).__name__
