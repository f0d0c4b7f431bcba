"""Channel plans {group: ratio}: a global ranking with per-group caps, and a sensitivity-
guided plan that reaches a MACs (or measured latency) target at the least predicted cost
in accuracy."""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from ..accounting import count_macs
from ..errors import PlanError
from .graph import ChannelGraph
from .importance import check_importance, group_importance
from .rank import rank_floors
from .surgery import (
    check_ratio,
    check_round_to,
    graph_of,
    group_steps,
    kept_channels,
    prune_in_place,
)


def _caps(
    graph: ChannelGraph, caps: dict[str, float] | None, default_cap: float
) -> dict[str, float]:
    out = {n: check_ratio(default_cap, "default_cap") for n in graph.groups}
    if caps is not None and not isinstance(caps, dict):
        raise PlanError(f"caps must be a dict {{channel group: cap}}, got {type(caps).__name__}")
    for name, cap in (caps or {}).items():
        out[graph.group(name, "caps").name] = check_ratio(cap, f"cap of {name!r}")
    return out


def global_channel_plan(
    model: nn.Module,
    ratio: float,
    importance: str = "l2",
    caps: dict[str, float] | None = None,
    default_cap: float = 0.9,
) -> dict[str, float]:
    """{group: ratio} removing the lowest-ranked `ratio` of all channels of all groups.

    Scores are made comparable across groups by dividing each group's importances by their
    mean: a channel then ranks by how it compares with the rest of its own group. Raw norms
    would not do: they scale with fan-in, initialisation and BatchNorm, so whole thin layers
    would go first. round(ratio * all channels) are removed, lowest normalised score first
    (ties: module order, then channel index), never more than round-down(cap * c) of a group
    (caps: {group: cap}, else default_cap) and never its last channel.
    """
    check_importance(importance)
    r = check_ratio(ratio, "global channel ratio")
    graph = graph_of(model)
    limit = _caps(graph, caps, default_cap)
    groups = list(graph.groups.values())
    most = {
        g.name: min(g.channels - 1, math.floor(limit[g.name] * g.channels + 1e-9)) for g in groups
    }
    total = sum(g.channels for g in groups)
    want = round(total * r)
    if want > sum(most.values()):
        raise PlanError(
            f"global channel ratio {r} removes {want} of {total} channels but the caps allow "
            f"{sum(most.values())} ({sum(most.values()) / max(total, 1):.3f}); raise the caps "
            "or lower the ratio"
        )
    ranked = []
    for gi, g in enumerate(groups):
        s = group_importance(g, importance)
        mean = float(s.mean())
        norm = s / mean if mean > 0 else torch.zeros_like(s)
        ranked += [(float(v), gi, ci) for ci, v in enumerate(norm.tolist())]
    ranked.sort()
    removed = dict.fromkeys(most, 0)
    left = want
    for _, gi, _ in ranked:
        if left == 0:
            break
        name = groups[gi].name
        if removed[name] < most[name]:
            removed[name] += 1
            left -= 1
    return {g.name: removed[g.name] / g.channels for g in groups}


class CostModel(Protocol):
    """What the greedy search minimises to a target: `dense` is the unpruned model's cost,
    calling it with a plan {group: ratio} gives the pruned model's predicted cost."""

    dense: float

    def __call__(self, plan: dict[str, float]) -> float: ...


