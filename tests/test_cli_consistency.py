"""One way to do each thing on the command line: the checkpoint first, global options
anywhere, help text on every option, shipped recipes by name."""

import argparse
import os

import pytest
import torch

from prunelab.app.cli import build_parser, main
from prunelab.app.shipped import find_recipe, shipped_recipes
from prunelab.models import VGG, save_checkpoint
from prunelab.pruning import Pruner


@pytest.fixture(scope="module")
def ck(tmp_path_factory):
    d = tmp_path_factory.mktemp("consistency")
    torch.manual_seed(0)
    model = VGG(width=0.125)
    save_checkpoint(d / "dense.pth", model)
    pruner = Pruner(model, 0.5)
    pruner.apply()
    save_checkpoint(d / "pruned.pth", model, masks=pruner.masks)
    return d


def _subparsers(parser):
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices


def test_every_option_of_every_command_has_help():
    missing = [
        f"{name} {'/'.join(a.option_strings) or a.dest}"
        for name, p in _subparsers(build_parser()).items()
        if name != "bench"
        for a in p._actions
        if not a.help
    ]
    assert missing == []


def test_every_checkpoint_command_takes_it_first_and_as_an_alias(ck):
    for argv in (
        ["sparsity", str(ck / "dense.pth")],
        ["sparsity", "--checkpoint", str(ck / "dense.pth")],
    ):
        assert main(argv) == 0
    readers = [
        n
        for n, p in _subparsers(build_parser()).items()
        if any(a.dest == "checkpoint_opt" for a in p._actions)
    ]
    assert set(readers) == {
        "evaluate",
        "sparsity",
        "prune",
        "sensitivity",
        "finetune",
        "plan",
        "export",
        "latency",
    }


def test_missing_checkpoint_is_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        main(["sparsity"])
    assert e.value.code == 2 and "CHECKPOINT" in capsys.readouterr().err


def test_global_options_after_the_command(ck):
    assert main(["sparsity", str(ck / "dense.pth"), "--threads", "1", "--debug"]) == 0
    assert torch.get_num_threads() == 1
    torch.set_num_threads(os.cpu_count() or 1)


def test_max_drop_is_points_not_a_sparsity():
    args = build_parser().parse_args(["plan", "--global", "--sparsity", "0.5", "--max-drop", "5"])
    assert args.max_drop == 5.0


def test_finetune_refuses_a_new_sparsity_on_a_pruned_checkpoint(ck, capsys):
    out = ck / "never.pth"
    assert main(["finetune", str(ck / "pruned.pth"), "--sparsity", "0.9", "--out", str(out)]) == 2
    assert "already pruned" in capsys.readouterr().err and not out.exists()


def test_shipped_recipes_by_name_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert {"quick", "seed", "beyond", "resnet20"} <= set(shipped_recipes())
    assert find_recipe("quick") == shipped_recipes()["quick"]
    assert find_recipe("resnet20.toml").name == "resnet20.toml"
