"""Give a plan back the channels that cost no time: widen groups while the measured speed-up
holds.

Latency is not monotone in channel counts. In eager PyTorch on CPU a batch-1 convolution
whose input holds at most 20,480 values runs PyTorch's own im2col kernel instead of oneDNN's
(a size rule in ATen's ConvParams::use_mkldnn), and on the 2-core dev machine that kernel is
up to 1.8x slower for the mid-size layers of a pruned VGG (README). Widening the layer that
feeds such a convolution past the rule can make the whole model faster, with more channels.
A planner that only ever removes channels, ranking moves by predicted time, cannot find these
points; timing candidate widenings can. Each round times every group widened by 1..max_steps
rounding steps in one interleaved run with the dense model and the current plan. A crowd
times every model slower than a pair does (colder caches: at batch 64 on the dev machine the
plan measured 4.4x against the dense model alone and its one-step widenings 3.6-4.2x in a
crowd of nine), so a candidate's speed-up is estimated as the current plan's pair speed-up
times current / candidate time in the crowd. The candidate that adds the most parameters
(capacity is what the accuracy needs) among those estimated to fit is then timed in a pair
with the dense model twice, and counts by the slower timing, as latency_target_plan's
attempts do; if it misses, the next one is tried.
"""

from __future__ import annotations

import copy
from functools import partial
from typing import Any

from torch import nn

from ..errors import StoredTimingsError
from ..latency import measure_latency
from .surgery import graph_of, group_steps, kept_channels, prune_in_place
from .timing_log import TimingLog, crowd_key, new_log, shape_key


def widen_plan(
    model: nn.Module,
    plan: dict[str, float],
    speedup: float,
    batch_size: int = 1,
    importance: str = "l2",
    round_to: int | None = None,
    max_steps: int = 4,
    threads: int | None = None,
    reps: int = 20,
    max_rounds: int = 32,
    log: TimingLog | None = None,
) -> dict[str, Any]:
    """Widen `plan` ({group: ratio}) one group at a time, by 1..max_steps multiples of
    round_to (single channels without it), while the pruned model measures at least `speedup` x
    faster than `model` at `batch_size`. Returns {"plan": widened ratios, "counts",
    "rounds": [{group, channels, measured_speedup, estimated_speedup, timings, candidates}],
    "stopped": why the search ended (with the last round's fastest candidate, estimated)};
    the plan is unchanged when no widening fits. log: where timings are read from and kept
    (prunelab.channels.timing_log)."""
    log = log or new_log(model, batch_size, threads, reps)
    graph = graph_of(model)
    full = {n: g.channels for n, g in graph.groups.items()}
    multiple = group_steps(graph, round_to)  # round_to, and a GroupNorm's groups
    counts = {n: kept_channels(full[n], r, multiple[n]) for n, r in plan.items()}
    rounds: list[dict[str, Any]] = []
    stopped: dict[str, Any] = {"reason": f"{max_rounds} rounds"}

    def timed(m: nn.Module, goal: float) -> list[float]:
        return pair_speedups(
            model, m, goal, batch_size=batch_size, threads=threads, reps=reps, log=log
        )

    current = _pruned(model, full, counts, importance)
    (now,) = timed(current, float("inf"))  # once: no goal to confirm
    for _ in range(max_rounds):
        wider = [
            (n, counts[n] + k * (multiple[n] or 1)) for n in counts for k in range(1, max_steps + 1)
        ]
        cands = {(n, c): {**counts, n: c} for n, c in wider if c <= full[n]}
        if not cands:
            stopped = {"reason": "every group at full width"}
            break
        models = {f"{n}={c}": _pruned(model, full, cs, importance) for (n, c), cs in cands.items()}
        together = {"dense": model, "current": current, **models}
        shapes = {name: shape_key(m) for name, m in together.items()}
        crowd = partial(_crowd_ms, together, shapes, batch_size, threads, reps)
        by_shape = log.get(crowd_key(shapes.values()), crowd)
        if not set(shapes.values()) <= set(by_shape):
            raise StoredTimingsError("a stored crowd timing lacks models it was keyed by")
        ms = {name: by_shape[shapes[name]] for name in together}
        guess = {name: now * ms["current"] / ms[name] for name in models}
        base = _params(current)
        fits = sorted(
            (
                (_params(models[f"{n}={c}"]) - base, -c, n, c)
                for (n, c) in cands
                if guess[f"{n}={c}"] >= speedup
            ),
            reverse=True,
        )
        kept = None
        for _added, _, n, c in fits:
            timings = timed(models[f"{n}={c}"], speedup)
            if min(timings) >= speedup:
                kept = (n, c, timings)
                break
        if kept is None:
            best = max(guess, key=guess.__getitem__)
            stopped = {
                "reason": "no candidate kept the speed-up",
                "fastest": best,
                "estimated_speedup": guess[best],
                "tried": len(fits),
                "candidates": len(cands),
            }
            break
        n, c, timings = kept
        counts[n] = c
        current, now = models[f"{n}={c}"], min(timings)
        rounds.append(
            {
                "group": n,
                "channels": c,
                "measured_speedup": now,
                "estimated_speedup": guess[f"{n}={c}"],
                "timings": timings,
                "candidates": len(cands),
            }
        )
    ratios = {n: 1 - counts[n] / full[n] for n in counts}
    for n, r in ratios.items():  # the ratios must give back exactly these counts
        assert kept_channels(full[n], r, multiple[n]) == counts[n], (n, r, counts[n])
    return {"plan": ratios, "counts": counts, "rounds": rounds, "stopped": stopped}


def pair_speedups(
    model: nn.Module,
    pruned: nn.Module,
    goal: float,
    batch_size: int = 1,
    threads: int | None = None,
    reps: int = 20,
    confirm: bool = True,
    log: TimingLog | None = None,
) -> list[float]:
    """`pruned`'s speed-up over `model`, timed in a pair, and once more when it reaches `goal`
    (confirm): one lucky timing must not pass a candidate, so the minimum is what counts. A
    miss needs no second opinion. Shared by latency_target_plan's attempts and widening; with
    a log, read from it when it holds this question about this shape."""

    def measure() -> list[float]:
        timings: list[float] = []
        for _ in range(2 if confirm else 1):
            result = measure_latency(
                {"dense": model, "pruned": pruned},
                batch_sizes=[batch_size],
                threads=threads,
                reps=reps,
            )
            timings.append(_speedup(result, "pruned"))
            if timings[-1] < goal:
                break
        return timings

    if log is None:
        return measure()
    mode = "confirm" if confirm else "once"
    return log.get(f"pair {goal:g} {mode} {shape_key(pruned)}", measure)


def _crowd_ms(
    together: dict[str, nn.Module],
    shapes: dict[str, str],
    batch_size: int,
    threads: int | None,
    reps: int,
) -> dict[str, float]:
    """Median ms of models timed together, keyed by their shapes (what the log stores)."""
    result = measure_latency(together, batch_sizes=[batch_size], threads=threads, reps=reps)
    return {shapes[r["model"]]: r["median_ms"] for r in result["rows"]}


def _pruned(model: nn.Module, full: dict[str, int], counts: dict[str, int], imp: str) -> nn.Module:
    m = copy.deepcopy(model)
    prune_in_place(m, {n: 1 - c / full[n] for n, c in counts.items()}, imp)
    return m


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _speedup(result: dict[str, Any], name: str) -> float:
    ms = {r["model"]: r["median_ms"] for r in result["rows"]}
    return ms["dense"] / ms[name]
