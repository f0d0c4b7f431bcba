"""Every bad input a user can type ends in one line naming the problem, exit status 2,
no traceback, and no file written."""

import json

import pytest
import torch

from prunelab.app.cli import main
from prunelab.models import VGG, save_checkpoint


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    torch.manual_seed(0)
    good = save_checkpoint(d / "good.pth", VGG(0.125))
    trunc = d / "trunc.pth"
    trunc.write_bytes(good.read_bytes()[:3000])
    torch.save({"hello": 1}, d / "notckpt.pth")
    sd = VGG(0.125).state_dict()
    sd["classifier.weight"] = torch.zeros(10, 7)
    torch.save({"state_dict": sd, "width": 0.125}, d / "misfit.pth")
    (d / "plan_unknown.json").write_text(json.dumps({"backbone.conv99": 0.5}))
    (d / "plan_bad.json").write_text("{not json")
    (d / "plan_over.json").write_text(json.dumps({"backbone.conv1": 1.5}))
    (d / "empty").mkdir()
    (d / "afile").write_text("x")
    wrong = d / "wrongclasses"
    for split in ("train", "test"):
        for c in ("cats", "dogs"):
            (wrong / split / c).mkdir(parents=True)
    recipes = {
        "bad_toml": "name = [",
        "unknown_key": 'name = "x"\nbogus = 1\n[dense]\nwidth = 0.25\n',
        "bad_sparsity": "[dense]\nwidth = 0.25\n[prune]\nsparsities = [0.4, 1.4]\n",
        "bad_lr": "[dense]\nwidth = 0.25\n[[finetune]]\nname = 'sgd'\nlr = -1.0\n",
        "bad_width": "[dense]\nwidth = -1\n",
        "bad_split": "[dense]\nwidth = 0.25\n[sensitivity]\nsplit = 'train'\n",
        "bad_ft_key": "[dense]\nwidth = 0.25\n[[finetune]]\nname = 'sgd'\nlearning_rate = 0.1\n",
        "bad_epochs": "[dense]\nwidth = 0.25\n[dense.train]\nepochs = -3\n",
        "no_dense": 'name = "x"\n',
    }
    for name, text in recipes.items():
        (d / f"{name}.toml").write_text(text)
    return d


def cases(d):
    ck = str(d / "good.pth")
    nodata = str(d / "no-such-data")
    out = str(d / "out" / "x.pth")
    return [
        (["evaluate", "--checkpoint", str(d / "missing.pth")], "does not exist"),
        (["evaluate", "--checkpoint", str(d / "empty")], "is not a file"),
        (["evaluate", "--checkpoint", str(d / "trunc.pth"), "--data-dir", nodata], "trunc.pth"),
        (["evaluate", "--checkpoint", str(d / "notckpt.pth")], "not a checkpoint"),
        (["evaluate", "--checkpoint", str(d / "misfit.pth")], "classifier.weight"),
        (["evaluate", "--checkpoint", ck, "--data-dir", nodata], "no-such-data"),
        (["evaluate", "--checkpoint", ck, "--data-dir", str(d / "empty")], "empty"),
        (["evaluate", "--checkpoint", ck, "--data-dir", str(d / "wrongclasses")], "class"),
        (["evaluate", "--checkpoint", ck, "--split", "train"], "invalid choice"),
        (["train", "--epochs", "-1", "--out", out], "-1"),
        (["train", "--lr", "0", "--out", out], "must be > 0"),
        (["train", "--lr", "abc", "--out", out], "not a number"),
        (["train", "--width", "0", "--out", out], "must be > 0"),
        (["train", "--batch-size", "0", "--out", out], "--batch-size"),
        (["train", "--momentum", "2", "--out", out], "momentum"),
        (["train", "--optimizer", "lbfgs", "--out", out], "invalid choice"),
        (["train", "--device", "cuda:0", "--out", out], "CUDA"),
        (["train", "--out", str(d / "afile" / "x.pth")], "afile"),
        (["train", "--data-dir", nodata, "--out", out], "no-such-data"),
        (["prune", "--checkpoint", ck, "--sparsity", "1.5", "--out", out], "outside [0, 1]"),
        (["prune", "--checkpoint", ck, "--sparsity", "nan", "--out", out], "finite"),
        (["prune", "--checkpoint", ck, "--out", out], "exactly one"),
        (
            ["prune", "--checkpoint", ck, "--plan", str(d / "plan_unknown.json"), "--out", out],
            "backbone.conv99",
        ),
        (["prune", "--checkpoint", ck, "--plan", str(d / "plan_bad.json"), "--out", out], "JSON"),
        (["prune", "--checkpoint", ck, "--plan", str(d / "plan_over.json"), "--out", out], "1.5"),
        (
            ["prune", "--checkpoint", ck, "--sparsity", "0.5", "--scope", "fc", "--out", out],
            "invalid choice",
        ),
        (["sensitivity", "--checkpoint", ck, "--sparsities", "0.5,x"], "not a number"),
        (["sensitivity", "--checkpoint", ck, "--sparsities", ","], "comma-separated"),
        (["finetune", "--checkpoint", ck, "--data-dir", nodata, "--out", out], "no masks"),
        (["finetune", "--checkpoint", ck, "--lr", "-0.1", "--out", out], "must be > 0"),
        (["sparsity", str(d / "missing.pth")], "does not exist"),
        (["run", str(d / "missing.toml")], "does not exist"),
        (["run", str(d / "bad_toml.toml")], "not valid TOML"),
        (["run", str(d / "unknown_key.toml")], "bogus"),
        (["run", str(d / "bad_sparsity.toml")], "prune.sparsities"),
        (["run", str(d / "bad_lr.toml")], "lr"),
        (["run", str(d / "bad_width.toml")], "dense.width"),
        (["run", str(d / "bad_split.toml")], "sensitivity.split"),
        (["run", str(d / "bad_ft_key.toml")], "learning_rate"),
        (["run", str(d / "bad_epochs.toml")], "epochs"),
        (["run", str(d / "no_dense.toml")], "dense"),
        (["frobnicate"], "invalid choice"),
        # no abbreviations: --teacher is not taken for --teacher-logits
        (["finetune", ck, "--teacher", ck, "--out", out], "unrecognized arguments: --teacher"),
        (
            ["evaluate", ck, "--bogus"],
            "prunelab evaluate: error: unrecognized arguments: --bogus"
            " (see prunelab evaluate --help)",
        ),
        (["plan", ck, "--batch-size", "8"], "did you mean --latency-batch-size?"),
    ]


N_CASES = 45


def test_case_count(files):
    assert len(cases(files)) == N_CASES


@pytest.mark.parametrize("i", range(N_CASES))
def test_bad_input_is_one_clear_line(files, i, capsys, tmp_path, monkeypatch):
    args, expected = cases(files)[i]
    monkeypatch.chdir(tmp_path)  # anything written by mistake would land here
    monkeypatch.setenv("PRUNELAB_CACHE", str(tmp_path / "cache"))
    try:
        code = main(args)
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err.strip()
    assert code == 2, (args, err)
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert expected in err, (expected, err)
    assert not (files / "out").exists()
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
