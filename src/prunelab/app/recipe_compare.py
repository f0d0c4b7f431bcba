"""The [compare] table of a recipe ("beyond the study", run by app.beyond): its keys,
defaults and checks, so that parsing a recipe never imports the flow that runs it."""

from __future__ import annotations

from typing import Any

from .recipe_inputs import has_validation
from .recipe_schema import (
    ANY,
    BOOL,
    Field,
    expect,
    integer,
    number,
    sparsities,
    sub_table,
    table,
    train_config,
)

METHOD_NAMES = ("uniform", "global", "sensitivity", "gradual")
DEFAULT_METHODS = ["uniform", "sensitivity", "gradual"]
# the study's SGD fine-tuning (recipes/quick.toml), fewer epochs
FINETUNE_DEFAULTS = {
    "optimizer": "sgd",
    "lr": 0.01,
    "momentum": 0.9,
    "nesterov": False,
    "weight_decay": 5e-4,
    "schedule": "cosine",
    "label_smoothing": 0.0,
    "epochs": 3,
}
SCAN_DEFAULTS = {
    "sparsities": [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95],
    "bf16": False,
    "batch_size": 1000,
}
PLAN_DEFAULTS = {"default_cap": 0.95, "first_last_cap": 0.8, "max_drop": None}
GRADUAL_DEFAULTS = {"initial_sparsity": 0.0, "prune_every": 10, "prune_steps_fraction": 0.5}
COMPARE_KEYS = {"sparsities", "methods", "scope", "scan", "plan", "finetune", "gradual"}

SCAN_FIELDS = {"sparsities": ANY, "bf16": BOOL, "batch_size": integer(0, strict=True)}
PLAN_FIELDS = {
    "default_cap": number(0, 1),
    "first_last_cap": number(0, 1),
    "max_drop": number(0),
}
GRADUAL_FIELDS = {
    "initial_sparsity": number(0, 1),
    "prune_every": Field(integer(1).ok, "an integer >= 1 (optimizer steps)"),
    "prune_steps_fraction": number(0, 1, lo_open=True, hi_open=False),
}


def parse_compare(raw: Any, file: str, seed: int, rec: dict[str, Any]) -> dict[str, Any]:
    """Check a [compare] table fully (before any work) and fill in its defaults."""
    raw = table(raw, file, "compare", COMPARE_KEYS)
    sps = sparsities(
        raw.get("sparsities", [0.6, 0.8, 0.9]), file, "compare.sparsities", open_ends=True
    )
    methods = raw.get("methods", DEFAULT_METHODS)
    expect(
        isinstance(methods, list)
        and len(methods) > 0
        and all(isinstance(m, str) and m in METHOD_NAMES for m in methods)
        and len(set(methods)) == len(methods),
        file,
        "compare.methods",
        f"a list of distinct methods from {', '.join(METHOD_NAMES)}",
        methods,
    )
    scope = raw.get("scope", "conv")
    expect(scope in ("conv", "linear", "all"), file, "compare.scope", "conv, linear or all", scope)
    scan = {**SCAN_DEFAULTS, **sub_table(raw, "compare", "scan", SCAN_FIELDS, file)}
    scan["sparsities"] = sparsities(scan["sparsities"], file, "compare.scan.sparsities")
    plan = {**PLAN_DEFAULTS, **sub_table(raw, "compare", "plan", PLAN_FIELDS, file)}
    gradual = {**GRADUAL_DEFAULTS, **sub_table(raw, "compare", "gradual", GRADUAL_FIELDS, file)}
    expect(
        gradual["initial_sparsity"] < min(sps),
        file,
        "compare.gradual.initial_sparsity",
        f"a number in [0, {min(sps)}) (below every target)",
        gradual["initial_sparsity"],
    )
    ft = raw.get("finetune", {})
    expect(isinstance(ft, dict), file, "compare.finetune", "a table", ft)
    expect(
        not ft.get("keep_best", False),
        file,
        "compare.finetune.keep_best",
        "false (gradual masks change during training; every method keeps its last epoch)",
        ft.get("keep_best"),
    )
    cfg = train_config({**FINETUNE_DEFAULTS, **ft}, file, "compare.finetune", seed)
    expect(
        has_validation(rec["data"]),
        file,
        "data.val_size",
        "> 0 (or data.val_fraction given) for [compare]: the sensitivity scan runs on the "
        "validation split",
        rec["data"]["val_size"],
    )
    return {
        "sparsities": sps,
        "methods": list(methods),
        "scope": scope,
        "scan": scan,
        "plan": plan,
        "gradual": gradual,
        "finetune": cfg,
    }
