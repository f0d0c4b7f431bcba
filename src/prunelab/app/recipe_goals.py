"""The [goals] table of a recipe (speed-up goals with accuracy bounds, against a dense control
and Torch-Pruning's own pruner; run by app.goals_flow): keys, defaults and checks."""

from __future__ import annotations

from typing import Any

from .recipe_channels import FINETUNE_DEFAULTS, IMPORTANCES, SCAN_DEFAULTS, SCAN_FIELDS
from .recipe_inputs import has_validation
from .recipe_schema import (
    ANY,
    BOOL,
    SEED,
    check_fields,
    choice,
    expect,
    integer,
    number,
    sparsities,
    sub_table,
    table,
    train_config,
)

TARGET_FIELDS = {
    "batch_size": integer(1),
    "speedup": number(1, lo_open=True),
    "max_drop": number(0),
    # optional: this target's channel rounding instead of [goals] round_to (the counts a
    # kernel runs fastest with differ by batch size: measured, README)
    "round_to": integer(1),
    # optional: this target's widening (prunelab.channels.widen) instead of [goals] widen
    "widen": integer(0),
}
REQUIRED_TARGET_FIELDS = ("batch_size", "speedup", "max_drop")
GOALS_FIELDS = {
    "targets": ANY,
    "margin": number(1),
    "seeds": ANY,
    "peer": BOOL,
    "control": BOOL,
    "importance": choice(IMPORTANCES),
    "round_to": integer(1),
    "max_ratio": number(0, 1, lo_open=True),
    "band": number(0, 1, hi_open=True),
    "step": number(0, 1, lo_open=True),
    "widen": integer(0),
    # over-complete layers (a first conv on RGB) cut to their filters' effective rank at
    # this share of the energy first (prunelab.channels.rank); absent: no floor
    "rank_energy": number(0, 1, lo_open=True, hi_open=True),
    "scan": ANY,
    "finetune": ANY,
    "reps": integer(1),
    "threads": integer(1),
}


def parse_goals(raw: Any, file: str, seed: int, rec: dict[str, Any]) -> dict[str, Any]:
    """Check a [goals] table fully (before any work) and fill in its defaults."""
    raw = table(raw, file, "goals", GOALS_FIELDS)
    check_fields(raw, GOALS_FIELDS, file, "goals")
    targets = raw.get("targets")
    expect(
        isinstance(targets, list) and targets and all(isinstance(t, dict) for t in targets),
        file,
        "goals.targets",
        "a list of {batch_size, speedup, max_drop} tables",
        targets,
    )
    parsed = []
    for i, t in enumerate(targets):
        check_fields(t, TARGET_FIELDS, file, f"goals.targets[{i}]")
        missing = [k for k in REQUIRED_TARGET_FIELDS if k not in t]
        expect(not missing, file, f"goals.targets[{i}]", "batch_size, speedup and max_drop", t)
        parsed.append({k: t[k] for k in TARGET_FIELDS if k in t})
    sizes = [t["batch_size"] for t in parsed]
    expect(len(set(sizes)) == len(sizes), file, "goals.targets", "one target per batch size", sizes)
    seeds = raw.get("seeds", [seed])
    expect(
        isinstance(seeds, list)
        and seeds
        and all(SEED.ok(s) for s in seeds)
        and len(set(seeds)) == len(seeds),
        file,
        "goals.seeds",
        "a list of distinct seeds (integers >= 0)",
        seeds,
    )
    scan = {**SCAN_DEFAULTS, **sub_table(raw, "goals", "scan", SCAN_FIELDS, file)}
    scan["ratios"] = sparsities(scan["ratios"], file, "goals.scan.ratios", open_ends=True)
    ft = raw.get("finetune", {})
    expect(isinstance(ft, dict), file, "goals.finetune", "a table", ft)
    cfg = train_config({**FINETUNE_DEFAULTS, **ft}, file, "goals.finetune", seed)
    cfg.keep_best = False  # every model keeps its last epoch: the same budget for all
    expect(
        has_validation(rec["data"]),
        file,
        "data.val_size",
        "> 0 (or data.val_fraction given): the channel scan runs on the validation split",
        rec["data"]["val_size"],
    )
    return {
        "targets": parsed,
        "margin": raw.get("margin", 1.08),
        "seeds": seeds,
        "peer": raw.get("peer", True),
        "control": raw.get("control", True),
        "importance": raw.get("importance", "l2"),
        "round_to": raw.get("round_to"),
        "max_ratio": raw.get("max_ratio", 0.8),
        "band": raw.get("band"),
        "step": raw.get("step", 0.05),
        "widen": raw.get("widen", 0),
        "rank_energy": raw.get("rank_energy"),
        "scan": scan,
        "finetune": cfg,
        "reps": raw.get("reps", 30),
        "threads": raw.get("threads"),
    }
