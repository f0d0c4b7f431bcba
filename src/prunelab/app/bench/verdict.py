"""The performance goals checked against the rows, and the printed table."""

from __future__ import annotations

import math
from typing import Any

from .measure import Row

GOALS = {"eval_bf16": 4.0, "eval_fp32": 1.2, "train": 3.0, "scan": 2.0, "peak": 0.40}
# (GOALS key, goal as printed, task, precision (None: any), what must match the baseline);
# each goal is judged on the fastest path of its task and precision
SPEED_GOALS = [
    ("eval_bf16", "eval bf16 >= {}x baseline", "eval", "bf16", None),
    (
        "eval_fp32",
        "eval fp32 >= {}x baseline, identical predictions",
        "eval",
        "fp32",
        "predictions",
    ),
    ("train", "training >= {}x baseline", "train", None, None),
    ("scan", "scan fp32 >= {}x faster, identical accuracies", "scan", "fp32", "points"),
]


def goal_for(row: Row) -> float | None:
    """The speed-up goal a row's task and precision are held to, if any."""
    for key, _, task, prec, _ in SPEED_GOALS:
        if row.task == task and prec in (None, row.precision):
            return GOALS[key]
    return None


def goals(rows: list[Row], bounds: dict[str, str], width: float) -> list[tuple[str, bool, str]]:
    """PASS/FAIL per performance goal, with the figures behind each verdict."""
    fast = [r for r in rows if not r.baseline and r.ratio is not None]

    def ceiling(r: Row) -> str:
        """The ratio this path would reach at 100% of its precision's peak (same work)."""
        if not r.peak_fraction:
            return ""
        return f"; ceiling here {r.ratio / r.peak_fraction:.2f}x (at 100% of {r.precision} peak)"

    out = []
    for key, name, task, prec, differing in SPEED_GOALS:
        cands = [r for r in fast if r.task == task and prec in (None, r.precision)]
        if not cands:
            continue
        r = max(cands, key=lambda r: r.ratio or 0.0)
        ok = r.ratio >= GOALS[key] and (differing is None or r.pred_diff == 0)
        diff = "" if differing is None else f", {r.pred_diff} {differing} differ"
        out.append((name.format(GOALS[key]), ok, f"{r.ratio:.2f}x{diff} ({r.path}){ceiling(r)}"))
    for r in fast:
        if r.peak_fraction is None:
            continue
        ok = r.peak_fraction >= GOALS["peak"]
        why = "" if ok else f"; bound: {bounds.get(f'{r.task}/{r.path}', 'not profiled')}"
        out.append(
            (
                f"{r.task} {r.path}: >= {GOALS['peak']:.0%} of {r.precision} peak",
                ok,
                f"{r.peak_fraction:.0%}{why}",
            )
        )
    if width != 1.0:
        out = [
            (f"{g} [goals are set for width 1.0; this run is width {width}]", ok, d)
            for g, ok, d in out
        ]
    return out


def _fmt(v: float | None, spec: str, empty: str = "-") -> str:
    return empty if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def format_table(rows: list[Row], peak: dict[str, Any]) -> str:
    """The measurements as one Markdown table, plus the peak it is judged against."""
    head = (
        "| task | path | result | vs baseline | GFLOP/s | % of peak | accuracy | Δ acc | "
        "≠ baseline | note |"
    )
    lines = [head, "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        value = f"{r.value:,.1f} img/s" if r.unit == "img/s" else f"{r.value:,.1f} s"
        lines.append(
            f"| {r.task} | {r.path} | {value} | {_fmt(r.ratio, '.2f')}x | "
            f"{_fmt(None if r.flops is None else r.flops / 1e9, ',.0f')} | "
            f"{_fmt(None if r.peak_fraction is None else 100 * r.peak_fraction, '.0f')} | "
            f"{_fmt(r.accuracy, '.4f')} | {_fmt(r.accuracy_diff, '+.4f')} | "
            f"{_fmt(r.pred_diff, 'd')} | {r.note} |"
        )
    d = peak.get("detail", {})
    lines.append("")
    lines.append(
        f"peak ({peak.get('n')}^3 GEMM, best of torch.mm and a 1x1 oneDNN convolution): "
        f"fp32 {peak['fp32'] / 1e9:,.0f} GFLOP/s (mm {d.get('fp32_mm', 0) / 1e9:,.0f}, "
        f"conv {d.get('fp32_conv1x1', 0) / 1e9:,.0f}); bf16 {peak['bf16'] / 1e9:,.0f} GFLOP/s "
        f"(mm {d.get('bf16_mm', 0) / 1e9:,.0f}, conv {d.get('bf16_conv1x1', 0) / 1e9:,.0f})"
    )
    return "\n".join(lines)
