"""argparse types and a parser that reject bad input in one line, before any work starts."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument as one line and exit status 2.

    Abbreviations are off: with them `finetune --teacher dense.pth` became --teacher-logits
    and failed with a message about a flag the user never typed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        raise SystemExit(2)


# ---------- argument types: reject bad numbers before any work starts ----------


def sparsity(text: str) -> float:
    v = _float(text)
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"sparsity {text!r} is outside [0, 1]")
    return v


def weight(text: str) -> float:
    """A mixing weight in [0, 1]."""
    v = _float(text)
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"weight {text!r} is outside [0, 1]")
    return v


def _list_of(text: str, item: Any, example: str) -> list[Any]:
    """'a,b,c' -> [item(a), item(b), item(c)]; spaces ignored, empty refused."""
    parts = [p for p in text.replace(" ", "").split(",") if p]
    if not parts:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list like {example}")
    return [item(p) for p in parts]


def sparsity_list(text: str) -> list[float]:
    return _list_of(text, sparsity, "0.4,0.5,0.6")


def positive(text: str) -> float:
    v = _float(text)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
    return v


def _int(text: str, lowest: int) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < lowest:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= {lowest}")
    return v


def count(text: str) -> int:
    return _int(text, 0)


def at_least_one(text: str) -> int:
    return _int(text, 1)


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


def seed(text: str) -> int:
    """A seed torch accepts: an integer in [0, 2**63 - 1]."""
    v = count(text)
    if v > 2**63 - 1:
        raise argparse.ArgumentTypeError(f"seed {text} is outside [0, 2**63 - 1]")
    return v


def points(text: str) -> float:
    """Accuracy points lost, e.g. 2 = two percentage points (>= 0)."""
    v = _float(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 0 (accuracy points)")
    return v


def device(text: str) -> str:
    """auto, cpu, cuda or cuda:N: refused here, before torch is imported, otherwise."""
    if text in ("auto", "cpu", "cuda") or (text.startswith("cuda:") and text[5:].isdigit()):
        return text
    raise argparse.ArgumentTypeError(
        f"device {text!r} is not supported (expected auto, cpu, cuda or cuda:N)"
    )


def model_arg(text: str) -> str:
    if "=" not in text or not text.partition("=")[0].strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE like width=0.5, got {text!r}")
    return text


def mean_std(text: str) -> dict[str, list[float]] | None:
    """'none', or 'MEAN,STD' for every channel, or 'm1,m2,m3;s1,s2,s3' per channel."""
    if text.strip().lower() == "none":
        return None
    if ";" in text:
        means, stds = text.split(";", 1)
        mean = [_float(v) for v in means.split(",") if v.strip()]
        std = [_float(v) for v in stds.split(",") if v.strip()]
    else:
        parts = [_float(v) for v in text.split(",") if v.strip()]
        if len(parts) != 2:
            raise argparse.ArgumentTypeError(
                f"expected 'none', 'MEAN,STD' or 'm1,m2,m3;s1,s2,s3', got {text!r}"
            )
        mean, std = [parts[0]], [parts[1]]
    if not mean or len(mean) != len(std) or any(s <= 0 for s in std):
        raise argparse.ArgumentTypeError(
            f"normalisation {text!r}: as many means as stds, and every std > 0"
        )
    return {"mean": mean, "std": std}


def batch_sizes(text: str) -> list[int]:
    """'1,64' -> [1, 64]; each an integer >= 1."""
    return _list_of(text, at_least_one, "1,64")


def ratio(text: str) -> float:
    """A fraction of channels to remove: [0, 1) (removing all would empty a layer)."""
    v = _float(text)
    if not 0.0 <= v < 1.0:
        raise argparse.ArgumentTypeError(f"ratio {text!r} is outside [0, 1)")
    return v


def energy_share(text: str) -> float:
    """A share of a layer's weights' energy: (0, 1)."""
    v = _float(text)
    if not 0.0 < v < 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is outside (0, 1) (a share of the energy)")
    return v


def ratio_list(text: str) -> list[float]:
    return _list_of(text, ratio, "0.25,0.5")


def ratio_open(text: str) -> float:
    """A fraction of the dense cost to reach: (0, 1)."""
    v = _float(text)
    if not 0.0 < v < 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is outside (0, 1) (a fraction of dense)")
    return v
