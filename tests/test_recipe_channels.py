"""The [channels] recipe table: defaults, and every mistake named with its key."""

from pathlib import Path

import pytest

from prunelab.app.recipes import load_recipe
from prunelab.errors import RecipeError

BASE = '[model]\nname = "vgg"\nwidth = 0.25\n'


def _load(tmp_path, text):
    path = tmp_path / "r.toml"
    path.write_text(BASE + text)
    return load_recipe(path)


def test_shipped_channels_recipe_and_defaults(tmp_path):
    rec = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "channels.toml")
    assert rec["channels"]["methods"] == ["fine", "uniform", "guided"]
    assert rec["channels"]["finetune"].keep_best is False  # the same budget for every method
    ch = _load(tmp_path, "[channels]\n")["channels"]
    assert ch["ratios"] == [0.3, 0.5] and ch["latency"]["batch_sizes"] == [1, 64]
    assert ch["scan"]["calibrate"] == 1024  # adaptive BN in the scan unless turned off
    off = _load(tmp_path, "[channels.scan]\ncalibrate = 0\n")["channels"]["scan"]
    assert off == {"ratios": [0.25, 0.5, 0.75], "calibrate": 0}  # no recovery keys unless set
    rec = _load(tmp_path, "[channels.scan]\nrecover = 2048\nrecover_lr = 0.005\n")
    assert rec["channels"]["scan"]["recover"] == 2048
    from prunelab.app.study import recovery_settings

    got = recovery_settings(rec["channels"])
    assert got["recover"] == 2048 and got["recover_ft"].lr == 0.005
    assert got["recover_ft"].epochs == 1 and recovery_settings(ch) == {}


@pytest.mark.parametrize(
    "text, needle",
    [
        ("[channels]\nratio = [0.3]\n", "did you mean 'channels.ratios'"),
        ("[channels]\nmethods = ['fine', 'taylor']\n", "channels.methods"),
        ("[channels]\nratios = [1.0]\n", "channels.ratios"),
        ("[channels]\nimportance = 'random'\n", "channels.importance"),
        ("[channels.latency]\nbatch_sizes = [0]\n", "channels.latency.batch_sizes"),
        ("[channels.scan]\nratio = [0.5]\n", "channels.scan.ratio"),
        ("[channels.scan]\ncalibrate = -1\n", "channels.scan.calibrate"),
        ("[channels.scan]\nrecover = -1\n", "channels.scan.recover"),
        ("[channels.scan]\nrecover_lr = 0\n", "channels.scan.recover_lr"),
        ("[channels]\n[prune]\nsparsities = [0.5]\n", "not used by a [channels] recipe"),
        ("[data]\nval_size = 0\n[channels]\n", "data.val_size"),
    ],
)
def test_mistakes_are_named(tmp_path, text, needle):
    with pytest.raises(RecipeError) as e:
        _load(tmp_path, text)
    assert needle in str(e.value) and "\n" not in str(e.value)
