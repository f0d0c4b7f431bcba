"""The checks every recipe table goes through: known keys only (with a 'did you mean'),
one type per key, distinct sparsities with distinct step tags, and training tables.

Every error is one RecipeError line naming the file and the full key, raised before any
work starts.
"""

from __future__ import annotations

import difflib
import math
import sys
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, fields
from typing import Any

from ..errors import PrunelabError, RecipeError
from ..train import OPTIMIZERS, SCHEDULES, TrainConfig

SEED_MAX = 2**63 - 1  # torch.manual_seed takes a 64-bit seed
FLOAT_MAX = int(sys.float_info.max)


def fail(file: str, key: str, expected: str, got: Any) -> RecipeError:
    """The one-line error for a key whose value is not what it should be."""
    return RecipeError(f"{file}: key '{key}' must be {expected} (got {got!r})")


def expect(cond: bool, file: str, key: str, expected: str, got: Any) -> None:
    if not cond:
        raise fail(file, key, expected, got)


def is_num(v: Any) -> bool:
    """A finite int or float; booleans are not numbers."""
    if isinstance(v, float):
        return math.isfinite(v)
    # TOML integers are unbounded: one past float range (10**400) is no usable number
    return isinstance(v, int) and not isinstance(v, bool) and abs(v) <= FLOAT_MAX


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def joined(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def check_keys(table: dict[str, Any], allowed: Collection[str], file: str, where: str) -> None:
    """Refuse the first unknown key, suggesting the closest valid one."""
    for key in table:
        if key in allowed:
            continue
        full = joined(where, key)
        close = difflib.get_close_matches(key, sorted(allowed), n=1)
        hint = (
            f"did you mean '{joined(where, close[0])}'?"
            if close
            else f"expected one of {', '.join(sorted(allowed))}"
        )
        raise RecipeError(f"{file}: unknown key '{full}'; {hint}")


def table(raw: Any, file: str, key: str, allowed: Collection[str]) -> dict[str, Any]:
    """`raw` as a table holding only `allowed` keys ({} when absent)."""
    raw = {} if raw is None else raw
    expect(isinstance(raw, dict), file, key, f"a table [{key}]", raw)
    check_keys(raw, allowed, file, key)
    return raw


@dataclass(frozen=True)
class Field:
    """What one key accepts: a test on the value and the words for it."""

    ok: Callable[[Any], bool]
    expected: str


def integer(lo: int = 0, hi: int | None = None, strict: bool = False) -> Field:
    words = f"an integer > {lo}" if strict else f"an integer >= {lo}"
    if hi is not None:
        words = f"an integer in [{lo}, {hi}]"
    return Field(
        lambda v: is_int(v) and (v > lo if strict else v >= lo) and (hi is None or v <= hi),
        words,
    )


def number(
    lo: float, hi: float | None = None, lo_open: bool = False, hi_open: bool = True
) -> Field:
    def ok(v: Any) -> bool:
        if not is_num(v) or (v <= lo if lo_open else v < lo):
            return False
        return hi is None or (v < hi if hi_open else v <= hi)

    if hi is None:
        words = f"a number {'>' if lo_open else '>='} {lo:g}"
    else:
        words = f"a number in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    return Field(ok, words)


def choice(options: Iterable[str]) -> Field:
    options = tuple(options)
    return Field(lambda v: v in options, "one of " + ", ".join(repr(o) for o in options))


ANY = Field(lambda v: True, "anything")  # a key checked by its own function
BOOL = Field(lambda v: isinstance(v, bool), "true or false")
TEXT = Field(lambda v: isinstance(v, str), "a string")
SEED = integer(0, SEED_MAX)


def check_fields(t: dict[str, Any], spec: dict[str, Field], file: str, where: str) -> None:
    """Check the keys of `t` against `spec`: known keys, each of the right type."""
    check_keys(t, spec, file, where)
    for key, value in t.items():
        f = spec[key]
        expect(f.ok(value), file, joined(where, key), f.expected, value)


def sub_table(
    raw: dict[str, Any], parent: str, key: str, spec: dict[str, Field], file: str
) -> dict[str, Any]:
    """`parent.key` (e.g. compare.scan): a table of known keys, each of the right type."""
    t = table(raw.get(key), file, f"{parent}.{key}", spec)
    check_fields(t, spec, file, f"{parent}.{key}")
    return t


# ----- training tables ([dense.train], each [[finetune]], [compare.finetune]) -----

TRAIN_FIELDS: dict[str, Field] = {
    "epochs": integer(0),
    "batch_size": integer(0, strict=True),
    "optimizer": choice(OPTIMIZERS),
    "lr": number(0, lo_open=True),
    "momentum": number(0, 1),
    "nesterov": BOOL,
    "weight_decay": number(0),
    "schedule": choice(SCHEDULES),
    "warmup": number(0, 1),
    "label_smoothing": number(0, 1),
    "augment": BOOL,
    "bf16": BOOL,
    "channels_last": BOOL,
    "seed": SEED,
    "eval_batch_size": integer(0, strict=True),
    "keep_best": BOOL,
    "distill": number(0, 1, hi_open=False),
    "temperature": number(0, lo_open=True),
}
TRAIN_KEYS = {f.name for f in fields(TrainConfig)}


def train_config(
    t: Any, file: str, key: str, seed: int, extra: Collection[str] = ()
) -> TrainConfig:
    """A training table -> TrainConfig; `extra` keys (a run's name) are allowed but unused.

    The table's own seed wins over the recipe's."""
    t = {} if t is None else t
    expect(isinstance(t, dict), file, key, "a table of training settings", t)
    check_keys(t, set(TRAIN_FIELDS) | set(extra), file, key)
    own = {k: v for k, v in t.items() if k in TRAIN_FIELDS}
    check_fields(own, TRAIN_FIELDS, file, key)
    cfg = TrainConfig(**own)
    if "seed" not in t:
        cfg.seed = seed
    try:
        cfg.validate()  # a second guard: TrainConfig's own rules
    except PrunelabError as e:
        raise RecipeError(f"{file}: [{key}] {e}") from None
    return cfg


# ----- sparsities and the step tags made from them -----


def step_tag(s: float) -> str:
    """The name a sparsity gives its step's files: two decimals when they say it exactly
    (s0.50, the tags of earlier runs), else the fewest decimals up to six that do (s0.425)."""
    for digits in range(2, 7):
        text = f"{s:.{digits}f}"
        if float(text) == s:
            return f"s{text}"
    return f"s{s:.6f}"


def sparsities(
    v: Any, file: str, key: str, lo: float = 0.0, hi: float = 1.0, open_ends: bool = False
) -> list[float]:
    """A non-empty list of distinct sparsities in [lo, hi] ((lo, hi) when `open_ends`),
    whose step tags are distinct too."""
    inside = (lambda s: lo < s < hi) if open_ends else (lambda s: lo <= s <= hi)
    span = f"({lo:g}, {hi:g})" if open_ends else f"[{lo:g}, {hi:g}]"
    expect(
        isinstance(v, list) and len(v) > 0 and all(is_num(s) and inside(s) for s in v),
        file,
        key,
        f"a non-empty list of sparsities in {span}",
        v,
    )
    seen: dict[str, int] = {}
    for i, s in enumerate(v):
        tag = step_tag(s)
        j = seen.setdefault(tag, i)
        if j == i:
            continue
        if v[j] == s:
            raise RecipeError(
                f"{file}: key '{key}' lists {s:g} twice (entries {j} and {i}); "
                "give each sparsity once"
            )
        raise RecipeError(
            f"{file}: key '{key}': {v[j]!r} and {s!r} would share the step tag "
            f"'{tag}'; use sparsities that differ within 6 decimals"
        )
    return [float(s) for s in v]
