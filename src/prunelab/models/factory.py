"""Build a model from a name: a registry entry, or any user network as package.module:factory.

Only the user names code to import (a flag or a recipe); a checkpoint only records the name,
and loading it asks the user to repeat the name instead of importing what a file says.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import re
import sys
from collections.abc import Callable, Iterable
from typing import Any

from torch import nn

from ..errors import PrunelabError
from .arch import make_arch
from .registry import REGISTRY

_SPEC = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
_PYTHON_WORDS = {"True": True, "False": False, "None": None}
_NAMED = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


class ModelError(PrunelabError):
    """A model name, factory or model argument is wrong (names the spec and what was expected)."""


def _one_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


def registry_name(spec: str) -> str | None:
    """The registry key `spec` names (case-insensitive), or None."""
    return spec.lower() if isinstance(spec, str) and spec.lower() in REGISTRY else None


def _unknown(spec: str) -> ModelError:
    return ModelError(
        f"unknown model {spec!r}: expected one of {', '.join(sorted(REGISTRY))}, "
        "or package.module:factory for your own network"
    )


def _cwd_importable() -> None:
    """Make the working directory importable, as `python -m` does."""
    cwd = os.getcwd()
    if not any(os.path.abspath(p or os.curdir) == cwd for p in sys.path):
        sys.path.insert(0, cwd)
    importlib.invalidate_caches()  # a module written moments ago must be found


def resolve_factory(spec: str) -> Callable[..., Any]:
    """The callable `spec` names; one-line ModelError for every way it can be wrong."""
    if not isinstance(spec, str) or not spec:
        raise ModelError(f"model must be a name, got {spec!r}")
    name = registry_name(spec)
    if name:
        return REGISTRY[name]
    if ":" not in spec:
        raise _unknown(spec)
    if not _SPEC.match(spec):
        raise ModelError(
            f"model {spec!r} is malformed: expected package.module:factory "
            "(dotted Python names, one colon)"
        )
    module_name, attr = spec.split(":")
    _cwd_importable()
    try:
        module = importlib.import_module(module_name)
    except (Exception, SystemExit) as e:  # ImportError, SyntaxError, whatever its code raises
        raise ModelError(
            f"model {spec}: module {module_name} does not import ({_one_line(e)})"
        ) from None
    obj: Any = module
    for i, part in enumerate(attr.split(".")):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            owner = ".".join([module_name, *attr.split(".")[:i]])
            raise ModelError(
                f"model {spec}: {owner} has no attribute {part!r} (expected a factory function "
                "or nn.Module class)"
            ) from None
    if not callable(obj):
        raise ModelError(
            f"model {spec}: {module_name}.{attr} is a {type(obj).__name__}, expected a callable "
            "that returns an nn.Module"
        )
    return obj


def _parameters(fn: Callable[..., Any]) -> dict[str, inspect.Parameter] | None:
    try:
        return dict(inspect.signature(fn).parameters)
    except (TypeError, ValueError):  # builtins and some C callables have no signature
        return None


def _takes_any(params: dict[str, inspect.Parameter] | None) -> bool:
    return params is None or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def accepts(fn: Callable[..., Any], name: str) -> bool:
    """Whether `fn` takes keyword `name` (a **kwargs catch-all counts)."""
    params = _parameters(fn)
    if params is None:
        return False
    if name in params and params[name].kind in _NAMED:
        return True
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _check_names(spec: str, fn: Callable[..., Any], kwargs: dict[str, Any]) -> None:
    params = _parameters(fn)
    if _takes_any(params):
        return
    assert params is not None
    named = [n for n, p in params.items() if p.kind in _NAMED]
    for key in kwargs:
        if key not in named:
            raise ModelError(
                f"model {spec} has no argument {key!r} (it takes: {', '.join(named) or 'none'})"
            )


def _describe(obj: Any) -> str:
    text = repr(obj)
    text = text if len(text) <= 60 and "\n" not in text else text.splitlines()[0][:57] + "..."
    return f"a {type(obj).__name__} ({text})"


def build_model(
    spec: str,
    kwargs: dict[str, Any] | None = None,
    num_classes: int | None = None,
    in_channels: int | None = None,
    input_shape: Iterable[int] | None = None,
    normalize: dict[str, Any] | None = None,
) -> nn.Module:
    """Build `spec` (a registry name or package.module:factory) and attach its record.

    num_classes/in_channels are passed only to factories that take them, and the record
    (`model.prunelab_arch`) holds exactly the arguments the factory got, so a checkpoint
    can rebuild the same network from it.
    """
    factory = resolve_factory(spec)
    name = registry_name(spec) or spec
    if kwargs is not None and not isinstance(kwargs, dict):
        raise ModelError(f"model {spec}: arguments must be a dict, got {type(kwargs).__name__}")
    try:
        call: dict[str, Any] = json.loads(json.dumps(kwargs or {}))
    except (TypeError, ValueError) as e:
        raise ModelError(
            f"model {spec}: arguments must be plain values (numbers, text, lists): {e}"
        ) from None
    for key, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if value is None:
            continue
        if key in call and call[key] != value:
            raise ModelError(
                f"model {spec}: argument {key}={call[key]!r} disagrees with the {value} asked for"
            )
        if accepts(factory, key):
            call[key] = int(value)
    _check_names(spec, factory, call)
    try:
        model = factory(**call)
    except (Exception, SystemExit) as e:
        raise ModelError(f"model {spec}: building it raised {_one_line(e)}") from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"model {spec} returned {_describe(model)}, expected an nn.Module")
    known = in_channels if in_channels is not None else call.get("in_channels")
    shape = list(input_shape) if input_shape is not None else [known or 3, 32, 32]
    if known is not None and shape and shape[0] != known:
        raise ModelError(
            f"model {spec}: input_shape {shape} has {shape[0]} channels, in_channels is {known}"
        )
    try:
        model.prunelab_arch = make_arch(name, call, shape, normalize)
    except ValueError as e:
        raise ModelError(f"model {spec}: {e}") from None
    return model


def parse_model_args(items: Iterable[str] | None) -> dict[str, Any]:
    """`--model-arg key=value` items as kwargs: values read as JSON when they parse, else text."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, text = str(item).partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ModelError(f"--model-arg {item!r}: expected key=value (e.g. width=0.5)")
        if key in out:
            raise ModelError(f"--model-arg {key} is given twice")
        out[key] = _value(text.strip())
    return out


def _value(text: str) -> Any:
    if text in _PYTHON_WORDS:
        return _PYTHON_WORDS[text]
    try:
        return json.loads(text)
    except ValueError:
        return text
