"""Shared fixtures: the real CIFAR-10 JPEG tree (skipped when absent), decoded once per session."""

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from prunelab.data import CIFAR10, load_cifar10

JPEG_ROOT = Path(__file__).resolve().parents[1].parent / "shared/data/cifar10-jpeg"


@pytest.fixture(scope="session")
def jpeg_root() -> Path:
    """The shared JPEG tree; tests that need the real data skip cleanly without it."""
    if not (JPEG_ROOT / "train").is_dir():
        pytest.skip(f"real CIFAR-10 JPEG tree not found at {JPEG_ROOT}")
    return JPEG_ROOT


@pytest.fixture(scope="session")
def cifar_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A per-session cache dir, so tests never read or write the user's cache."""
    return tmp_path_factory.mktemp("cifar-cache")


@pytest.fixture(scope="session")
def cifar(jpeg_root: Path, cifar_cache: Path) -> CIFAR10:
    """The real data set, decoded once (~5 s) and cached for the session."""
    return load_cifar10(jpeg_root, cache=cifar_cache)


@pytest.fixture
def rerun_copy(tmp_path, jpeg_root, cifar_cache, capfd) -> Callable[[Path, str], str]:
    """rerun(run, recipe_text): run a recipe on a copy of a finished run folder and return
    what it printed ([skip]/[redo]/[step] lines), to check what a rerun redoes."""
    from prunelab.app.recipes import load_recipe
    from prunelab.app.run import run_recipe

    def rerun(run: Path, recipe: str) -> str:
        shutil.copytree(run, tmp_path / "copy")
        (tmp_path / "r.toml").write_text(recipe)
        capfd.readouterr()
        run_recipe(
            load_recipe(tmp_path / "r.toml"),
            jpeg_root,
            out=tmp_path / "copy",
            cache=cifar_cache,
            progress=False,
        )
        return "".join(capfd.readouterr())

    return rerun
