"""Run a parsed recipe: the study, or the [compare] flow, resumably into one run folder.

Every step writes its outputs atomically into the run folder and is skipped when they
are already there, so rerunning after an interruption redoes only unfinished work.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch

from ..fileio import write_json
from .beyond import run_beyond
from .channels_flow import ChannelsStudy
from .goals_flow import GoalsStudy
from .recipes import resolved_recipe
from .study import Study


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
    out = Path(out or Path("runs") / rec["name"])
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "recipe.json", resolved_recipe(rec))
    t0 = time.perf_counter()
    if "compare" in rec:
        results = run_beyond(rec, data_dir, out, cache, torch.device(device), progress, fresh)
    elif "goals" in rec:
        results = GoalsStudy(rec, data_dir, out, cache, torch.device(device), progress, fresh).run()
    elif "channels" in rec:
        results = ChannelsStudy(
            rec, data_dir, out, cache, torch.device(device), progress, fresh
        ).run()
    else:
        study = Study(rec, data_dir, out, cache, torch.device(device), progress, fresh)
        results = study.run()
    print(f"study finished in {time.perf_counter() - t0:.0f} s; report: {out / 'report.md'}")
    return results
