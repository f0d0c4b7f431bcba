"""Decode images (files, or arrays from the python archives) into one uint8 N x C x H x W
layout: one size and one channel count; any failure becomes one DataError naming the file."""

from __future__ import annotations

import struct
import warnings
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

from ..errors import DataError
from .dataset import one_line, show

GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}
RESAMPLE = Image.Resampling.BICUBIC
_DECODE_ERRORS = (
    OSError,  # includes truncated files and "cannot identify image file"
    ValueError,
    SyntaxError,
    EOFError,
    struct.error,
    Image.DecompressionBombError,  # not an OSError
    Image.DecompressionBombWarning,  # raised as an error below
)


class Decoder:
    """Decodes image after image, checking that all share one size (unless resized).

    With `channels` None the channel count is settled by `finish`: 1 when every image was
    grayscale, else 3 (grayscale replicated, as PIL's L -> RGB does).
    """

    def __init__(self, image_size: int | None = None, channels: int | None = None):
        self.image_size, self.channels = image_size, channels
        self.first: tuple[str, tuple[int, int]] | None = None
        self.n_gray = self.n = 0

    def files(self, paths: Sequence[str]) -> np.ndarray:
        """Decode image files, in order."""
        return self._decode(paths, Image.open, show)

    def arrays(self, x: np.ndarray, where: str) -> np.ndarray:
        """Re-decode N x C x H x W uint8 arrays so that image_size / channels apply to them."""

        def open_one(i: int) -> Image.Image:
            return Image.fromarray(x[i, 0] if x.shape[1] == 1 else x[i].transpose(1, 2, 0))

        return self._decode(range(len(x)), open_one, lambda i: f"{where} image {i}")

    def _decode(self, items: Sequence, open_image: Callable, name: Callable) -> np.ndarray:
        depth, out = 1 if self.channels == 1 else 3, None
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            for i, item in enumerate(items):
                try:
                    with open_image(item) as im:
                        pixels = self._pixels(im, name(item))
                except _DECODE_ERRORS as e:
                    raise DataError(f"{name(item)}: unreadable image ({one_line(e)})") from e
                if out is None:
                    out = np.empty((len(items), depth, *pixels.shape[-2:]), np.uint8)
                out[i] = pixels
        return out if out is not None else np.empty((0, depth, 0, 0), np.uint8)

    def _pixels(self, im: Image.Image, name: str) -> np.ndarray:
        if self.first is None:
            self.first = (name, im.size)
        elif self.image_size is None and im.size != self.first[1]:
            (w, h), (w0, h0) = im.size, self.first[1]
            raise DataError(
                f"{name}: image is {w}x{h} but {self.first[0]} is {w0}x{h0}; images must share "
                "one size (pass --image-size N to resize all to NxN)"
            )
        gray = im.mode in GRAY_MODES
        self.n += 1
        self.n_gray += gray
        if im.mode.startswith("I"):  # 16-bit grayscale: keep the top 8 bits (PIL would clip)
            im = Image.fromarray((np.clip(np.asarray(im), 0, 65535) >> 8).astype(np.uint8))
        im = im.convert("L" if gray or self.channels == 1 else "RGB")
        if self.image_size:
            im = im.resize((self.image_size, self.image_size), RESAMPLE)
        a = np.asarray(im)
        return a if a.ndim == 2 else a.transpose(2, 0, 1)

    def finish(self, xs: list[np.ndarray]) -> tuple[list[np.ndarray], list[str]]:
        """Settle the channel count over everything decoded; notes say what was changed."""
        notes = []
        if self.channels is None and self.n and self.n_gray == self.n:
            xs = [_first_channel(x) for x in xs]
            notes.append("grayscale images kept as 1 channel")
        elif self.channels is None and self.n_gray:
            notes.append(
                f"mixed grayscale and colour images: {self.n_gray} grayscale of {self.n} "
                "converted to RGB"
            )
        elif self.channels == 3 and self.n_gray:
            notes.append(f"{self.n_gray} grayscale images converted to RGB (channels=3)")
        elif self.channels == 1 and self.n_gray < self.n:
            n_colour = self.n - self.n_gray
            notes.append(f"{n_colour} colour images converted to grayscale (channels=1)")
        if self.image_size:
            s = self.image_size
            notes.append(f"images resized to {s}x{s} (PIL bicubic)")
        return xs, notes


def _first_channel(x: np.ndarray) -> np.ndarray:
    """N x 3 x H x W -> N x 1 x H x W within the same buffer, so a big set is never held twice."""
    if not x.flags.owndata:
        return np.ascontiguousarray(x[:, :1])
    n, _, h, w = x.shape
    flat, hw = x.reshape(-1), h * w
    for i in range(1, n):  # image i's channel 0 moves down to slot i; later images stay intact
        flat[i * hw : (i + 1) * hw] = flat[3 * i * hw : 3 * i * hw + hw]
    del flat
    x.resize((n, 1, h, w), refcheck=False)
    return x
