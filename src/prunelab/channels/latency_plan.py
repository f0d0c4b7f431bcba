"""A channel plan for a measured speed-up: predict with layer timings, then time and correct.

Layer timings (prunelab.latency.layer_latency) predict a pruned model's time well enough to
rank moves, not to promise a speed-up: thin convolutions run slower per MAC, and the time
outside conv/linear layers does not shrink evenly. So the plan is made for a predicted time,
the pruned model is then timed against the dense one (interleaved, same run), and the
predicted target is corrected by the miss (_next_fraction) until the measured speed-up is
reached. An attempt that reaches it is timed a second time and counts by the slower of the
two: a single lucky timing would otherwise end the search (the run's later latency step
then misses the goal the plan "reached"). Every attempt is kept in the result, with the
timings and settings used, and every timing is kept in a log (prunelab.channels.timing_log):
given that log back, the same search re-times nothing and makes the same plan.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from torch import nn

from ..accounting import count_macs
from ..errors import PlanError
from ..latency import cpu_name, layer_latency, measure_latency
from .plans import LatencyCost, macs_target_plan
from .surgery import graph_of, prune_in_place
from .timing_log import new_log
from .widen import pair_speedups, widen_plan


def latency_target_plan(
    model: nn.Module,
    scan: dict[str, Any],
    speedup: float,
    batch_size: int = 1,
    importance: str = "l2",
    round_to: int | None = None,
    threads: int | None = None,
    reps: int = 20,
    attempts: int = 6,
    max_ratio: float = 0.8,
    tolerance: float = 0.08,
    band: float | None = None,
    step: float = 0.05,
    confirm: bool = True,
    widen: int = 0,
    timings: Mapping[str, Any] | None = None,
    rank_energy: float | None = None,
) -> dict[str, Any]:
    """The scan-guided plan whose pruned model measures at least `speedup` x faster than the
    dense one at `batch_size` (eager fp32, BN folded), pruning no more than needed: attempts
    stop once the measured speed-up is within `tolerance` above the goal; the slowest
    attempt that reached it is kept, else the fastest ("reached": False). band: as for
    macs_target_plan (each group within that distance of the uniform ratio); step: the
    plan's ratio grid, as for macs_target_plan. confirm: time an attempt that reaches the
    goal once more and take the lower speed-up. widen > 0: then give back, one group at a
    time, channels that keep the measured speed-up (prunelab.channels.widen; up to `widen`
    rounding steps per move). timings: an earlier result's "timing_log": what it timed is read
    from it instead of timed again (it must share the dense model's shape, batch_size, threads
    and reps). rank_energy: as for macs_target_plan (over-complete groups start at their rank).

    Returns macs_target_plan's result plus "speedup_target", "batch_size", "measured_speedup",
    "attempts" [{fraction, macs, channels, measured_speedup, timings}] and "layer_timings"
    (timings: every speed-up measured for the attempt; measured_speedup is their minimum),
    and with widen, "widened" and "widening_stopped" (prunelab.channels.widen.widen_plan's
    rounds and why it stopped) and, when a round kept a wider group, "plan_before_widening";
    "timing_log": every timing the search used, and how many were read rather than timed.
    """
    if not (isinstance(speedup, int | float) and speedup > 1):
        raise PlanError(f"speedup must be a number > 1, got {speedup!r}")
    log = new_log(model, batch_size, threads, reps, stored=timings)
    layer_ms = log.get(
        "layers", lambda: layer_latency(model, batch_size=batch_size, threads=threads, reps=reps)
    )
    layers_total = sum(layer_ms.values())
    dense_ms = log.get("dense", lambda: _dense_ms(model, layers_total, batch_size, threads, reps))
    cost = LatencyCost(model, layer_ms, dense_ms, graph_of(model), round_to)

    def plan_at(fraction: float) -> dict[str, Any]:
        return macs_target_plan(
            model,
            scan,
            fraction,
            importance=importance,
            cost=cost,
            round_to=round_to,
            max_ratio=max_ratio,
            band=band,
            step=step,
            rank_energy=rank_energy,
        )

    fraction, tried, best = 1.0 / speedup, [], None
    for _ in range(attempts):
        try:
            res = plan_at(fraction)
            if tried:
                res, fraction = _untried(plan_at, res, fraction, tried, speedup)
        except PlanError as e:
            if best is None:
                raise PlanError(
                    f"a {speedup}x speed-up at batch {batch_size}: {e} (the dense model timed "
                    f"{dense_ms:.3g} ms, its layers alone {layers_total:.3g} ms)"
                ) from None
            break  # a corrected target beyond reach: keep the best attempt so far
        if res is None:
            break  # no plan lies between the attempts so far: keep the best of them
        pruned = copy.deepcopy(model)
        prune_in_place(pruned, res["plan"], importance, round_to)
        speedups = pair_speedups(
            model,
            pruned,
            speedup,
            batch_size=batch_size,
            threads=threads,
            reps=reps,
            confirm=confirm,
            log=log,
        )
        got = min(speedups)
        tried.append(
            {
                "fraction": fraction,
                "macs": res["macs"],
                "channels": res["channels"],
                "measured_speedup": got,
                "timings": speedups,
            }
        )
        if _better(got, best, speedup):
            best = (got, res)
        if speedup <= got <= speedup * (1 + tolerance):
            break
        fraction = _next_fraction(tried, speedup)
    got, res = best
    if widen and got >= speedup:
        wide = widen_plan(
            model,
            res["plan"],
            speedup,
            batch_size=batch_size,
            importance=importance,
            round_to=round_to,
            max_steps=widen,
            threads=threads,
            reps=reps,
            log=log,
        )
        if wide["rounds"]:
            got = wide["rounds"][-1]["measured_speedup"]
            pruned = copy.deepcopy(model)
            channels = prune_in_place(pruned, wide["plan"], importance, round_to)
            macs = int(count_macs(pruned)["total"])
            res.update(
                plan_before_widening=res["plan"],
                plan=wide["plan"],
                channels=channels,
                macs=macs,
                macs_fraction=macs / res["dense_macs"],
            )
        res["widened"] = wide["rounds"]
        res["widening_stopped"] = wide["stopped"]
    elif widen:
        res["widened"] = []
        res["widening_stopped"] = {"reason": "the plan did not reach the speed-up: no room"}
    res.update(
        {
            "speedup_target": speedup,
            "batch_size": batch_size,
            "measured_speedup": got,
            "attempts": tried,
            "reached": got >= speedup,
            "layer_timings": {
                "layer_ms": layer_ms,
                "dense_ms": dense_ms,
                "batch_size": batch_size,
                "threads": log.settings["threads"],
                "cpu": cpu_name(),
                "rule": "a layer's time scales with its kept output and input fractions; "
                "the rest of the forward is fixed (LatencyCost); each attempt timed, "
                "one that reaches the goal twice (the slower counts)",
            },
            "timing_log": log.as_dict(),
        }
    )
    return res


# how far one nudge moves a target whose correction was too small to change the plan
NUDGE = 0.01


def _untried(
    plan_at: Any, res: dict[str, Any], fraction: float, tried: list[dict[str, Any]], speedup: float
) -> tuple[dict[str, Any] | None, float]:
    """A plan no attempt has made yet, and its target. When the corrected target makes the
    last attempt's plan again (measured: a 0.2 % miss moved a batch-64 target by less than
    one ratio step, and four of six attempts made one plan), the target moves NUDGE at a
    time in the direction of that miss until the plan changes. None when it becomes a plan
    tried before (no plan lies between them) or ten nudges change nothing."""
    seen = [a["channels"] for a in tried]
    last = tried[-1]
    direction = -1.0 if last["measured_speedup"] < speedup else 1.0
    for _ in range(10):
        if res["channels"] not in seen:
            return res, fraction
        if res["channels"] != last["channels"]:
            return None, fraction
        fraction = min(1.0, fraction * (1 + NUDGE * direction))
        res = plan_at(fraction)
    return None, fraction


def _next_fraction(tried: list[dict[str, Any]], speedup: float) -> float:
    """The next predicted-time target, from every attempt so far. The measured time fraction
    (1 / speedup) rises with the target, and the unpruned model (target 1) measures 1. While
    every attempt is too slow, the last target is scaled by its miss (the prediction taken as
    off by a constant factor). Once one is too fast, the target is interpolated between the
    closest attempts either side of the goal, the unpruned model counting as too slow: a
    prediction off by more than a factor (the time outside conv/linear layers taken as fixed
    when it shrinks too: measured 2.5-2.9x for a 1.3x goal on a small branchy net) then
    converges instead of swinging between that and no pruning at all."""
    goal = 1.0 / speedup
    points = [(a["fraction"], 1.0 / a["measured_speedup"]) for a in tried]
    fast = [p for p in points if p[1] <= goal]
    last_f, last_m = points[-1]
    if not fast:
        return min(1.0, last_f * goal / last_m)
    lo = max(fast, key=lambda p: (p[1], -p[0]))  # the too-fast attempt nearest the goal
    hi = min([p for p in points if p[1] > goal] + [(1.0, 1.0)], key=lambda p: (p[1], p[0]))
    if not lo[0] < hi[0]:  # noise made the map non-monotone: fall back to scaling
        return min(1.0, last_f * goal / last_m)
    return lo[0] + (hi[0] - lo[0]) * (goal - lo[1]) / (hi[1] - lo[1])


def _better(got: float, best: tuple[float, Any] | None, goal: float) -> bool:
    """Reaching the goal beats missing it; among those reaching it, less pruning (a lower
    speed-up) is better; among misses, a higher speed-up."""
    if best is None:
        return True
    if (got >= goal) != (best[0] >= goal):
        return got >= goal
    return got < best[0] if got >= goal else got > best[0]


# a dense time above its layers' sum by more than this is timed again, the lower counting
SUSPECT = 1.3


def _dense_ms(
    model: nn.Module, layers_ms: float, batch_size: int, threads: int | None, reps: int
) -> float:
    """The dense model's median time. Timed again when it is far above its layers' sum: on a
    shared 2-core CPU a busy moment once timed it at 1.7x what the same run's other timings
    implied, and everything left for the layers then looked fixed: no plan could reach 2.6x."""

    def once() -> float:
        res = measure_latency(
            {"dense": model}, batch_sizes=[batch_size], threads=threads, reps=reps
        )
        return _median(res, "dense")

    ms = once()
    return min(ms, once()) if ms > SUSPECT * layers_ms else ms


def _median(result: dict[str, Any], name: str) -> float:
    return next(r["median_ms"] for r in result["rows"] if r["model"] == name)
