"""argparse types and a parser that reject bad input in one line, before any work starts."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument as one line and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        raise SystemExit(2)


# ---------- argument types: reject bad numbers before any work starts ----------


def sparsity(text: str) -> float:
    v = _float(text)
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"sparsity {text!r} is outside [0, 1]")
    return v


def sparsity_list(text: str) -> list[float]:
    parts = [p for p in text.replace(" ", "").split(",") if p]
    if not parts:
        raise argparse.ArgumentTypeError("expected a comma-separated list like 0.4,0.5,0.6")
    return [sparsity(p) for p in parts]


def positive(text: str) -> float:
    v = _float(text)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
    return v


def count(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 0")
    return v


def at_least_one(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 1")
    return v


def _float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return v


def cap_item(text: str) -> tuple[str, float]:
    """'backbone.conv3=0.5' -> (layer, cap)."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(
            f"expected LAYER=CAP like backbone.conv0=0.5, got {text!r}"
        )
    return name.strip(), sparsity(value)


def existing_file(text: str) -> str:
    p = Path(text)
    if text.startswith(("http://", "https://", "file://")):
        return text
    if not p.exists():
        raise argparse.ArgumentTypeError(f"{text} does not exist")
    if not p.is_file():
        raise argparse.ArgumentTypeError(f"{text} is not a file")
    return text
