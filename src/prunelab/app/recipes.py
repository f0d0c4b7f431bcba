"""Recipes: a TOML file naming the study's steps, parsed and checked in full before any
work starts (app.run runs them). Each setting has one key in one place: unknown keys,
wrong types, clashing names and clashing step tags are refused with one line that names
the file and the key.
"""

from __future__ import annotations

import json
import os
import tomllib
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..errors import RecipeError
from .recipe_channels import parse_channels
from .recipe_compare import parse_compare
from .recipe_goals import parse_goals
from .recipe_inputs import has_validation, parse_data, parse_model_and_dense, vgg_width
from .recipe_schema import (
    ANY,
    BOOL,
    SEED,
    TEXT,
    Field,
    check_fields,
    choice,
    expect,
    integer,
    sparsities,
    step_tag,
    table,
    train_config,
)

__all__ = ["load_recipe", "resolved_recipe", "step_tag", "train_config"]

TOP_KEYS = {
    "name",
    "description",
    "seed",
    "data",
    "model",
    "dense",
    "evaluate",
    "sensitivity",
    "prune",
    "finetune",
    "compare",
    "channels",
    "goals",
}
_RUN_NAME = Field(
    lambda v: isinstance(v, str) and v not in ("", ".", "..") and not set(v) & set("/\\"),
    "a short name for the run folder (no slashes)",
)
TOP_FIELDS = {
    **{k: ANY for k in TOP_KEYS},
    "name": _RUN_NAME,
    "description": TEXT,
    "seed": SEED,
}
EVALUATE_FIELDS = {"bf16": BOOL, "batch_size": integer(0, strict=True)}
SENSITIVITY_FIELDS = {"sparsities": ANY, "split": choice(("test", "val")), "bf16": BOOL}
PRUNE_FIELDS = {"scope": choice(("conv", "linear", "all")), "sparsities": ANY}
NOT_WITH_COMPARE = ("sensitivity", "prune", "finetune")