class MacsCost:
    """MACs of the model pruned by a plan, predicted exactly from the channel counts.

    A conv or linear costs out_channels * in_channels / groups * (kernel, positions), so its
    counted MACs (prunelab.accounting.count_macs, FlopCounterMode) scale with the kept
    fraction of its outputs and of its inputs; a depthwise conv with one of them. MACs outside
    conv/linear modules stay as they are.
    """

    def __init__(
        self,
        model: nn.Module,
        graph: ChannelGraph | None = None,
        round_to: int | None = None,
        per_layer: dict[str, float] | None = None,
        total: float | None = None,
    ):
        graph = graph or graph_of(model)
        self.round_to = check_round_to(round_to)
        if per_layer is None:
            macs = count_macs(model)
            per_layer, total = dict(macs["per_layer"]), float(macs["total"])
        self.per_layer = {n: float(v) for n, v in per_layer.items()}
        self.dense = float(total if total is not None else sum(self.per_layer.values()))
        self.rest = max(self.dense - sum(self.per_layer.values()), 0.0)
        self.channels = {n: g.channels for n, g in graph.groups.items()}
        self.steps = group_steps(graph, self.round_to)  # round_to, and GroupNorm groups
        self.out_of: dict[str, str] = {}
        self.in_of: dict[str, list[tuple[str, float]]] = {}
        self.width: dict[str, int] = {}
        for name, g in graph.groups.items():
            seen = set()
            for s in g.slots:
                if (s.name, s.kind) in seen:
                    continue
                seen.add((s.name, s.kind))
                if s.kind in ("out", "dw"):
                    self.out_of[s.name] = name
                elif s.kind == "in":
                    per_channel = len(s.local) / g.channels  # a flatten: H*W inputs each
                    self.in_of.setdefault(s.name, []).append((name, per_channel))
                    m = s.module
                    self.width[s.name] = int(
                        getattr(m, "in_channels", getattr(m, "in_features", 0))
                    )

    def kept(self, plan: dict[str, float]) -> dict[str, int]:
        return {
            n: kept_channels(c, plan.get(n, 0.0), self.steps[n]) for n, c in self.channels.items()
        }

    def __call__(self, plan: dict[str, float]) -> float:
        kept = self.kept(plan)
        total = float(self.rest)
        for layer, dense in self.per_layer.items():
            f = 1.0
            g = self.out_of.get(layer)
            if g is not None:
                f *= kept[g] / self.channels[g]
            if layer in self.in_of:
                width = self.width[layer]
                gone = sum((self.channels[h] - kept[h]) * m for h, m in self.in_of[layer])
                f *= (width - gone) / width
            total += dense * f
        return total


class LatencyCost(MacsCost):
    """Measured time, predicted like MACs: each conv/linear layer's time scales with the kept
    fraction of its outputs and of its inputs; the rest of the forward (activations, pooling,
    overhead) is taken as fixed. layer_ms: prunelab.latency.layer_latency; total_ms: the
    whole forward's median. Closer to real time than MACs (small layers are slower per MAC),
    still a prediction: latency_plan measures the pruned model and corrects the target."""

    def __init__(
        self,
        model: nn.Module,
        layer_ms: dict[str, float],
        total_ms: float,
        graph: ChannelGraph | None = None,
        round_to: int | None = None,
    ):
        if not (isinstance(total_ms, int | float) and total_ms > 0):
            raise PlanError(f"total_ms must be a number > 0, got {total_ms!r}")
        super().__init__(model, graph, round_to, per_layer=layer_ms, total=total_ms)


class TableCost:
    """A measured cost (e.g. latency in seconds), as savings per group, taken as additive.

    dense: the unpruned model's cost; saved: {group: rate} (cost saved per unit of ratio,
    i.e. linear) or {group: {"ratios": [...], "saved": [...]}} (cost saved with that group
    alone pruned to each ratio, as timed; linear in between, last segment extended).
    """

    def __init__(self, dense: float, saved: dict[str, Any]):
        if not (isinstance(dense, int | float) and dense > 0):
            raise PlanError(f"cost 'dense' must be a number > 0, got {dense!r}")
        self.dense = float(dense)
        self.curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for g, v in saved.items():
            if isinstance(v, int | float) and not isinstance(v, bool):
                xs, ys = np.array([0.0, 1.0]), np.array([0.0, float(v)])
            elif isinstance(v, dict) and len(v.get("ratios", [])) == len(v.get("saved", [])) > 0:
                pts = sorted(zip(v["ratios"], v["saved"], strict=True))
                xs = np.array([0.0] + [float(r) for r, _ in pts if r > 0])
                ys = np.array([0.0] + [float(s) for r, s in pts if r > 0])
            else:
                raise PlanError(
                    f"cost of group {g!r} must be a number (saved per unit ratio) or "
                    f"{{'ratios': [...], 'saved': [...]}} of the same length, got {v!r}"
                )
            self.curves[g] = (xs, ys)

    def __call__(self, plan: dict[str, float]) -> float:
        saved = sum(float(_interp(*self.curves[g], r)) for g, r in plan.items() if g in self.curves)
        return self.dense - saved


