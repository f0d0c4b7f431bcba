"""The one way prunelab reads a torch file: tensors and plain types only, never code.

`torch.load(weights_only=False)` runs whatever a crafted pickle asks for before any check
can look at the result, so every checkpoint, training state and cache goes through here.
A file that needs arbitrary unpickling is refused by name, saying what it holds.
"""

from __future__ import annotations

import io
import os
import pickle
import pickletools
import re
import zipfile
from typing import Any

import torch

from .errors import CheckpointError

_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


_MODULE_PREFIXES = ("torch.nn.modules.", "torch.nn.parallel.")
_MAX_PICKLE = 64 << 20


def pickle_globals(path: str | os.PathLike) -> list[str]:
    """The dotted names a torch zip file's pickle refers to, read by parsing, never running it.

    Empty when the file is not a torch zip archive or its pickle cannot be parsed.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            entry = next((i for i in archive.infolist() if i.filename.endswith("/data.pkl")), None)
            if entry is None or entry.file_size > _MAX_PICKLE:
                return []
            data = archive.read(entry)
        names, texts = [], []
        for op, arg, _ in pickletools.genops(io.BytesIO(data)):
            if op.name == "GLOBAL":
                names.append(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(texts) >= 2:
                names.append(f"{texts[-2]}.{texts[-1]}")
            elif isinstance(arg, str):
                texts.append(arg)
        return names
    except Exception:  # a damaged archive: torch's own message says so
        return []


def _what_needs_unpickling(message: str, path: str | os.PathLike | None = None) -> str:
    """Describe, from torch's refusal, the object a file would have had to unpickle."""
    found = _GLOBAL.search(message)
    name = found.group(1) if found else "an object"
    found_all = pickle_globals(path) if path is not None else []
    if name.startswith(_MODULE_PREFIXES) or any(g.startswith(_MODULE_PREFIXES) for g in found_all):
        return f"a pickled nn.Module ({name}): save model.state_dict() instead"
    if name.startswith("torch.optim."):
        return f"a pickled optimizer ({name}): save optimizer.state_dict() instead"
    return (
        f"a pickle that would import {name}; prunelab loads only tensors and plain "
        "types, because unpickling other objects can run code chosen by the file"
    )


def _check_torch_file(path: str | os.PathLike, what: str) -> None:
    """A file torch.save did not write (a JSON plan, an image, text) would otherwise reach the
    unpickler and be reported as a pickle importing something: say what it is instead.
    torch.save writes a zip archive, or with the legacy format a binary pickle (protocol 2+)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return  # torch.load reports it
    if head and not (head.startswith(b"PK") or head.startswith(b"\x80")):
        raise CheckpointError(
            f"{what} {path} is not a PyTorch file (it starts with {head!r}; expected one "
            "written by torch.save or prunelab)"
        )


def load_tensors(path: str | os.PathLike, what: str = "checkpoint") -> Any:
    """torch.load with weights_only=True; refusals and damage become one-line CheckpointErrors."""
    _check_torch_file(path, what)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        if "GLOBAL" in text or "Unsupported" in text:
            raise CheckpointError(f"{what} {path} is {_what_needs_unpickling(text, path)}") from e
        raise CheckpointError(f"{what} {path} is truncated or corrupt (UnpicklingError)") from e
    except Exception as e:  # torch raises many different types for a damaged file
        raise CheckpointError(f"{what} {path} is truncated or corrupt ({type(e).__name__})") from e
