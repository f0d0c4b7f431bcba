"""The benchmark as one picture: speed-up over the baseline and fraction of peak, per path.

Two panels share the rows so a reader sees at once which paths are fast, which goal each
task has, and how close each path runs to what the machine can do at its precision.
"""

from __future__ import annotations

import os
from pathlib import Path

from .measure import Row
from .verdict import GOALS, goal_for

COLOURS = {"fp32": "#4c72b0", "bf16": "#dd8452", "mixed": "#55a868"}


def plot_rows(rows: list[Row], path: str | os.PathLike, title: str = "") -> Path:
    """Horizontal bars: left the speed-up (goal marked), right the % of peak (40% marked)."""
    from ..report import plt, save_figure

    shown = [r for r in rows if r.ratio is not None]
    labels = [f"{r.task}: {r.path}" for r in shown]
    fig, (a, b) = plt.subplots(
        1,
        2,
        figsize=(13, 0.42 * len(shown) + 1.4),
        sharey=True,
        width_ratios=[3, 2],
        layout="constrained",  # tight_layout gives up on short figures with 2-line labels
    )
    ys = range(len(shown))
    colours = [COLOURS.get(r.precision, "grey") for r in shown]
    a.barh(ys, [r.ratio for r in shown], color=colours)
    for y, r in zip(ys, shown, strict=True):
        a.text(r.ratio, y, f" {r.ratio:.2f}x", va="center", fontsize=7)
        goal = None if r.baseline else goal_for(r)
        if goal:
            a.plot([goal, goal], [y - 0.4, y + 0.4], color="black", lw=1.5)
        if r.peak_fraction:  # what this path would reach at 100% of its precision's peak
            ceiling = r.ratio / r.peak_fraction
            a.plot([ceiling, ceiling], [y - 0.4, y + 0.4], color="grey", lw=1.0, ls="--")
    a.axvline(1.0, color="grey", lw=0.8, ls=":")
    a.set_xlim(0, 1.25 * max(1.0, a.get_xlim()[1]))  # room for the value labels
    a.set_yticks(list(ys), labels, fontsize=7)
    a.invert_yaxis()
    a.set_xlabel(
        "times faster than the baseline\n(black: the goal; grey dashes: this path at 100% of peak)"
    )
    fractions = [100 * (r.peak_fraction or 0.0) for r in shown]
    b.barh(ys, fractions, color=colours)
    for y, r, f in zip(ys, shown, fractions, strict=True):
        b.text(f, y, f" {f:.0f}%" if r.peak_fraction else " not counted", va="center", fontsize=7)
    b.axvline(100 * GOALS["peak"], color="black", lw=1.0, ls="--")
    # room for the labels, also past 100% (a peak measured on a busy machine reads low)
    b.set_xlim(0, max([110.0, *(1.2 * f for f in fractions)]))
    b.set_xlabel("% of this machine's measured peak for the path's precision")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in COLOURS.values()]
    b.legend(handles, list(COLOURS), fontsize=7, loc="lower right")
    if title:
        fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)