def _interp(xs: np.ndarray, ys: np.ndarray, x: float) -> float:
    """Linear interpolation; beyond the last point, the last segment extended."""
    if len(xs) >= 2 and x > xs[-1]:
        slope = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
        return float(ys[-1] + slope * (x - xs[-1]))
    return float(np.interp(x, xs, ys))


def reference_accuracy(scan: Any) -> float:
    """The accuracy a channel scan's drops are measured from: the dense model treated like
    the probes (recovered, BatchNorm re-estimated); scans made before it was recorded had
    only the model as it is."""
    has = isinstance(scan, dict) and "reference_accuracy" in scan
    return float(scan["reference_accuracy" if has else "dense_accuracy"])


def _drop_curves(scan: Any, graph: ChannelGraph) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per group, (ratios, accuracy drop) from (0, 0), made non-decreasing (a scan is noisy;
    pruning is never credited with a gain) and convex (each step's drop per unit ratio at
    least the previous step's). Without fine-tuning a layer's accuracy collapses to chance
    and then stays there, so raw curves flatten past the collapse and a greedy search would
    take the flat part as nearly free, gutting the most sensitive layers; after fine-tuning
    the harm keeps growing. A probe that emptied a group counts as accuracy 0."""
    try:
        dense = reference_accuracy(scan)
        ratios = [float(r) for r in scan["ratios"]]
        rows = scan["groups"]
        ok = isinstance(rows, dict)
    except (KeyError, TypeError, ValueError):
        ok = False
    if not ok:
        raise PlanError(
            "not a channel scan: expected {dense_accuracy, ratios, groups} "
            "(the result of prunelab.channels.channel_scan)"
        )
    out = {}
    for name, row in rows.items():
        g = graph.group(name, "scan")
        if not isinstance(row, dict) or len(row.get("accuracy", [])) != len(ratios):
            raise PlanError(f"the scan's group {name!r} has no accuracy per ratio")
        if row.get("channels", g.channels) != g.channels:
            raise PlanError(
                f"the scan's group {name!r} has {row['channels']} channels but the model's has "
                f"{g.channels}: the scan was made on another model"
            )
        pts = sorted(zip(ratios, row["accuracy"], strict=True))
        xs = np.array([0.0] + [r for r, _ in pts if r > 0])
        drops = [dense - (a if a is not None else 0.0) for r, a in pts if r > 0]
        ds = np.maximum.accumulate(np.maximum(np.array([0.0] + drops), 0.0))
        out[g.name] = (xs, _convex(xs, ds))
    return out


def _convex(xs: np.ndarray, ds: np.ndarray) -> np.ndarray:
    """The curve through the same first point whose slopes are the running maximum of the
    given slopes (so it lies on or above the given points)."""
    if len(xs) < 2:
        return ds
    slopes = np.maximum.accumulate(np.diff(ds) / np.diff(xs))
    return np.concatenate([[ds[0]], ds[0] + np.cumsum(slopes * np.diff(xs))])


def greedy_plan(
    groups: dict[str, int],
    drop: Callable[[str, float], float],
    cost: Callable[[dict[str, float]], float],
    target: float,
    max_ratio: float = 0.8,
    step: float = 0.05,
    round_to: int | dict[str, int | None] | None = None,
    start: dict[str, float] | None = None,
    caps: dict[str, float] | None = None,
) -> dict[str, float]:
    """Raise one group's ratio at a time until cost(plan) <= target.

    groups: {group: channels}; round_to: one multiple for every group's kept count, or
    {group: multiple} (surgery.group_steps: a GroupNorm's groups too). Each move raises a
    group by whole steps to the next ratio that removes at least one more channel (and keeps
    one), and the move taken is the one with the smallest predicted accuracy drop per unit of
    cost saved (ties: the larger saving, then module order). Any cost works (MacsCost,
    TableCost, a function of the plan).
    start: {group: ratio} the search begins from (rounded down to whole steps; default 0);
    caps: {group: highest ratio} below max_ratio (default: max_ratio for every group).
    """
    steps = {g: int(math.floor((start or {}).get(g, 0.0) / step + 1e-9)) for g in groups}
    plan = {g: round(k * step, 10) for g, k in steps.items()}
    limit = {g: min(max_ratio, (caps or {}).get(g, max_ratio)) for g in groups}
    now = cost(plan)
    while now > target:
        best: tuple[float, float, int, str, int] | None = None
        for order, (g, c) in enumerate(groups.items()):
            multiple = round_to.get(g) if isinstance(round_to, dict) else round_to
            k, base = steps[g], kept_channels(c, plan[g], multiple)
            while True:
                k += 1
                r = round(k * step, 10)
                if r > limit[g] + 1e-12 or r >= 1 or kept_channels(c, r, multiple) < 1:
                    k = -1
                    break
                if kept_channels(c, r, multiple) < base:
                    break
            if k < 0:
                continue
            saved = now - cost({**plan, g: r})
            if saved <= 0:
                continue
            score = (drop(g, r) - drop(g, plan[g])) / saved
            cand = (score, -saved, order, g, k)
            if best is None or cand < best:
                best = cand
        if best is None:
            raise PlanError(
                f"the target ({target:,.6g}) cannot be reached with max_ratio {max_ratio}"
                f"{' and the band' if caps else ''}: "
                f"the most pruning it allows costs {now:,.6g}"
            )
        _, _, _, g, k = best
        steps[g], plan[g] = k, round(k * step, 10)
        now = cost(plan)
    return plan


def _cost_model(
    cost: Any, model: nn.Module, graph: ChannelGraph, round_to: int | None
) -> tuple[Any, str]:
    if cost is None:
        return MacsCost(model, graph, round_to), "macs"
    if isinstance(cost, dict):
        if set(cost) != {"dense", "groups"} or not isinstance(cost["groups"], dict):
            raise PlanError(
                "cost must be {'dense': cost of the unpruned model, 'groups': {group: saved}} "
                f"(see TableCost), got keys {sorted(cost)}"
            )
        for name in cost["groups"]:
            graph.group(name, "cost")
        return TableCost(cost["dense"], cost["groups"]), "table"
    if callable(cost) and isinstance(getattr(cost, "dense", None), int | float):
        return cost, "custom"
    raise PlanError(
        "cost must be None (MACs), a dict {'dense', 'groups'} or a callable with .dense, "
        f"got {type(cost).__name__}"
    )


def macs_target_plan(
    model: nn.Module,
    scan: dict[str, Any],
    macs_fraction: float,
    importance: str = "l2",
    max_ratio: float = 0.8,
    step: float = 0.05,
    cost: Any = None,
    round_to: int | None = None,
    band: float | None = None,
    rank_energy: float | None = None,
) -> dict[str, Any]:
    """The plan {group: ratio} reaching `macs_fraction` of the dense cost, guided by `scan`.

    Greedy (greedy_plan): raise the ratio of the group whose scanned accuracy drop
    (interpolated, the group alone pruned) per unit of cost saved is smallest, until the
    predicted cost is <= macs_fraction * dense. The cost is MACs by default, predicted
    exactly from channel counts (MacsCost) and verified at the end with count_macs on a
    pruned copy. A measured-latency target reuses the same loop: pass
    cost={"dense": seconds, "groups": {group: seconds saved per unit ratio, or
    {"ratios": [...], "saved": [...]}}} (TableCost: savings taken as additive), or any
    callable plan -> cost with a `.dense` attribute; the target is then that fraction of
    cost.dense. Only groups in the scan are pruned; under importance "lab" never the group
    feeding the classifier. round_to: the counts prune_channels will be given (the search
    and the MACs prediction use the rounded counts, so pass the same value to both).
    band: keep every group within this distance of the uniform ratio that reaches the same
    target (the search starts at uniform - band and stops at uniform + band). The scan scores
    each group alone and before fine-tuning; measured after fine-tuning, plans far from
    uniform lost to it on the full-width VGG (README), so a band lets the scan and the cost
    model tilt a uniform plan rather than replace it. None: no band.
    rank_energy: over-complete groups (more channels than their filters have inputs, such as
    a first conv on RGB) start at their least ratio from prunelab.channels.rank (the
    effective rank at this share of the weights' energy), never above max_ratio; the
    uniform ratio of a band is found with them there. None: no floors.
    Returns {"plan", "channels", "macs", "dense_macs", "macs_fraction", "cost", "target",
    "dense_cost", "predicted": {"cost", "macs", "accuracy_drop", "accuracy", "drops"},
    "importance", "round_to", "band", "rank_floors"}.
    """
    check_importance(importance)
    ok = isinstance(macs_fraction, int | float) and not isinstance(macs_fraction, bool)
    if not ok or not 0 < macs_fraction <= 1:
        raise PlanError(f"macs_fraction must be a number in (0, 1], got {macs_fraction!r}")
    max_ratio = check_ratio(max_ratio, "max_ratio")
    if not (isinstance(step, int | float) and 0 < step < 1):
        raise PlanError(f"step must be a number in (0, 1), got {step!r}")
    graph = graph_of(model)
    curves = _drop_curves(scan, graph)
    names = [n for n in graph.groups if n in curves]
    if importance == "lab":
        names = [n for n in names if not graph.groups[n].feeds_output]
    round_to = check_round_to(round_to)
    cost_fn, kind = _cost_model(cost, model, graph, round_to)
    macs_fn = cost_fn if kind == "macs" else MacsCost(model, graph, round_to)
    target = macs_fraction * float(cost_fn.dense)

    def drop(g: str, r: float) -> float:
        return _interp(*curves[g], r)

    groups = {n: graph.groups[n].channels for n in names}
    floors: dict[str, float] = {}
    if rank_energy is not None:
        floors = {
            n: min(max_ratio, f) for n, f in rank_floors(graph, rank_energy).items() if n in groups
        }
    start, caps, centre = dict(floors) or None, None, None
    if band is not None:
        if not (isinstance(band, int | float) and 0 <= band < 1):
            raise PlanError(f"band must be a number in [0, 1), got {band!r}")
        centre = uniform_ratio(groups, cost_fn, target, max_ratio, floors)
        # greedy_plan rounds the start down to whole steps
        start = {n: max(0.0, centre - band, floors.get(n, 0.0)) for n in groups}
        top = math.ceil((centre + band) / step - 1e-9) * step
        caps = {n: max(top, floors.get(n, 0.0)) for n in groups}
    multiples = group_steps(graph, round_to)
    plan = greedy_plan(groups, drop, cost_fn, target, max_ratio, step, multiples, start, caps)
    pruned = copy.deepcopy(model)
    channels = prune_in_place(pruned, plan, importance, round_to)
    measured = int(count_macs(pruned)["total"])
    predicted_macs = round(macs_fn(plan))
    if measured != predicted_macs:
        warnings.warn(
            f"predicted {predicted_macs:,} MACs for the plan, counted {measured:,}: the model "
            "has MACs outside conv/linear layers that channel pruning changes",
            stacklevel=2,
        )
    drops = {n: drop(n, r) for n, r in plan.items()}
    dense_acc = reference_accuracy(scan)
    return {
        "plan": plan,
        "channels": channels,
        "macs": measured,
        "dense_macs": int(macs_fn.dense),
        "macs_fraction": measured / macs_fn.dense,
        "cost": kind,
        "target": target,
        "dense_cost": float(cost_fn.dense),
        "predicted": {
            "cost": float(cost_fn(plan)),
            "macs": predicted_macs,
            "accuracy_drop": sum(drops.values()),
            "accuracy": dense_acc - sum(drops.values()),
            "drops": drops,
        },
        "importance": importance,
        "round_to": round_to,
        "band": None if band is None else {"width": band, "uniform_ratio": centre},
        "rank_floors": None if rank_energy is None else {"energy": rank_energy, **floors},
    }


def uniform_ratio(
    groups: dict[str, int],
    cost: Any,
    target: float,
    max_ratio: float,
    floors: dict[str, float] | None = None,
    iters: int = 40,
) -> float:
    """The smallest ratio that, given to every group (a group with a floor: at least that),
    brings cost to <= target (bisection; cost falls as the ratio rises). PlanError when
    even max_ratio everywhere cannot."""
    floors = floors or {}

    def at(r: float) -> dict[str, float]:
        return {n: max(r, floors.get(n, 0.0)) for n in groups}

    if cost(at(max_ratio)) > target:
        raise PlanError(
            f"the target ({target:,.6g}) cannot be reached even with every group at "
            f"max_ratio {max_ratio}"
        )
    lo, hi = 0.0, max_ratio
    for _ in range(iters):
        mid = (lo + hi) / 2
        if cost(at(mid)) > target:
            lo = mid
        else:
            hi = mid
    return hi
