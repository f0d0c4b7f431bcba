"""What a recipe runs on: [model] (a registry name or package.module:factory, its keyword
arguments, an optional checkpoint), the older [dense] width/checkpoint form of the study's
VGG, and [data] (folder, image size, normalisation, validation hold-out, subsets)."""

from __future__ import annotations

import difflib
import inspect
import re
from typing import Any

from ..errors import RecipeError
from ..models import REGISTRY
from ..train import TrainConfig
from .recipe_schema import (
    ANY,
    Field,
    check_fields,
    check_keys,
    expect,
    integer,
    is_int,
    is_num,
    number,
    table,
    train_config,
)

_SPEC = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
_SUBSET = Field(lambda v: is_int(v) and v > 0, "an integer > 0 (omit the key to use every image)")
DATA_FIELDS = {
    "dir": Field(lambda v: isinstance(v, str) and v.strip() != "", "a folder path"),
    "image_size": integer(0, strict=True),
    "normalize": ANY,
    "val_size": integer(0),
    "val_fraction": number(0, 1, lo_open=True),
    "train_subset": _SUBSET,
    "test_subset": _SUBSET,
    "scan_subset": _SUBSET,
}
VAL_SIZE = 5000
# keyword arguments every registry factory takes, and what they must be
REGISTRY_ARGS = {
    "width": number(0, lo_open=True),
    "num_classes": integer(0, strict=True),
    "in_channels": integer(0, strict=True),
}


# ----- [data] -----


def _normalize(v: Any, file: str) -> Any:
    """None (the data set's default), 'none', or {mean: [...], std: [...]} per channel."""
    if v is None or v == "none":
        return v
    key = "data.normalize"
    expect(isinstance(v, dict), file, key, "'none' or a table {mean = [...], std = [...]}", v)
    check_keys(v, ("mean", "std"), file, key)
    out = {}
    for k, lo in (("mean", None), ("std", 0.0)):
        vals = v.get(k)
        expect(
            isinstance(vals, list)
            and len(vals) > 0
            and all(is_num(x) and (lo is None or x > lo) for x in vals),
            file,
            f"{key}.{k}",
            "a non-empty list of numbers, one per channel" + (" (each > 0)" if lo == 0 else ""),
            vals,
        )
        out[k] = [float(x) for x in vals]
    expect(
        len(out["mean"]) == len(out["std"]),
        file,
        f"{key}.std",
        f"as long as {key}.mean ({len(out['mean'])} channels)",
        v["std"],
    )
    return out


def parse_data(raw: Any, file: str) -> dict[str, Any]:
    """[data] with every key present (None when absent; val_size 5000 unless val_fraction)."""
    d = table(raw, file, "data", DATA_FIELDS)
    check_fields(d, DATA_FIELDS, file, "data")
    if "val_size" in d and "val_fraction" in d:
        raise RecipeError(
            f"{file}: keys 'data.val_size' and 'data.val_fraction' both given; keep one"
        )
    out = {k: d.get(k) for k in DATA_FIELDS}
    out["normalize"] = _normalize(d.get("normalize"), file)
    if out["val_fraction"] is None:
        out["val_size"] = d.get("val_size", VAL_SIZE)
    else:
        out["val_fraction"] = float(out["val_fraction"])
    return out


def has_validation(data: dict[str, Any]) -> bool:
    """Whether [data] holds images out for a validation split."""
    return data["val_fraction"] is not None or data["val_size"] > 0


# ----- [model] and the older [dense] -----


def _plain(v: Any) -> bool:
    """A value JSON writes and reads back unchanged (no dates, no inf/nan)."""
    if isinstance(v, bool | str) or is_int(v) or is_num(v):
        return True
    if isinstance(v, list):
        return all(_plain(x) for x in v)
    if isinstance(v, dict):
        return all(isinstance(k, str) and _plain(x) for k, x in v.items())
    return False


