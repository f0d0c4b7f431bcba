"""The recipe schema on its own: step tags, key suggestions, the training-table fields,
and that parsing a recipe never imports the flows that run it."""

import inspect
from dataclasses import asdict, fields

import pytest
from test_architecture import _graph

from prunelab.app import recipe_compare
from prunelab.app.recipe_schema import (
    TRAIN_FIELDS,
    check_fields,
    check_keys,
    integer,
    is_num,
    number,
    sparsities,
    step_tag,
    train_config,
)
from prunelab.errors import RecipeError
from prunelab.models import REGISTRY
from prunelab.train import TrainConfig

PARSING = {
    "prunelab.app.recipes",
    "prunelab.app.recipe_schema",
    "prunelab.app.recipe_inputs",
    "prunelab.app.recipe_compare",
}
FLOWS = {"prunelab.app.run", "prunelab.app.study", "prunelab.app.beyond", "prunelab.app.steps"}


def test_parsing_a_recipe_imports_no_flow():
    graph = _graph()
    reached, todo = set(), list(PARSING)
    while todo:
        n = todo.pop()
        if n not in reached:
            reached.add(n)
            todo.extend(graph.get(n, ()))
    assert PARSING <= set(graph)
    assert reached & FLOWS == set()


def test_run_recipe_lives_in_app_run_with_its_old_signature():
    from prunelab.app.run import run_recipe

    params = list(inspect.signature(run_recipe).parameters)
    assert params == ["rec", "data_dir", "out", "cache", "device", "progress", "fresh"]


# ----- step tags -----


def test_two_decimal_sparsities_keep_their_old_tags():
    for k in range(101):
        s = k / 100
        assert step_tag(s) == f"s{s:.2f}"


@pytest.mark.parametrize(
    "s, tag",
    [(0.425, "s0.425"), (0.401, "s0.401"), (0.1234, "s0.1234"), (1 / 3, "s0.333333")],
)
def test_other_sparsities_get_the_fewest_decimals_that_say_them(s, tag):
    assert step_tag(s) == tag


def test_sparsities_are_distinct_and_so_are_their_tags():
    assert sparsities([0.401, 0.404], "f", "k") == [0.401, 0.404]
    assert sparsities([1, 0], "f", "k") == [1.0, 0.0]
    with pytest.raises(RecipeError, match="lists 1 twice"):
        sparsities([1, 1.0], "f", "k")
    with pytest.raises(RecipeError, match="share the step tag 's0.123457'"):
        sparsities([0.1234567, 0.1234571], "f", "k")
    with pytest.raises(RecipeError, match=r"in \(0, 1\)"):
        sparsities([0.0, 0.5], "f", "k", open_ends=True)
    with pytest.raises(RecipeError, match="non-empty list"):
        sparsities([], "f", "k")
    with pytest.raises(RecipeError, match="non-empty list"):
        sparsities([True], "f", "k")


# ----- keys and fields -----


def test_unknown_keys_suggest_the_closest_valid_key():
    with pytest.raises(RecipeError) as e:
        check_keys({"sparsites": 1}, ["scope", "sparsities"], "r.toml", "prune")
    assert str(e.value) == "r.toml: unknown key 'prune.sparsites'; did you mean 'prune.sparsities'?"
    with pytest.raises(RecipeError) as e:
        check_keys({"zzz": 1}, ["scope", "sparsities"], "r.toml", "")
    assert str(e.value) == "r.toml: unknown key 'zzz'; expected one of scope, sparsities"


def test_booleans_are_not_numbers():
    assert not is_num(True) and is_num(1) and is_num(0.5) and not is_num(float("inf"))
    assert is_num(10**300) and not is_num(10**400)  # TOML allows such integers
    assert not integer(0).ok(True) and integer(0).ok(0)
    assert not number(0).ok(False) and number(0).ok(0)


def test_integer_and_number_words_match_their_tests():
    f = integer(0, strict=True)
    assert f.expected == "an integer > 0" and not f.ok(0) and f.ok(1) and not f.ok(12.5)
    f = number(0, 1, lo_open=True, hi_open=False)
    assert f.expected == "a number in (0, 1]" and not f.ok(0) and f.ok(1) and not f.ok(1.01)


def test_training_fields_cover_trainconfig_and_accept_its_defaults():
    assert set(TRAIN_FIELDS) == {f.name for f in fields(TrainConfig)}
    check_fields(asdict(TrainConfig()), TRAIN_FIELDS, "r.toml", "dense.train")


def test_train_config_takes_the_recipe_seed_unless_it_has_its_own():
    assert train_config({}, "f", "k", seed=7).seed == 7
    assert train_config({"seed": 2}, "f", "k", seed=7).seed == 2
    with pytest.raises(RecipeError, match="unknown key 'k.name'"):
        train_config({"name": "x"}, "f", "k", seed=0)
    assert train_config({"name": "x"}, "f", "k", seed=0, extra=("name",)).epochs == 10


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_registry_model_parses_with_a_width(tmp_path, name):
    from prunelab.app.recipes import load_recipe

    p = tmp_path / "r.toml"
    p.write_text(f"[model]\nname = '{name}'\nwidth = 0.5\nnum_classes = 7\nin_channels = 1\n")
    rec = load_recipe(p)
    assert rec["model"]["kwargs"] == {"width": 0.5, "num_classes": 7, "in_channels": 1}
    built = REGISTRY[name](**rec["model"]["kwargs"])  # the kwargs really are its arguments
    assert sum(p.numel() for p in built.parameters()) > 0


# ----- [compare] defaults stay those app.beyond describes -----


def test_compare_methods_and_defaults_match_app_beyond():
    from prunelab.app import beyond

    assert recipe_compare.METHOD_NAMES == tuple(beyond.METHODS)
    assert set(beyond.PLAN_OF) == set(recipe_compare.METHOD_NAMES)
    for name in ("DEFAULT_METHODS", "FINETUNE_DEFAULTS", "SCAN_DEFAULTS", "PLAN_DEFAULTS"):
        if hasattr(beyond, name):  # beyond may drop its copies and use recipe_compare's
            assert getattr(beyond, name) == getattr(recipe_compare, name), name
    assert beyond.parse_compare is recipe_compare.parse_compare
