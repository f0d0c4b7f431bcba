"""Every timing a latency plan used, kept in the plan file so the plan can be made again.

A latency-target plan times its candidates, and on a shared CPU a timing moves by a few
percent from run to run: two searches from the same scan can end on different plans (with
widening, one search kept 177.0 M MACs and the next 167.8 M). The log files each timing under
a key naming what was timed: the model's shape (every conv's and Linear's output count, which
fixes all the layer sizes channel pruning changes) and the question asked of it. A search
given the log of an earlier plan reads a timing from it instead of measuring again, so the
same scan and settings give the same plan without timing anything, and a changed setting
times only the models the earlier search never timed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from math import inf
from typing import Any, TypeVar

import torch
from torch import nn

from ..errors import StoredTimingsError
from ..latency import TIMING, cpu_name

T = TypeVar("T")
# the settings a stored timing must share with a new search to stand in for a new timing
SETTINGS = ("model", "batch_size", "threads", "reps", "timing")
# what a log written before a setting was recorded was measured with
BEFORE = {"timing": "cold"}
# what each kind of entry holds, by the first word of its key
KINDS = {
    "layers": (Mapping, "a {layer: ms} mapping"),
    "dense": (int | float, "a number of ms"),
    "pair": (list, "a list of speed-ups"),
    "crowd": (Mapping, "a {model shape: ms} mapping"),
}


class TimingLog:
    """Timings by key; `get` measures only what the log does not hold yet."""

    def __init__(self, settings: Mapping[str, Any], stored: Mapping[str, Any] | None = None):
        self.settings = dict(settings)
        self.entries: dict[str, Any] = {}
        self.reused = self.timed = 0
        self.earlier: dict[str, Any] | None = None  # the stored log's settings (its CPU too)
        if stored is not None:
            self._adopt(stored)

    def _adopt(self, stored: Mapping[str, Any]) -> None:
        old = stored.get("settings", {})
        if not isinstance(old, Mapping):
            raise StoredTimingsError("the stored timing log's settings are not a mapping")
        for key in SETTINGS:
            was = old.get(key, BEFORE.get(key))
            if was is not None and was != self.settings.get(key):
                raise StoredTimingsError(
                    f"the stored timings were measured with {key} {was!r}, this plan "
                    f"uses {self.settings.get(key)!r}: plan with the same settings and dense "
                    "model, or without the stored timings"
                )
        entries = stored.get("entries", {})
        if not isinstance(entries, Mapping):
            raise StoredTimingsError("the stored timing log's entries are not a mapping of timings")
        for key, value in entries.items():
            kind, what = KINDS.get(str(key).split(" ")[0], (object, "a timing"))
            if not (_is_timing(value) and isinstance(value, kind)):
                raise StoredTimingsError(
                    f"the stored timing {key!r} should be {what} (every number > 0), "
                    f"got {str(value)[:60]}"
                )
        self.entries = dict(entries)
        self.earlier = dict(old)

    def get(self, key: str, measure: Callable[[], T]) -> T:
        if key in self.entries:
            self.reused += 1
            return self.entries[key]
        value = measure()
        self.entries[key] = value
        self.timed += 1
        return value

    def as_dict(self) -> dict[str, Any]:
        return {
            "settings": self.settings,
            **({"earlier_settings": self.earlier} if self.earlier is not None else {}),
            "reused": self.reused,
            "timed": self.timed,
            "entries": self.entries,
        }


def _is_timing(value: Any) -> bool:
    """A positive finite number, or a list or {name: ...} mapping of them (what the log holds)."""
    if isinstance(value, Mapping):
        return bool(value) and all(_is_timing(v) for v in value.values())
    if isinstance(value, list):
        return bool(value) and all(_is_timing(v) for v in value)
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < inf


def new_log(
    model: nn.Module,
    batch_size: int,
    threads: int | None,
    reps: int,
    stored: Mapping[str, Any] | None = None,
) -> TimingLog:
    """A log for a search on `model` at these settings (threads None: torch's current count),
    seeded with `stored`, an earlier plan's "timing_log"."""
    settings = {
        "model": shape_key(model),
        "batch_size": batch_size,
        "threads": threads or torch.get_num_threads(),
        "reps": reps,
        # how measure_latency calls were ordered (prunelab.latency): primed since cold
        # timings gave a pruned model's speed-up by the other models of the run
        "timing": TIMING,
        "cpu": cpu_name(),  # not compared: a log made elsewhere still makes the same plan
    }
    return TimingLog(settings, stored)


def stored_timings(plan: Any) -> Mapping[str, Any]:
    """The timing log in a plan file's JSON, or a StoredTimingsError saying it holds none."""
    if isinstance(plan, Mapping) and isinstance(plan.get("timing_log"), Mapping):
        return plan["timing_log"]
    raise StoredTimingsError(
        "it holds no timing log: expected a plan written by "
        "`prunelab plan --channel-scan ... --latency`"
    )


def shape_key(model: nn.Module) -> str:
    """Every conv's output channels (any dimension, transposed too) and Linear's output
    features, in module order."""
    sizes = (
        getattr(m, "out_channels", None) or getattr(m, "out_features", None)
        for m in model.modules()
    )
    return "/".join(str(n) for n in sizes if isinstance(n, int))


def crowd_key(shapes: Iterable[str]) -> str:
    """One key for a set of models timed together (a digest: the list can be long)."""
    text = "|".join(sorted(shapes))
    return "crowd " + hashlib.sha256(text.encode()).hexdigest()[:16]