def _model_name(name: Any, file: str) -> str:
    expect(
        isinstance(name, str) and name != "",
        file,
        "model.name",
        f"a registry model ({', '.join(sorted(REGISTRY))}) or package.module:factory",
        name,
    )
    if name.lower() in REGISTRY:
        return name.lower()
    if _SPEC.match(name):
        return name
    close = difflib.get_close_matches(name.lower(), sorted(REGISTRY), n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise RecipeError(
        f"{file}: key 'model.name' must be a registry model ({', '.join(sorted(REGISTRY))}) "
        f"or package.module:factory (got {name!r}){hint}"
    )


def _registry_args(name: str, kwargs: dict[str, Any], file: str) -> None:
    """Arguments of a registry model: names its factory takes, values of the right type."""
    params = inspect.signature(REGISTRY[name]).parameters
    named = [p for p, v in params.items() if v.kind in (v.POSITIONAL_OR_KEYWORD, v.KEYWORD_ONLY)]
    check_keys(kwargs, [*named, "name", "checkpoint"], file, "model")
    check_fields(kwargs, {**{p: ANY for p in named}, **REGISTRY_ARGS}, file, "model")


def parse_model(raw: Any, file: str) -> dict[str, Any]:
    """[model] -> {"name", "kwargs", "checkpoint"}; every key but name/checkpoint is an
    argument of the factory."""
    t = raw
    expect(isinstance(t, dict), file, "model", "a table [model]", t)
    expect("name" in t, file, "model.name", "given (a registry model or module:factory)", None)
    name = _model_name(t["name"], file)
    ck = t.get("checkpoint", "")
    expect(isinstance(ck, str), file, "model.checkpoint", "a path or URL string", ck)
    kwargs = {k: v for k, v in t.items() if k not in ("name", "checkpoint")}
    for k, v in kwargs.items():
        expect(k.isidentifier(), file, f"model.{k}", "named like a Python argument", k)
        expect(
            _plain(v),
            file,
            f"model.{k}",
            "a plain value (finite number, text, true/false, list or table)",
            v,
        )
    if name in REGISTRY:
        _registry_args(name, kwargs, file)
    return {"name": name, "kwargs": kwargs, "checkpoint": ck}


def _legacy_dense(dense: dict[str, Any], file: str) -> dict[str, Any]:
    """The study's VGG from [dense] width/checkpoint, as [model] would say it."""
    width = dense.get("width", 1.0)
    expect(is_num(width) and width > 0, file, "dense.width", "a number > 0", width)
    ck = dense.get("checkpoint", "")
    expect(isinstance(ck, str), file, "dense.checkpoint", "a path or URL string", ck)
    return {"name": "vgg", "kwargs": {"width": float(width)}, "checkpoint": ck}


def parse_model_and_dense(
    raw: dict[str, Any], file: str, seed: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(rec["model"], rec["dense"]) from [model] and/or [dense] (+ [dense.train])."""
    if "model" not in raw and "dense" not in raw:
        raise RecipeError(
            f"{file}: no model: add a [model] table (name = 'vgg', width = 0.25, ...) "
            "or the older [dense] table (width, checkpoint)"
        )
    dense = table(raw.get("dense"), file, "dense", ("width", "checkpoint", "train"))
    train: TrainConfig = train_config(dense.get("train"), file, "dense.train", seed)
    if "model" in raw:
        for k in ("width", "checkpoint"):
            if k in dense:
                where = "model.checkpoint" if k == "checkpoint" else "[model] (width = ...)"
                raise RecipeError(
                    f"{file}: key 'dense.{k}' conflicts with [model]; say it once, in {where}"
                )
        model = parse_model(raw["model"], file)
    else:
        model = _legacy_dense(dense, file)
    return model, {"width": vgg_width(model), "checkpoint": model["checkpoint"], "train": train}


def vgg_width(model: dict[str, Any]) -> float | None:
    """The study VGG's width for the report's notes; None for any other network."""
    return float(model["kwargs"].get("width", 1.0)) if model["name"] == "vgg" else None
