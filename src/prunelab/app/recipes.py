"""Recipes: a TOML file naming the study's steps; `run_recipe` runs them, resumably.

Every step writes its outputs atomically into the run folder and is skipped when they
are already there, so rerunning after an interruption redoes only unfinished work.
"""

from __future__ import annotations

import json
import os
import time
import tomllib
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch

from ..errors import PrunelabError, RecipeError
from ..fileio import write_json
from ..train import TrainConfig

TRAIN_KEYS = {f.name for f in fields(TrainConfig)}
TOP_KEYS = {
    "name",
    "description",
    "seed",
    "data",
    "dense",
    "evaluate",
    "sensitivity",
    "prune",
    "finetune",
    "compare",
}


def _expect(cond: bool, file: str, key: str, expected: str, got: Any) -> None:
    if not cond:
        raise RecipeError(f"{file}: key '{key}' must be {expected} (got {got!r})")


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _sparsities(v: Any, file: str, key: str) -> list[float]:
    _expect(
        isinstance(v, list) and len(v) > 0 and all(_is_num(s) and 0 <= s <= 1 for s in v),
        file,
        key,
        "a non-empty list of sparsities in [0, 1]",
        v,
    )
    return [float(s) for s in v]


def train_config(table: dict[str, Any], file: str, key: str, seed: int) -> TrainConfig:
    """A [..train] or [[finetune]] table -> TrainConfig, naming unknown or bad keys."""
    extra = set(table) - TRAIN_KEYS - {"name"}
    _expect(
        not extra,
        file,
        f"{key}.{sorted(extra)[0] if extra else ''}",
        f"one of {', '.join(sorted(TRAIN_KEYS))}",
        sorted(extra),
    )
    cfg = TrainConfig(**{k: v for k, v in table.items() if k in TRAIN_KEYS})
    if "seed" not in table:
        cfg.seed = seed
    try:
        cfg.validate()
    except PrunelabError as e:
        raise RecipeError(f"{file}: [{key}] {e}") from None
    return cfg


def load_recipe(path: str | os.PathLike) -> dict[str, Any]:
    """Parse and check a recipe fully before any work starts."""
    path = Path(path)
    file = str(path)
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as e:
        raise RecipeError(f"{file}: cannot read it ({e.strerror})") from None
    except tomllib.TOMLDecodeError as e:
        raise RecipeError(f"{file}: not valid TOML ({e})") from None
    unknown = set(raw) - TOP_KEYS
    _expect(
        not unknown,
        file,
        sorted(unknown)[0] if unknown else "",
        f"one of {', '.join(sorted(TOP_KEYS))}",
        sorted(unknown),
    )
    seed = raw.get("seed", 0)
    _expect(
        isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0,
        file,
        "seed",
        "an integer >= 0",
        seed,
    )
    rec: dict[str, Any] = {
        "name": raw.get("name", path.stem),
        "file": file,
        "description": raw.get("description", ""),
        "seed": seed,
    }
    data = raw.get("data", {})
    for k in ("val_size", "train_subset", "test_subset"):
        if k in data:
            _expect(
                isinstance(data[k], int) and data[k] >= 0,
                file,
                f"data.{k}",
                "an integer >= 0",
                data[k],
            )
    rec["data"] = {
        "val_size": data.get("val_size", 5000),
        "train_subset": data.get("train_subset"),
        "test_subset": data.get("test_subset"),
    }
    dense = raw.get("dense", {})
    _expect("dense" in raw, file, "dense", "a table with width and checkpoint or train", None)
    width = dense.get("width", 1.0)
    _expect(_is_num(width) and width > 0, file, "dense.width", "a number > 0", width)
    ck = dense.get("checkpoint", "")
    _expect(isinstance(ck, str), file, "dense.checkpoint", "a path or URL string", ck)
    rec["dense"] = {
        "width": float(width),
        "checkpoint": ck,
        "train": train_config(dense.get("train", {}), file, "dense.train", seed),
    }
    ev = raw.get("evaluate", {})
    rec["evaluate"] = {
        "bf16": bool(ev.get("bf16", False)),
        "batch_size": int(ev.get("batch_size", 1000)),
    }
    if "sensitivity" in raw:
        s = raw["sensitivity"]
        split = s.get("split", "test")
        _expect(split in ("test", "val"), file, "sensitivity.split", "'test' or 'val'", split)
        rec["sensitivity"] = {
            "sparsities": _sparsities(
                s.get("sparsities", [0.4, 0.5, 0.6, 0.7, 0.8, 0.9]), file, "sensitivity.sparsities"
            ),
            "split": split,
            "bf16": bool(s.get("bf16", False)),
        }
    p = raw.get("prune", {})
    scope = p.get("scope", "conv")
    _expect(scope in ("conv", "all"), file, "prune.scope", "'conv' or 'all'", scope)
    rec["prune"] = {
        "scope": scope,
        "sparsities": _sparsities(p.get("sparsities", [0.4, 0.5, 0.6]), file, "prune.sparsities"),
    }
    ft = raw.get("finetune", [])
    _expect(isinstance(ft, list), file, "finetune", "an array of tables [[finetune]]", ft)
    runs = []
    for i, t in enumerate(ft):
        name = t.get("name", t.get("optimizer", f"run{i}"))
        _expect(
            isinstance(name, str) and name.isidentifier(),
            file,
            f"finetune[{i}].name",
            "a short identifier like 'sgd'",
            name,
        )
        cfg = train_config(t, file, f"finetune[{i}]", seed)
        cfg.keep_best = True
        runs.append({"name": name, "config": cfg})
    rec["finetune"] = runs
    if "compare" in raw:  # "beyond the study": compare pruning methods (see beyond.py)
        from .beyond import parse_compare

        rec["compare"] = parse_compare(raw["compare"], file, seed, rec)
    return rec


def _resolved(rec: dict[str, Any]) -> dict[str, Any]:
    """The recipe with every default filled in, as recorded in the run folder."""
    return json.loads(json.dumps(rec, default=asdict))


def run_recipe(
    rec: dict[str, Any],
    data_dir: str | os.PathLike | None,
    out: str | os.PathLike | None = None,
    cache: str | os.PathLike | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
    fresh: bool = False,
) -> dict[str, Any]:
    """Run the study a recipe describes; returns results.json's content."""
    from .study import Study

    out = Path(out or Path("runs") / rec["name"])
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "recipe.json", _resolved(rec))
    t0 = time.perf_counter()
    if "compare" in rec:
        from .beyond import run_beyond

        results = run_beyond(rec, data_dir, out, cache, torch.device(device), progress, fresh)
    else:
        study = Study(rec, data_dir, out, cache, torch.device(device), progress, fresh)
        results = study.run()
    print(f"study finished in {time.perf_counter() - t0:.0f} s; report: {out / 'report.md'}")
    return results
