"""The one way prunelab reads a torch file: tensors and plain types only, never code.

`torch.load(weights_only=False)` runs whatever a crafted pickle asks for before any check
can look at the result, so every checkpoint, training state and cache goes through here.
A file that needs arbitrary unpickling is refused by name, saying what it holds.
"""

from __future__ import annotations

import os
import pickle
import re
from typing import Any

import torch

from .errors import CheckpointError

_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def _what_needs_unpickling(message: str) -> str:
    """Describe, from torch's refusal, the object a file would have had to unpickle."""
    found = _GLOBAL.search(message)
    name = found.group(1) if found else "an object"
    if name.startswith("torch.nn.modules.") or name.startswith("torch.nn.parallel."):
        return f"a pickled nn.Module ({name}): save model.state_dict() instead"
    if name.startswith("torch.optim."):
        return f"a pickled optimizer ({name}): save optimizer.state_dict() instead"
    return (
        f"a pickle that would import {name}; prunelab loads only tensors and plain "
        "types, because unpickling other objects can run code chosen by the file"
    )


def load_tensors(path: str | os.PathLike, what: str = "checkpoint") -> Any:
    """torch.load with weights_only=True; refusals and damage become one-line CheckpointErrors."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        if "GLOBAL" in text or "Unsupported" in text:
            raise CheckpointError(f"{what} {path} is {_what_needs_unpickling(text)}") from e
        raise CheckpointError(f"{what} {path} is truncated or corrupt (UnpicklingError)") from e
    except Exception as e:  # torch raises many different types for a damaged file
        raise CheckpointError(f"{what} {path} is truncated or corrupt ({type(e).__name__})") from e
