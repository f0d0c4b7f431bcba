"""Per-layer sparsity plans: spend an overall sparsity budget where the sensitivity scan says
it costs the least accuracy, instead of pruning every layer by the same fraction.

A plan is {"plan": {param_name: sparsity}, ...}; `prunelab prune --plan plan.json` reads it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from torch import nn

from .errors import PlanError
from .masks import check_sparsity
from .pruner import resolve_plan
from .scopes import PrunableWeight, name_index, prunable_weights

STEP = 0.01  # granularity of the greedy search, as a fraction of each layer
_TIE = 1e-12  # slopes closer than this are equal (float noise along one linear segment)


def _check(value: Any, what: str, upper_open: bool = False) -> float:
    try:
        v = check_sparsity(value)
    except ValueError as e:
        raise PlanError(f"{what}: {e}") from None
    if upper_open and v >= 1.0:
        raise PlanError(f"{what} must be < 1 (a layer pruned to 100% outputs nothing), got {v}")
    return v


def _layer_of(weights: dict[str, PrunableWeight]) -> dict[str, str]:
    """{parameter name: the layer whose scan curve stands for it (the first using it)}."""
    return {n: w.layer for n, w in weights.items()}


def _drop_curve(scan: dict[str, Any], layer: str) -> tuple[np.ndarray, np.ndarray]:
    """(sparsities, accuracy drop) of one layer, starting at (0, 0), made non-decreasing.

    A scan is noisy: accuracy sometimes rises with pruning. Taking the running maximum of the
    drop (the running minimum of accuracy) never credits pruning with a gain, and gives the
    greedy search a monotone curve to walk.
    """
    r = scan["layers"][layer]
    pts = sorted(zip(scan["sparsities"], r["accuracy"], strict=True))
    xs = np.array([0.0] + [float(s) for s, _ in pts if s > 0])
    drops = np.array([0.0] + [float(scan["dense_accuracy"]) - a for s, a in pts if s > 0])
    return xs, np.maximum.accumulate(np.maximum(drops, 0.0))


def _interp(xs: np.ndarray, ds: np.ndarray, s: np.ndarray | float) -> np.ndarray:
    """Linear interpolation; beyond the last scanned sparsity, the last segment extended."""
    s = np.asarray(s, dtype=float)
    out = np.interp(s, xs, ds)
    if len(xs) >= 2:
        slope = (ds[-1] - ds[-2]) / (xs[-1] - xs[-2])
        out = np.where(s > xs[-1], ds[-1] + slope * (s - xs[-1]), out)
    return out


def _resolve_caps(
    weights: dict[str, PrunableWeight],
    caps: dict[str, float] | None,
    default_cap: float,
    first_last_cap: float | None,
) -> dict[str, float]:
    """{parameter name: cap}: default, first/last weight cap, then the user's caps (validated;
    keyed by layer, layer.weight or parameter name)."""
    names = list(weights)
    out = {n: _check(default_cap, "default_cap", upper_open=True) for n in names}
    if first_last_cap is not None:
        c = _check(first_last_cap, "first_last_cap", upper_open=True)
        for n in {names[0], names[-1]}:
            out[n] = min(out[n], c)
    if caps is not None and not isinstance(caps, dict):
        raise PlanError(f"caps must be a dict {{layer: cap}}, got {type(caps).__name__}")
    index = name_index(weights)
    unknown = [k for k in (caps or {}) if k not in index]
    if unknown:
        layers = [layer for w in weights.values() for layer in w.layers]
        raise PlanError(
            f"unknown layer(s) {', '.join(map(repr, unknown))} in caps; valid layers: "
            f"{', '.join(layers)}"
        )
    for k, v in (caps or {}).items():
        out[index[k]] = _check(v, f"cap of {k!r}", upper_open=True)
    return out


def _check_scan(scan: Any, weights: dict[str, PrunableWeight], scope: str) -> None:
    """Refuse a scan that is malformed, misses layers of the scope, or fits another model."""
    try:
        ok = (
            isinstance(scan["layers"], dict)
            and isinstance(scan["sparsities"], list)
            and isinstance(float(scan["dense_accuracy"]), float)
        )
    except (KeyError, TypeError, ValueError):
        ok = False
    if not ok:
        raise PlanError(
            "not a sensitivity scan: expected {dense_accuracy, sparsities, layers} "
            "(the JSON written by `prunelab sensitivity`)"
        )
    missing = [w.layer for w in weights.values() if w.layer not in scan["layers"]]
    if missing:
        raise PlanError(
            f"the scan has no curve for {', '.join(missing)} (scope {scope!r}); "
            f"rerun the scan with --scope {scope}"
        )
    for w in weights.values():
        n, r = w.layer, scan["layers"][w.layer]
        if not isinstance(r, dict):
            raise PlanError(f"the scan's {n} is a {type(r).__name__}, expected a dict")
        if int(r.get("params", w.numel)) != w.numel:
            raise PlanError(
                f"the scan's {n} has {r['params']} weights but the model's has "
                f"{w.numel}: the scan was made on another model"
            )
        if len(r.get("accuracy", [])) != len(scan["sparsities"]):
            raise PlanError(
                f"the scan's {n} has {len(r.get('accuracy', []))} accuracies for "
                f"{len(scan['sparsities'])} sparsities"
            )


def _overall(plan: dict[str, float], weights: dict[str, PrunableWeight]) -> float:
    """The study's overall sparsity of a plan: sum(round(n_i * s_i)) / sum(n_i), each
    distinct weight of the scope once."""
    n = {k: w.numel for k, w in weights.items()}
    return sum(round(n[p] * s) for p, s in plan.items()) / sum(n.values())


def layer_drops(
    scan: dict[str, Any], plan: dict[str, float], layers: dict[str, str] | None = None
) -> dict[str, float]:
    """Each weight's accuracy drop in the scan at its planned sparsity (that layer alone
    pruned). `layers` maps parameter names to scan layer names (default: the name without
    '.weight')."""
    out = {}
    for p, s in plan.items():
        layer = (layers or {}).get(p, p.removesuffix(".weight"))
        if layer in scan["layers"]:
            xs, ds = _drop_curve(scan, layer)
            out[p] = float(_interp(xs, ds, s))
    return out


def sensitivity_plan(
    scan: dict[str, Any],
    model: nn.Module,
    target: float,
    scope: str = "conv",
    caps: dict[str, float] | None = None,
    default_cap: float = 0.95,
    first_last_cap: float | None = 0.8,
    max_drop: float | None = None,
) -> dict[str, Any]:
    """Per-layer sparsities reaching `target` overall (weighted by weights per layer) at the
    least accuracy drop the scan predicts.

    Each layer's scan curve is interpolated linearly (accuracy at 0 = dense accuracy; noise
    where accuracy rises with pruning is ignored) and extended past its last point along the
    last segment. Greedy: repeatedly move the layer whose cheapest next move (to any later
    point of a 1% grid, so a flat stretch behind a steep step is still found) costs the least
    drop per pruned weight, until the target is passed; the last move is then cut back so the
    plan removes exactly round(target * total) weights. Caps: `default_cap` everywhere,
    `first_last_cap` on the first and last layer of the scope (they hold few weights and hurt
    most), `caps` ({layer: cap}) overrides both; no cap may reach 1. `max_drop` bounds each
    layer's own drop in the scan (e.g. 0.02 = 2 points), acting as one more cap per layer.
    `summed_scan_drop` adds up the layers' drops, each measured alone: it ranks plans (lower
    is better) but is no accuracy prediction; layers interact and fine-tuning recovers most.
    """
    target = _check(target, "target")
    if max_drop is not None and not (
        isinstance(max_drop, int | float) and math.isfinite(max_drop) and max_drop >= 0
    ):
        raise PlanError(f"max_drop must be a number >= 0, got {max_drop!r}")
    weights = prunable_weights(model, scope)
    cap = _resolve_caps(weights, caps, default_cap, first_last_cap)
    _check_scan(scan, weights, scope)
    layer_of = _layer_of(weights)
    names = list(weights)
    numel = {n: weights[n].numel for n in names}
    total = sum(numel.values())
    need = round(target * total)
    grids, drops, curves = {}, {}, {}
    for n in names:
        xs, ds = curves[n] = _drop_curve(scan, layer_of[n])
        hi = min(math.floor(cap[n] * numel[n] + 1e-9), numel[n] - 1)
        counts = np.unique(
            np.minimum(np.round(np.arange(0, 1 + STEP / 2, STEP) * numel[n]).astype(np.int64), hi)
        )
        d = _interp(xs, ds, counts / numel[n])
        if max_drop is not None:
            ok = d <= max_drop + 1e-12
            counts, d = counts[ok], d[ok]  # monotone drop: a prefix stays
        grids[n], drops[n] = counts, d
    reachable = sum(int(g[-1]) for g in grids.values())
    if need > reachable:
        why = "the caps" + (f" and max_drop {max_drop}" if max_drop is not None else "")
        raise PlanError(
            f"target {target} is unreachable: {why} allow at most {reachable / total:.4f} "
            f"overall ({reachable} of {total} weights); raise the caps or lower the target"
        )
    pos = dict.fromkeys(names, 0)  # index into each layer's grid
    done, last = 0, None
    while done < need:
        best = None
        for n in names:
            g, d, i = grids[n], drops[n], pos[n]
            if i + 1 >= len(g):
                continue
            slopes = (d[i + 1 :] - d[i]) / (g[i + 1 :] - g[i])
            j = int(np.flatnonzero(slopes <= slopes.min() + _TIE)[-1])  # farthest of the best
            key = (float(slopes[j]), -int(g[i + 1 + j] - g[i]), names.index(n))
            if best is None or key < best[0]:
                best = (key, n, i + 1 + j)
        assert best is not None  # reachable >= need guarantees a move
        _, n, j = best
        done += int(grids[n][j] - grids[n][pos[n]])
        pos[n], last = j, n
    counts = {n: int(grids[n][pos[n]]) for n in names}
    if last is not None:
        counts[last] -= done - need  # cut the last move back to the exact need
    plan = {n: counts[n] / numel[n] for n in names}
    per_layer = {n: float(_interp(*curves[n], plan[n])) for n in names}
    return {
        "plan": plan,
        "target": target,
        "achieved_overall": _overall(plan, weights),
        "summed_scan_drop": sum(per_layer.values()),
        "scan_drop_per_layer": per_layer,
        "method": "sensitivity-greedy",
        "caps": {n: cap[n] for n in names},
        "max_drop": max_drop,
        "scope": scope,
        "scan_dense_accuracy": float(scan["dense_accuracy"]),
    }


def uniform_plan(model: nn.Module, target: float, scope: str = "conv") -> dict[str, Any]:
    """Every layer of the scope at `target` (the study's plan), in the same shape as the others."""
    target = _check(target, "target")
    weights = prunable_weights(model, scope)
    plan = dict.fromkeys(weights, target)
    return {
        "plan": plan,
        "target": target,
        "achieved_overall": _overall(plan, weights),
        "summed_scan_drop": None,
        "method": "uniform",
        "caps": None,
        "scope": scope,
    }


def global_plan(
    model: nn.Module,
    target: float,
    scope: str = "conv",
    cap: float | None = None,
    scan: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One magnitude threshold over the whole scope (pruning.resolve_plan's 'global' plan), for
    comparison: it ignores accuracy and follows weight magnitudes alone. With `scan`, the drop
    the scan predicts for it is filled in."""
    target = _check(target, "target")
    weights = prunable_weights(model, scope)
    spec: dict[str, Any] = {"global": target}
    if cap is not None:
        spec["max_layer_sparsity"] = _check(cap, "cap", upper_open=True)
    plan = resolve_plan(model, spec, scope)
    out = {
        "plan": plan,
        "target": target,
        "achieved_overall": _overall(plan, weights),
        "summed_scan_drop": None,
        "method": "global-magnitude",
        "caps": None if cap is None else dict.fromkeys(plan, cap),
        "scope": scope,
    }
    if scan is not None:
        _check_scan(scan, weights, scope)
        per_layer = layer_drops(scan, plan, _layer_of(weights))
        out["summed_scan_drop"] = sum(per_layer.values())
        out["scan_drop_per_layer"] = per_layer
    return out


def format_plan_table(plan: dict[str, Any], model: nn.Module) -> str:
    """Markdown: per layer its weights, cap, planned sparsity, weights pruned, drop alone."""
    params = dict(model.named_parameters())
    try:
        layer_of = _layer_of(prunable_weights(model, plan.get("scope", "conv")))
    except PlanError:
        layer_of = {}
    caps = plan.get("caps") or {}
    drops = plan.get("scan_drop_per_layer") or {}
    lines = [
        "| layer | params | cap | sparsity | pruned | kept | scan drop alone (points) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    total = pruned = 0
    for p, s in plan["plan"].items():
        n = params[p].numel()
        k = round(n * s)
        total, pruned = total + n, pruned + k
        cap = f"{caps[p]:.2f}" if p in caps else "-"
        drop = f"{100 * drops[p]:.2f}" if p in drops else "-"
        layer = layer_of.get(p, p.removesuffix(".weight"))
        lines.append(f"| {layer} | {n:,} | {cap} | {s:.4f} | {k:,} | {n - k:,} | {drop} |")
    drop = plan.get("summed_scan_drop")
    lines.append(
        f"| **total** | {total:,} | | {pruned / total:.4f} | {pruned:,} | {total - pruned:,} | "
        f"{'-' if drop is None else f'{100 * drop:.2f}'} |"
    )
    lines += [
        "",
        f"- method: {plan['method']}; target {plan['target']}, achieved overall "
        f"{plan['achieved_overall']:.6f} (pruned weights / weights of the layers listed)",
    ]
    if drop is not None:
        lines.append(
            "- scan drop alone: the accuracy the scan lost with that layer alone pruned to "
            "its sparsity (no fine-tuning); the total adds them up, which ranks plans "
            "(lower is better) but does not predict the pruned model's accuracy"
        )
    return "\n".join(lines) + "\n"
