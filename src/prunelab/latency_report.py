"""The latency result as a Markdown table: what a reader needs to judge a speed-up.

Kept apart from the measuring code so the CLI, the report and a notebook print the same table
for eager PyTorch and onnxruntime results alike.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from typing import Any

from .errors import PrunelabError


def _num(value: float, digits: int = 2) -> str:
    if not math.isfinite(value):
        return "n/a"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def settings_line(settings: dict[str, Any]) -> str:
    """One line saying how the numbers were made (runtime, threads, reps, CPU, versions)."""
    parts = [
        str(settings.get("runtime", "?")),
        str(settings.get("dtype", "fp32")),
        f"{settings.get('threads') or 'default'} threads",
        f"{settings.get('warmup', '?')} warm-up + >= {settings.get('reps', '?')} reps, interleaved"
        + (", primed" if settings.get("primed") else ", cold" if "primed" in settings else ""),
    ]
    if "fold_bn" in settings:
        parts.append("BatchNorm folded" if settings["fold_bn"] else "BatchNorm as is")
    if settings.get("torch"):
        parts.append(f"torch {settings['torch']}")
    if settings.get("onnxruntime"):
        parts.append(f"onnxruntime {settings['onnxruntime']}")
    if settings.get("cpu"):
        parts.append(str(settings["cpu"]))
    return "; ".join(parts)


def paired_rounds(
    result: Mapping[str, Any], a: str, b: str, batch_size: int, alpha: float = 0.05
) -> dict[str, Any] | None:
    """Whether model `a` was faster than `b`, round by round, in one interleaved run.

    Two medians a few percent apart can swap from one run to the next. Within a round both
    models met the same machine conditions, so the count of rounds each won, under an exact
    two-sided sign test, says whether a difference is more than noise. Returns {"rounds",
    "a_faster" (rounds a won), "median_ratio" (median of b's time over a's: > 1, a faster),
    "p_value", "verdict": "faster" | "slower" | "tied" (a against b, at `alpha`)}; None where
    a row lacks per-round times (results written before rows kept them)."""
    rows = {r["model"]: r for r in result["rows"] if r["batch_size"] == batch_size}
    ta, tb = (rows.get(m, {}).get("times_ms") for m in (a, b))
    if not ta or not tb or len(ta) != len(tb):
        return None
    decided = [(x, y) for x, y in zip(ta, tb, strict=True) if x != y]
    n, wins = len(decided), sum(x < y for x, y in decided)
    tail = sum(math.comb(n, i) for i in range(min(wins, n - wins) + 1))
    p = min(1.0, 2 * tail / 2**n) if n else 1.0
    verdict = "tied" if p >= alpha else ("faster" if 2 * wins > n else "slower")
    ratios = [y / x for x, y in zip(ta, tb, strict=True) if x > 0]
    return {
        "rounds": len(ta),
        "a_faster": wins,
        "median_ratio": statistics.median(ratios) if ratios else float("nan"),
        "p_value": p,
        "verdict": verdict,
    }


def p_text(p: float) -> str:
    """A sign test's p-value for people: below float range (past ~1,070 rounds all won) the
    exact value reads 0, which no test can give, so say how small it is instead."""
    return "p < 1e-300" if p < 1e-300 else f"p = {p:.2g}"


def format_latency_table(result: dict[str, Any]) -> str:
    """Markdown: model, batch, median ms, spread (p25-p75, min-max), img/s, speed-up vs the
    first model and, where rows kept their rounds, in how many rounds each model beat it (a
    speed-up is not told from noise by its median alone); then one line of settings. Works
    for measure_latency and onnx_latency."""
    try:
        rows, baseline = result["rows"], result["baseline"]
    except (KeyError, TypeError):
        raise PrunelabError(
            "not a latency result: expected a dict with 'rows' and 'baseline' "
            "(from measure_latency or onnx_latency)"
        ) from None
    paired = all("times_ms" in r for r in rows)
    lines = [
        f"| model | batch | median ms | spread ms (p25-p75; min-max) | img/s "
        f"| speed-up vs {baseline} |" + (" faster in (rounds) |" if paired else ""),
        "|---|---:|---:|---|---:|---:|" + ("---:|" if paired else ""),
    ]
    for r in rows:
        spread = f"{_num(r['p25_ms'])}-{_num(r['p75_ms'])}; {_num(r['min_ms'])}-{_num(r['max_ms'])}"
        line = (
            f"| {r['model']} | {r['batch_size']} | {_num(r['median_ms'])} | {spread} "
            f"| {_num(r['images_per_s'], 1)} | {_num(r['speedup'])}x |"
        )
        if paired:
            p = (
                None
                if r["model"] == baseline
                else paired_rounds(result, r["model"], baseline, r["batch_size"])
            )
            line += " - |" if p is None else f" {_won(p)} |"
        lines.append(line)
    lines.append("")
    if paired:
        lines.append(
            f"_faster in: the rounds of the interleaved run in which the model beat {baseline}; "
            "noise: a sign test (p >= 0.05) cannot tell the two apart_"
        )
        lines.append("")
    lines.append(f"_{settings_line(result.get('settings', {}))}_")
    return "\n".join(lines) + "\n"


def _won(p: dict[str, Any]) -> str:
    return f"{p['a_faster']}/{p['rounds']}" + (", noise" if p["verdict"] == "tied" else "")


def format_layer_table(view: dict[str, Any], batch_size: int) -> str:
    """Markdown: each conv/Linear layer's MACs, kernel and time at one batch size, for every
    model of a kernels.layer_breakdown result, beside the baseline's same-named layer."""
    models = view[str(batch_size)]
    base = view["baseline"]
    others = [n for n in models if n != base] or [base]
    lines = []
    for name in others:
        rows, ref = models[name], models[base] if name != base else None
        head = "| layer | MACs | kernel | ms |"
        rule = "|---|---:|---|---:|"
        if ref is not None:
            head += f" {base} MACs | {base} kernel | {base} ms | speed-up |"
            rule += "---:|---|---:|---:|"
        lines += [f"{name}, batch {batch_size}:", "", head, rule]
        for layer, r in rows.items():
            line = f"| {layer} | {r['macs']:,} | {r['kernel']} | {_num(r['ms'], 3)} |"
            if ref is not None:
                d = ref.get(layer)
                if d is None:
                    line += " | | | |"
                else:
                    x = d["ms"] / r["ms"] if r["ms"] > 0 else float("nan")
                    line += f" {d['macs']:,} | {d['kernel']} | {_num(d['ms'], 3)} | {_num(x)}x |"
            lines.append(line)
        lines.append("")
    lines.append(
        "_per-layer times are medians read by hooks around each layer (each model timed on its "
        "own, BatchNorm folded): they leave out activations and pooling and sum to less than "
        "the whole forward; kernels as torch.profiler names them_"
    )
    return "\n".join(lines) + "\n"
