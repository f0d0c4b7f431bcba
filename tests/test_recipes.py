from pathlib import Path

import pytest

from prunelab.errors import RecipeError
from prunelab.app.recipes import load_recipe

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


@pytest.mark.parametrize("name", ["quick", "seed"])
def test_shipped_recipes_parse(name):
    rec = load_recipe(RECIPES / f"{name}.toml")
    assert rec["prune"]["sparsities"] == [0.4, 0.5, 0.6]
    assert [r["name"] for r in rec["finetune"]] == ["adam", "sgd"]
    adam, sgd = (r["config"] for r in rec["finetune"])
    assert adam.optimizer == "adam" and adam.lr == 0.01
    assert sgd.optimizer == "sgd" and sgd.momentum == 0.9
    assert all(r["config"].keep_best for r in rec["finetune"])


def test_seed_recipe_is_the_published_study():
    rec = load_recipe(RECIPES / "seed.toml")
    assert rec["dense"]["width"] == 1.0
    assert rec["dense"]["checkpoint"].endswith("vgg.cifar.pretrained.pth")
    assert all(r["config"].epochs == 5 for r in rec["finetune"])


def test_error_names_file_key_and_expectation(tmp_path):
    p = tmp_path / "r.toml"
    p.write_text("[dense]\nwidth = 0.25\n[prune]\nsparsities = 'half'\n")
    with pytest.raises(RecipeError) as e:
        load_recipe(p)
    msg = str(e.value)
    assert str(p) in msg and "prune.sparsities" in msg and "[0, 1]" in msg
