"""The recipes that ship inside the package, so `prunelab run quick` works from any folder."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from ..errors import RecipeError


def shipped_recipes() -> dict[str, Path]:
    """Name -> path of every recipe installed with prunelab."""
    folder = resources.files("prunelab.app") / "recipe_files"
    return {Path(str(p)).stem: Path(str(p)) for p in folder.iterdir() if str(p).endswith(".toml")}


def find_recipe(text: str) -> Path:
    """A recipe file path, or the name of a shipped recipe ('quick' or 'quick.toml')."""
    path = Path(text)
    if path.is_file():
        return path
    name = path.name.removesuffix(".toml")
    shipped = shipped_recipes()
    if path.parent == Path(".") and name in shipped:
        return shipped[name]
    if path.exists():
        raise RecipeError(f"recipe {text} is not a file")
    raise RecipeError(
        f"recipe {text} does not exist (a TOML file, or one of the shipped recipes: "
        f"{', '.join(sorted(shipped))})"
    )