def _read(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise RecipeError(f"{path}: recipe does not exist") from None
    except OSError as e:
        raise RecipeError(f"{path}: cannot read it ({e.strerror})") from None
    except UnicodeDecodeError:
        raise RecipeError(f"{path}: not a text file (expected TOML)") from None
    except tomllib.TOMLDecodeError as e:
        raise RecipeError(f"{path}: not valid TOML ({e})") from None


def _section(raw: dict[str, Any], key: str, spec: dict[str, Field], file: str) -> dict[str, Any]:
    t = table(raw.get(key), file, key, spec)
    check_fields(t, spec, file, key)
    return t


def _finetune(raw: Any, file: str, seed: int) -> list[dict[str, Any]]:
    """[[finetune]] runs, each with a distinct name (default: its optimizer's)."""
    raw = [] if raw is None else raw
    expect(
        isinstance(raw, list) and all(isinstance(t, dict) for t in raw),
        file,
        "finetune",
        "an array of tables [[finetune]]",
        raw,
    )
    runs: list[dict[str, Any]] = []
    for i, t in enumerate(raw):
        key = f"finetune[{i}]"
        cfg = train_config(t, file, key, seed, extra=("name",))
        cfg.keep_best = t.get("keep_best", True)  # fine-tuning keeps its best epoch unless told
        name = t.get("name", t.get("optimizer", f"run{i}"))
        expect(
            isinstance(name, str) and name.isidentifier(),
            file,
            f"{key}.name",
            "a short identifier like 'sgd'",
            name,
        )
        for j, other in enumerate(runs):
            if other["name"] == name:
                named = "name" in t and "name" in raw[j]
                how = "" if named else " (a run without a name takes its optimizer's)"
                raise RecipeError(
                    f"{file}: finetune[{j}] and {key} are both named {name!r}{how}; give "
                    f'{key} its own name = "..." (e.g. name = "{name}_{i}")'
                )
        runs.append({"name": name, "config": cfg})
    return runs


def load_recipe(path: str | os.PathLike) -> dict[str, Any]:
    """Parse and check a recipe fully before any work starts."""
    path = Path(path)
    file = str(path)
    raw = _read(path)
    check_fields(raw, TOP_FIELDS, file, "")
    seed = raw.get("seed", 0)
    rec: dict[str, Any] = {
        "name": raw.get("name", path.stem),
        "file": file,
        "description": raw.get("description", ""),
        "seed": seed,
        "data": parse_data(raw.get("data"), file),
    }
    rec["model"], rec["dense"] = parse_model_and_dense(raw, file, seed)
    ev = _section(raw, "evaluate", EVALUATE_FIELDS, file)
    rec["evaluate"] = {"bf16": ev.get("bf16", False), "batch_size": ev.get("batch_size", 1000)}
    if "sensitivity" in raw:
        s = _section(raw, "sensitivity", SENSITIVITY_FIELDS, file)
        rec["sensitivity"] = {
            "sparsities": sparsities(
                s.get("sparsities", [0.4, 0.5, 0.6, 0.7, 0.8, 0.9]), file, "sensitivity.sparsities"
            ),
            "split": s.get("split", "test"),
            "bf16": s.get("bf16", False),
        }
        expect(
            rec["sensitivity"]["split"] == "test" or has_validation(rec["data"]),
            file,
            "sensitivity.split",
            "'test' when data.val_size is 0 (there is no validation split)",
            "val",
        )
    p = _section(raw, "prune", PRUNE_FIELDS, file)
    rec["prune"] = {
        "scope": p.get("scope", "conv"),
        "sparsities": sparsities(p.get("sparsities", [0.4, 0.5, 0.6]), file, "prune.sparsities"),
    }
    rec["finetune"] = _finetune(raw.get("finetune"), file, seed)
    if "compare" in raw:  # "beyond the study": compare pruning methods (app.beyond runs it)
        for k in NOT_WITH_COMPARE:
            if k in raw:
                raise RecipeError(
                    f"{file}: key '{k}' is not used by a [compare] recipe; its settings live "
                    "under [compare] (sparsities, scope, scan, finetune)"
                )
        rec["compare"] = parse_compare(raw["compare"], file, seed, rec)
    if "channels" in raw:  # fine-grained against channel pruning (app.channels_flow runs it)
        for k in (*NOT_WITH_COMPARE, "compare"):
            if k in raw:
                raise RecipeError(
                    f"{file}: key '{k}' is not used by a [channels] recipe; its settings live "
                    "under [channels] (ratios, methods, scan, finetune, latency)"
                )
        rec["channels"] = parse_channels(raw["channels"], file, seed, rec)
    if "goals" in raw:  # speed-up goals against a control and the peer (app.goals_flow)
        for k in (*NOT_WITH_COMPARE, "compare", "channels"):
            if k in raw:
                raise RecipeError(
                    f"{file}: key '{k}' is not used by a [goals] recipe; its settings live "
                    "under [goals] (targets, seeds, peer, control, scan, finetune)"
                )
        rec["goals"] = parse_goals(raw["goals"], file, seed, rec)
    return rec


def resolved_recipe(rec: dict[str, Any]) -> dict[str, Any]:
    """The recipe with every default filled in, as plain JSON (recorded in the run folder)."""
    return json.loads(json.dumps(rec, default=asdict))


def with_dense_checkpoint(rec: dict[str, Any], path: str, arch: dict[str, Any]) -> dict[str, Any]:
    """The recipe started from the dense model in `path` instead of its own [model]: the
    network is the file's (`arch`, its architecture record), so the report names what ran."""
    model = {"name": arch["model"], "kwargs": dict(arch["kwargs"]), "checkpoint": str(path)}
    dense = {**rec["dense"], "width": vgg_width(model), "checkpoint": model["checkpoint"]}
    return {**rec, "model": model, "dense": dense}
