"""The [channels] table of a recipe (fine-grained against channel pruning, run by
app.channels_flow): its keys, defaults and checks, kept apart from the flow that runs it."""

from __future__ import annotations

from typing import Any

from .recipe_compare import FINETUNE_DEFAULTS as COMPARE_FINETUNE
from .recipe_inputs import has_validation
from .recipe_schema import (
    ANY,
    Field,
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

METHODS = ("fine", "uniform", "guided")
IMPORTANCES = ("l2", "l1", "lab", "bn", "group")
# the beyond comparison's SGD fine-tuning, with the quick study's smoothing, bf16 and budget
FINETUNE_DEFAULTS = {**COMPARE_FINETUNE, "label_smoothing": 0.1, "epochs": 2, "bf16": True}
# calibrate: training images each probe's BatchNorm statistics are re-estimated on (0: off)
SCAN_DEFAULTS = {"ratios": [0.25, 0.5, 0.75], "calibrate": 1024}
LATENCY_DEFAULTS = {"batch_sizes": [1, 64], "threads": None, "reps": 30}
CHANNELS_FIELDS = {
    "ratios": ANY,
    "methods": ANY,
    "importance": choice(IMPORTANCES),
    "round_to": integer(1),
    "calibrate": integer(0),
    "scan": ANY,
    "finetune": ANY,
    "latency": ANY,
}
# recover / recover_lr (optional, off when absent): each probe fine-tuned on that many training
# images before it is scored (prunelab.channels.scan); absent keys keep older runs' settings
SCAN_FIELDS = {
    "ratios": ANY,
    "calibrate": integer(0),
    "recover": integer(0),
    "recover_lr": number(0, lo_open=True),
}
LATENCY_FIELDS = {
    "batch_sizes": Field(
        lambda v: isinstance(v, list) and v and all(isinstance(b, int) and b >= 1 for b in v),
        "a list of batch sizes >= 1",
    ),
    "threads": integer(1),
    "reps": integer(1),
}


def parse_channels(raw: Any, file: str, seed: int, rec: dict[str, Any]) -> dict[str, Any]:
    """Check a [channels] table fully (before any work) and fill in its defaults."""
    raw = table(raw, file, "channels", CHANNELS_FIELDS)
    check_fields(raw, CHANNELS_FIELDS, file, "channels")
    ratios = sparsities(raw.get("ratios", [0.3, 0.5]), file, "channels.ratios", open_ends=True)
    methods = raw.get("methods", list(METHODS))
    expect(
        isinstance(methods, list)
        and methods
        and all(m in METHODS for m in methods)
        and len(set(methods)) == len(methods),
        file,
        "channels.methods",
        f"a list of distinct methods from {', '.join(METHODS)}",
        methods,
    )
    scan = {**SCAN_DEFAULTS, **sub_table(raw, "channels", "scan", SCAN_FIELDS, file)}
    scan["ratios"] = sparsities(scan["ratios"], file, "channels.scan.ratios", open_ends=True)
    latency = {**LATENCY_DEFAULTS, **sub_table(raw, "channels", "latency", LATENCY_FIELDS, file)}
    ft = raw.get("finetune", {})
    expect(isinstance(ft, dict), file, "channels.finetune", "a table", ft)
    cfg = train_config({**FINETUNE_DEFAULTS, **ft}, file, "channels.finetune", seed)
    cfg.keep_best = False  # every method keeps its last epoch: the same budget for all
    expect(
        "guided" not in methods or has_validation(rec["data"]),
        file,
        "data.val_size",
        "> 0 (or data.val_fraction given): the channel scan behind 'guided' runs on the "
        "validation split",
        rec["data"]["val_size"],
    )
    return {
        "ratios": ratios,
        "methods": list(methods),
        "importance": raw.get("importance", "l2"),
        "round_to": raw.get("round_to"),
        # training images the pruned models' BatchNorm statistics are re-estimated on before
        # "before FT" is measured (0: scored as cut); fine-tuning is the same either way
        "calibrate": raw.get("calibrate", 0),
        "scan": scan,
        "latency": latency,
        "finetune": cfg,
    }
