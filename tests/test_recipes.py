"""Recipes: the shipped ones parse to the values they always had, [model] and [data] parse,
and every way a recipe can be wrong is one RecipeError naming the file and the full key."""

import json
import tomllib
from pathlib import Path

import pytest

import prunelab.app
from prunelab.app.recipes import load_recipe, resolved_recipe
from prunelab.errors import RecipeError

# the shipped recipes: in the package, or (before they moved there) in the repository
RECIPES = next(
    p
    for p in (
        Path(prunelab.app.__file__).parent / "recipe_files",
        Path(__file__).parents[1] / "recipes",
    )
    if (p / "quick.toml").is_file()
)
DENSE = "[dense]\nwidth = 0.25\n"

# What the parser before [model]/[data] and the schema made of the shipped recipes
# (resolved to JSON; 'file' and 'description' left out). Every key here must keep its value.
BEFORE = {
    "quick": {
        "name": "quick",
        "seed": 0,
        "data": {"val_size": 5000, "train_subset": None, "test_subset": None},
        "dense": {
            "width": 0.25,
            "checkpoint": "",
            "train": {
                "epochs": 10,
                "batch_size": 256,
                "optimizer": "sgd",
                "lr": 0.1,
                "momentum": 0.9,
                "nesterov": True,
                "weight_decay": 0.0005,
                "schedule": "onecycle",
                "warmup": 0.2,
                "label_smoothing": 0.1,
                "augment": True,
                "bf16": True,
                "channels_last": True,
                "seed": 0,
                "eval_batch_size": 1000,
                "keep_best": False,
            },
        },
        "evaluate": {"bf16": False, "batch_size": 1000},
        "sensitivity": {
            "sparsities": [0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
            "split": "test",
            "bf16": True,
        },
        "prune": {"scope": "conv", "sparsities": [0.4, 0.5, 0.6]},
        "finetune": [
            {
                "name": "adam",
                "config": {
                    "epochs": 2,
                    "batch_size": 256,
                    "optimizer": "adam",
                    "lr": 0.01,
                    "momentum": 0.9,
                    "nesterov": True,
                    "weight_decay": 0.0,
                    "schedule": "constant",
                    "warmup": 0.2,
                    "label_smoothing": 0.1,
                    "augment": True,
                    "bf16": True,
                    "channels_last": True,
                    "seed": 0,
                    "eval_batch_size": 1000,
                    "keep_best": True,
                },
            },
            {
                "name": "sgd",
                "config": {
                    "epochs": 2,
                    "batch_size": 256,
                    "optimizer": "sgd",
                    "lr": 0.01,
                    "momentum": 0.9,
                    "nesterov": False,
                    "weight_decay": 0.0005,
                    "schedule": "cosine",
                    "warmup": 0.2,
                    "label_smoothing": 0.1,
                    "augment": True,
                    "bf16": True,
                    "channels_last": True,
                    "seed": 0,
                    "eval_batch_size": 1000,
                    "keep_best": True,
                },
            },
        ],
    },
    "seed": {
        "name": "seed",
        "seed": 0,
        "data": {"val_size": 5000, "train_subset": None, "test_subset": None},
        "dense": {
            "width": 1.0,
            "checkpoint": "https://hanlab18.mit.edu/files/course/labs/vgg.cifar.pretrained.pth",
            "train": {
                "epochs": 30,
                "batch_size": 256,
                "optimizer": "sgd",
                "lr": 0.1,
                "momentum": 0.9,
                "nesterov": True,
                "weight_decay": 0.0005,
                "schedule": "onecycle",
                "warmup": 0.2,
                "label_smoothing": 0.1,
                "augment": True,
                "bf16": True,
                "channels_last": True,
                "seed": 0,
                "eval_batch_size": 1000,
                "keep_best": False,
            },
        },
        "evaluate": {"bf16": False, "batch_size": 1000},
        "sensitivity": {
            "sparsities": [0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
            "split": "test",
            "bf16": False,
        },
        "prune": {"scope": "conv", "sparsities": [0.4, 0.5, 0.6]},
        "finetune": [
            {
                "name": "adam",
                "config": {
                    "epochs": 5,
                    "batch_size": 256,
                    "optimizer": "adam",
                    "lr": 0.01,
                    "momentum": 0.9,
                    "nesterov": True,
                    "weight_decay": 0.0,
                    "schedule": "constant",
                    "warmup": 0.2,
                    "label_smoothing": 0.0,
                    "augment": True,
                    "bf16": False,
                    "channels_last": True,
                    "seed": 0,
                    "eval_batch_size": 1000,
                    "keep_best": True,
                },
            },
            {
                "name": "sgd",
                "config": {
                    "epochs": 5,
                    "batch_size": 256,
                    "optimizer": "sgd",
                    "lr": 0.01,
                    "momentum": 0.9,
                    "nesterov": False,
                    "weight_decay": 0.0005,
                    "schedule": "cosine",
                    "warmup": 0.2,
                    "label_smoothing": 0.0,
                    "augment": True,
                    "bf16": False,
                    "channels_last": True,
                    "seed": 0,
                    "eval_batch_size": 1000,
                    "keep_best": True,
                },
            },
        ],
    },
    "beyond": {
        "name": "beyond",
        "seed": 0,
        "data": {"val_size": 5000, "train_subset": None, "test_subset": None},
        "dense": {
            "width": 0.25,
            "checkpoint": "",
            "train": {
                "epochs": 10,
                "batch_size": 256,
                "optimizer": "sgd",
                "lr": 0.1,
                "momentum": 0.9,
                "nesterov": True,
                "weight_decay": 0.0005,
                "schedule": "onecycle",
                "warmup": 0.2,
                "label_smoothing": 0.1,
                "augment": True,
                "bf16": True,
                "channels_last": True,
                "seed": 0,
                "eval_batch_size": 1000,
                "keep_best": False,
            },
        },
        "evaluate": {"bf16": False, "batch_size": 1000},
        "prune": {"scope": "conv", "sparsities": [0.4, 0.5, 0.6]},
        "finetune": [],
        "compare": {
            "sparsities": [0.6, 0.8, 0.9],
            "methods": ["uniform", "sensitivity", "gradual"],
            "scope": "conv",
            "scan": {
                "sparsities": [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95],
                "bf16": True,
                "batch_size": 1000,
            },
            "plan": {"default_cap": 0.95, "first_last_cap": 0.8, "max_drop": None},
            "gradual": {"initial_sparsity": 0.0, "prune_every": 10, "prune_steps_fraction": 0.5},
            "finetune": {
                "epochs": 3,
                "batch_size": 256,
                "optimizer": "sgd",
                "lr": 0.01,
                "momentum": 0.9,
                "nesterov": False,
                "weight_decay": 0.0005,
                "schedule": "cosine",
                "warmup": 0.2,
                "label_smoothing": 0.0,
                "augment": True,
                "bf16": True,
                "channels_last": True,
                "seed": 0,
                "eval_batch_size": 1000,
                "keep_best": False,
            },
        },
    },
}


def write(tmp_path: Path, text: str, name: str = "r.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def refused(tmp_path: Path, text: str, name: str = "r.toml") -> str:
    with pytest.raises(RecipeError) as e:
        load_recipe(write(tmp_path, text, name))
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def assert_kept(before, after, where="rec"):
    """Every key of `before` is in `after` with the same value and the same type."""
    if isinstance(before, dict):
        for k, v in before.items():
            assert k in after, f"{where}.{k} is gone"
            assert_kept(v, after[k], f"{where}.{k}")
    elif isinstance(before, list):
        assert len(before) == len(after), where
        for i, (a, b) in enumerate(zip(before, after, strict=True)):
            assert_kept(a, b, f"{where}[{i}]")
    else:
        assert type(before) is type(after) and before == after, (where, before, after)


# ----- the shipped recipes -----


@pytest.mark.parametrize("name", sorted(BEFORE))
def test_shipped_recipes_keep_every_value(name):
    rec = resolved_recipe(load_recipe(RECIPES / f"{name}.toml"))
    assert_kept(BEFORE[name], rec)
    width = BEFORE[name]["dense"]["width"]
    ck = BEFORE[name]["dense"]["checkpoint"]
    assert rec["model"] == {"name": "vgg", "kwargs": {"width": width}, "checkpoint": ck}


def test_the_comparison_catches_a_changed_value():
    after = json.loads(json.dumps(BEFORE["quick"]))
    after["finetune"][1]["config"]["lr"] = 0.02
    with pytest.raises(AssertionError, match="lr"):
        assert_kept(BEFORE["quick"], after)
    after = json.loads(json.dumps(BEFORE["quick"]))
    after["dense"]["width"] = 1  # an int where a float was
    with pytest.raises(AssertionError, match="width"):
        assert_kept(BEFORE["quick"], after)


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
    p = write(tmp_path, "[dense]\nwidth = 0.25\n[prune]\nsparsities = 'half'\n")
    with pytest.raises(RecipeError) as e:
        load_recipe(p)
    msg = str(e.value)
    assert str(p) in msg and "prune.sparsities" in msg and "[0, 1]" in msg


# ----- unknown keys -----


def test_unknown_key_message_names_file_key_and_suggestion(tmp_path):
    msg = refused(tmp_path, DENSE + "[prune]\nsparsites = [0.5]\n", "quick.toml")
    assert msg == (
        f"{tmp_path / 'quick.toml'}: unknown key 'prune.sparsites'; "
        "did you mean 'prune.sparsities'?"
    )


@pytest.mark.parametrize(
    "text, key, suggestion",
    [
        ("sed = 1\n" + DENSE, "sed", "seed"),
        ("[data]\nval_sise = 10\n" + DENSE, "data.val_sise", "data.val_size"),
        ("[data]\nnormalize = {mena = [0.5], std = [0.2]}\n" + DENSE, "data.normalize.mena",
         "data.normalize.mean"),
        ("[dense]\nwidht = 0.25\n", "dense.widht", "dense.width"),
        (DENSE + "[dense.train]\nepoch = 1\n", "dense.train.epoch", "dense.train.epochs"),
        ("[model]\nname = 'vgg'\nwidht = 0.5\n", "model.widht", "model.width"),
        ("[model]\nname = 'vgg'\ncheckpint = ''\n", "model.checkpint", "model.checkpoint"),
        (DENSE + "[evaluate]\nbatchsize = 10\n", "evaluate.batchsize", "evaluate.batch_size"),
        (DENSE + "[sensitivity]\nsplt = 'val'\n", "sensitivity.splt", "sensitivity.split"),
        (DENSE + "[[finetune]]\nname = 'a'\n[[finetune]]\nname = 'b'\nmomentun = 0.5\n",
         "finetune[1].momentun", "finetune[1].momentum"),
        (DENSE + "[compare]\nsparsites = [0.5]\n", "compare.sparsites", "compare.sparsities"),
        (DENSE + "[compare.scan]\nbf61 = true\n", "compare.scan.bf61", "compare.scan.bf16"),
        (DENSE + "[compare.plan]\nmax_dorp = 1.0\n", "compare.plan.max_dorp",
         "compare.plan.max_drop"),
        (DENSE + "[compare.gradual]\nprune_evry = 5\n", "compare.gradual.prune_evry",
         "compare.gradual.prune_every"),
        (DENSE + "[compare.finetune]\nepoch = 1\n", "compare.finetune.epoch",
         "compare.finetune.epochs"),
    ],
)  # fmt: skip
def test_unknown_keys_suggest_the_closest(tmp_path, text, key, suggestion):
    msg = refused(tmp_path, text)
    assert f"unknown key '{key}'; did you mean '{suggestion}'?" in msg


def test_unknown_key_without_a_close_one_lists_the_valid_ones(tmp_path):
    msg = refused(tmp_path, 'name = "x"\nbogus = 1\n' + DENSE)
    assert "unknown key 'bogus'; expected one of" in msg and "sensitivity" in msg


# ----- types -----


@pytest.mark.parametrize(
    "text, expected",
    [
        (DENSE + "[[finetune]]\nname = 'a'\n[[finetune]]\nname = 'b'\nbatch_size = 12.5\n",
         "key 'finetune[1].batch_size' must be an integer > 0 (got 12.5)"),
        (DENSE + "[dense.train]\nepochs = true\n", "key 'dense.train.epochs' must be an integer"),
        (DENSE + "[dense.train]\nlr = true\n", "key 'dense.train.lr' must be a number > 0"),
        (DENSE + "[dense.train]\nlr = nan\n", "key 'dense.train.lr' must be a number > 0"),
        (DENSE + f"[dense.train]\nlr = {10**400}\n", "key 'dense.train.lr' must be a number"),
        (DENSE + "[dense.train]\nbf16 = 1\n", "key 'dense.train.bf16' must be true or false"),
        (DENSE + "[dense.train]\noptimizer = 'lbfgs'\n", "'dense.train.optimizer' must be one of"),
        (DENSE + "[evaluate]\nbatch_size = 12.5\n", "key 'evaluate.batch_size' must be an integer"),
        (DENSE + "[evaluate]\nbf16 = 'no'\n", "key 'evaluate.bf16' must be true or false"),
        ("[dense]\nwidth = true\n", "key 'dense.width' must be a number > 0"),
        ("seed = true\n" + DENSE, "key 'seed' must be an integer"),
        ("seed = 1.5\n" + DENSE, "key 'seed' must be an integer"),
        ("name = 'a/b'\n" + DENSE, "key 'name' must be a short name for the run folder"),
        ("description = 3\n" + DENSE, "key 'description' must be a string"),
        ("[data]\nval_size = true\n" + DENSE, "key 'data.val_size' must be an integer >= 0"),
        ("[data]\nimage_size = 0\n" + DENSE, "key 'data.image_size' must be an integer > 0"),
        ("[data]\ndir = ''\n" + DENSE, "key 'data.dir' must be a folder path"),
        ("[data]\nval_fraction = 1.0\n" + DENSE, "'data.val_fraction' must be a number in (0, 1)"),
        ("data = 3\n" + DENSE, "key 'data' must be a table"),
        ("finetune = 3\n" + DENSE, "key 'finetune' must be an array of tables"),
        (DENSE + "[compare.scan]\nbatch_size = true\n", "key 'compare.scan.batch_size' must be"),
        (DENSE + "[compare.plan]\nmax_drop = -1\n", "'compare.plan.max_drop' must be a number >="),
        (DENSE + "[compare.gradual]\ninitial_sparsity = 0.7\n", "compare.gradual.initial_sparsity"),
        (DENSE + "[sensitivity]\nbf16 = 0\n", "key 'sensitivity.bf16' must be true or false"),
        (DENSE + "[prune]\nscope = 'everything'\n", "key 'prune.scope' must be one of"),
    ],
)  # fmt: skip
def test_wrong_types_name_the_full_key(tmp_path, text, expected):
    assert expected in refused(tmp_path, text)


# ----- unique names and step tags -----


def test_two_runs_with_one_name_are_refused(tmp_path):
    text = DENSE + "[[finetune]]\nname = 'a'\n[[finetune]]\nname = 'b'\n[[finetune]]\nname = 'a'\n"
    msg = refused(tmp_path, text)
    assert "finetune[0] and finetune[2] are both named 'a'" in msg and 'name = "' in msg


def test_two_unnamed_runs_of_one_optimizer_are_refused(tmp_path):
    run = "[[finetune]]\noptimizer = 'adam'\nlr = {}\n"
    msg = refused(tmp_path, DENSE + run.format(0.01) + run.format(0.001))
    assert "finetune[0] and finetune[1] are both named 'adam'" in msg
    assert "optimizer" in msg and 'name = "adam_1"' in msg


def test_distinct_names_parse(tmp_path):
    run = "[[finetune]]\noptimizer = 'adam'\nlr = {}\n"
    text = DENSE + run.format(0.01) + run.format(0.001) + "name = 'adam_slow'\n"
    rec = load_recipe(write(tmp_path, text))
    assert [r["name"] for r in rec["finetune"]] == ["adam", "adam_slow"]


def test_finetune_keeps_its_best_epoch_unless_told_not_to(tmp_path):
    text = DENSE + "[[finetune]]\nname = 'a'\n[[finetune]]\nname = 'b'\nkeep_best = false\n"
    rec = load_recipe(write(tmp_path, text))
    assert [r["config"].keep_best for r in rec["finetune"]] == [True, False]


@pytest.mark.parametrize("section", ["prune", "sensitivity"])
def test_duplicate_sparsities_are_refused(tmp_path, section):
    msg = refused(tmp_path, DENSE + f"[{section}]\nsparsities = [0.5, 0.6, 0.5]\n")
    assert f"key '{section}.sparsities' lists 0.5 twice (entries 0 and 2)" in msg


def test_duplicate_compare_sparsities_are_refused(tmp_path):
    msg = refused(tmp_path, DENSE + "[compare]\nsparsities = [0.6, 0.6]\n")
    assert "compare.sparsities" in msg and "twice" in msg


def test_sparsities_that_share_a_step_tag_are_refused(tmp_path):
    msg = refused(tmp_path, DENSE + "[prune]\nsparsities = [0.4000001, 0.4000004]\n")
    assert "prune.sparsities" in msg and "step tag 's0.400000'" in msg


def test_sparsities_two_decimals_would_merge_get_their_own_tags(tmp_path):
    """0.401 and 0.404 were both 's0.40' once; now each has its own tag."""
    from prunelab.app.recipes import step_tag

    rec = load_recipe(write(tmp_path, DENSE + "[prune]\nsparsities = [0.401, 0.404, 0.425]\n"))
    tags = [step_tag(s) for s in rec["prune"]["sparsities"]]
    assert tags == ["s0.401", "s0.404", "s0.425"]


# ----- [model], [dense] and their conflicts -----


def test_model_section_parses(tmp_path):
    text = "[model]\nname = 'ResNet20'\nwidth = 0.5\ncheckpoint = 'r20.pth'\n"
    rec = load_recipe(write(tmp_path, text + "[dense.train]\nepochs = 2\n"))
    assert rec["model"] == {"name": "resnet20", "kwargs": {"width": 0.5}, "checkpoint": "r20.pth"}
    assert rec["dense"]["width"] is None and rec["dense"]["checkpoint"] == "r20.pth"
    assert rec["dense"]["train"].epochs == 2


def test_model_vgg_says_what_dense_width_said(tmp_path):
    new = load_recipe(write(tmp_path, "[model]\nname = 'vgg'\nwidth = 0.25\n", "a.toml"))
    old = load_recipe(write(tmp_path, "[dense]\nwidth = 0.25\n", "b.toml"))
    assert new["model"] == old["model"] and new["dense"] == old["dense"]
    assert new["dense"]["width"] == 0.25


def test_model_factory_keeps_its_arguments(tmp_path):
    text = "[model]\nname = 'mynets.small:build'\ndepth = 3\nchannels = [8, 16]\nact = 'relu'\n"
    rec = load_recipe(write(tmp_path, text))
    assert rec["model"] == {
        "name": "mynets.small:build",
        "kwargs": {"depth": 3, "channels": [8, 16], "act": "relu"},
        "checkpoint": "",
    }
    assert rec["dense"]["width"] is None


@pytest.mark.parametrize(
    "text, expected",
    [
        ("[model]\nwidth = 0.5\n", "key 'model.name' must be given"),
        ("[model]\nname = 'resnt20'\n", "did you mean 'resnet20'?"),
        ("[model]\nname = 'my model:x'\n", "package.module:factory"),
        ("[model]\nname = 'vgg'\nwidth = 0\n", "key 'model.width' must be a number > 0"),
        ("[model]\nname = 'vgg'\nwidth = true\n", "key 'model.width' must be a number > 0"),
        ("[model]\nname = 'm:f'\nwhen = 2024-01-01\n", "key 'model.when' must be a plain value"),
        ("[model]\nname = 'm:f'\nscale = inf\n", "key 'model.scale' must be a plain value"),
        ("[model]\nname = 'vgg'\ncheckpoint = 3\n", "key 'model.checkpoint' must be a path"),
        ("model = 'vgg'\n", "key 'model' must be a table"),
        ("name = 'x'\n", "[dense]"),
    ],
)
def test_bad_model_tables_are_refused(tmp_path, text, expected):
    assert expected in refused(tmp_path, text)


@pytest.mark.parametrize("key, value", [("width", "0.25"), ("checkpoint", "'a.pth'")])
def test_dense_model_settings_next_to_model_are_refused(tmp_path, key, value):
    msg = refused(tmp_path, f"[model]\nname = 'vgg'\n[dense]\n{key} = {value}\n")
    assert f"key 'dense.{key}' conflicts with [model]" in msg


# ----- [data] -----


def test_data_section_parses_every_key(tmp_path):
    text = (
        "[data]\ndir = 'imgs'\nimage_size = 40\nval_fraction = 0.1\ntrain_subset = 100\n"
        "test_subset = 50\nscan_subset = 20\nnormalize = {mean = [0.5], std = [0.25]}\n" + DENSE
    )
    rec = load_recipe(write(tmp_path, text))
    assert rec["data"] == {
        "dir": "imgs",
        "image_size": 40,
        "normalize": {"mean": [0.5], "std": [0.25]},
        "val_size": None,
        "val_fraction": 0.1,
        "train_subset": 100,
        "test_subset": 50,
        "scan_subset": 20,
    }


def test_data_defaults_fill_every_key(tmp_path):
    rec = load_recipe(write(tmp_path, "[data]\nnormalize = 'none'\n" + DENSE))
    assert rec["data"] == {
        "dir": None,
        "image_size": None,
        "normalize": "none",
        "val_size": 5000,
        "val_fraction": None,
        "train_subset": None,
        "test_subset": None,
        "scan_subset": None,
    }


@pytest.mark.parametrize(
    "data, expected",
    [
        ("test_subset = 0", "key 'data.test_subset' must be an integer > 0 (omit the key"),
        ("train_subset = 0", "key 'data.train_subset' must be an integer > 0 (omit the key"),
        ("scan_subset = 2.5", "key 'data.scan_subset' must be an integer > 0"),
        ("val_size = 10\nval_fraction = 0.1", "'data.val_size' and 'data.val_fraction' both"),
        ("normalize = 'yes'", "key 'data.normalize' must be 'none' or a table"),
        ("normalize = {mean = [0.5, 0.5]}", "key 'data.normalize.std' must be a non-empty list"),
        ("normalize = {mean = [0.5], std = [0.0]}", "key 'data.normalize.std'"),
        ("normalize = {mean = [0.5, 0.5], std = [0.2]}", "as long as data.normalize.mean"),
    ],
)
def test_bad_data_tables_are_refused(tmp_path, data, expected):
    assert expected in refused(tmp_path, f"[data]\n{data}\n" + DENSE)


def test_scan_on_an_empty_validation_split_is_refused(tmp_path):
    text = "[data]\nval_size = 0\n" + DENSE + "[sensitivity]\nsplit = 'val'\n"
    assert "key 'sensitivity.split' must be 'test' when data.val_size is 0" in refused(
        tmp_path, text
    )
    text = "[data]\nval_fraction = 0.1\n" + DENSE + "[sensitivity]\nsplit = 'val'\n"
    assert load_recipe(write(tmp_path, text))["sensitivity"]["split"] == "val"


# ----- seed -----


@pytest.mark.parametrize("seed", [-1, 2**63])
def test_seed_out_of_range_is_refused(tmp_path, seed):
    assert "key 'seed' must be an integer in [0, 9223372036854775807]" in refused(
        tmp_path, f"seed = {seed}\n" + DENSE
    )


def test_largest_seed_reaches_every_training_table(tmp_path):
    text = f"seed = {2**63 - 1}\n" + DENSE + "[[finetune]]\nname = 'sgd'\n"
    rec = load_recipe(write(tmp_path, text))
    assert rec["dense"]["train"].seed == rec["finetune"][0]["config"].seed == 2**63 - 1


# ----- [compare] says it all -----


@pytest.mark.parametrize("section", ["[prune]\n", "[sensitivity]\n", "[[finetune]]\n"])
def test_compare_recipes_refuse_the_study_sections(tmp_path, section):
    msg = refused(tmp_path, DENSE + "[compare]\n" + section)
    assert "is not used by a [compare] recipe" in msg


def test_shipped_compare_recipe_uses_its_own_tables():
    raw = tomllib.loads((RECIPES / "beyond.toml").read_text())
    assert "compare" in raw and not {"prune", "sensitivity", "finetune"} & set(raw)


# ----- the resolved record -----


def test_resolved_recipe_is_plain_json(tmp_path):
    text = (
        "seed = 4\n[data]\nnormalize = {mean = [0.5], std = [0.25]}\n"
        "[model]\nname = 'mobilenetv2'\nwidth = 0.5\n[dense.train]\nepochs = 1\n"
        "[[finetune]]\nname = 'sgd'\n"
    )
    rec = load_recipe(write(tmp_path, text))
    out = resolved_recipe(rec)
    assert json.loads(json.dumps(out)) == out
    assert out["dense"]["train"]["epochs"] == 1 and out["dense"]["train"]["seed"] == 4
    assert out["finetune"][0]["config"]["keep_best"] is True
    assert out["model"] == {"name": "mobilenetv2", "kwargs": {"width": 0.5}, "checkpoint": ""}
