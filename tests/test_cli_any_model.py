"""The command line end to end on a network defined in a test's own module
(`module:factory`) and on a 3-class image-folder tree of 40x40 images written here."""

import json
import textwrap

import numpy as np
import pytest
from PIL import Image

from prunelab.app.cli import main

NETS = textwrap.dedent(
    '''
    from torch import nn

    def tiny(num_classes=10, in_channels=3, width=8):
        """A small conv net with BatchNorm, a residual add and pooling inside forward."""
        return Tiny(num_classes, in_channels, width)

    class Tiny(nn.Module):
        def __init__(self, num_classes, in_channels, width):
            super().__init__()
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width), nn.ReLU())
            self.body = nn.Sequential(
                nn.Conv2d(width, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width), nn.ReLU())
            self.fc = nn.Linear(width, num_classes)

        def forward(self, x):
            x = self.stem(x)
            x = x + self.body(x)
            return self.fc(x.mean(dim=(2, 3)))

    def grouped(num_classes=10, in_channels=3):
        """conv -> grouped conv (groups=2) -> conv -> linear -> linear: the last conv and
        the hidden linear can lose channels, the first two convs cannot."""
        return nn.Sequential(
            nn.Conv2d(in_channels, 8, 3, padding=1), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1, groups=2), nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 12), nn.ReLU(),
            nn.Linear(12, num_classes))

    def not_a_module():
        return 42
    '''
)


def write_tree(root, classes=("red", "green", "blue"), size=40, train=24, test=8, seed=0):
    """Images whose dominant colour is their class: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", train), ("test", test)):
        for k, cls in enumerate(classes):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                img = rng.integers(0, 90, (size, size, 3), dtype=np.uint8)
                img[..., k] = rng.integers(160, 256, (size, size), dtype=np.uint8)
                Image.fromarray(img).save(folder / f"{i:03d}.png")
    return root


@pytest.fixture()
def work(tmp_path, monkeypatch):
    (tmp_path / "mynets.py").write_text(NETS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PRUNELAB_CACHE", str(tmp_path / "cache"))
    return tmp_path, write_tree(tmp_path / "tree")


def _data(tree, *extra):
    return ["--data-dir", str(tree), "--val-fraction", "0.25", "--no-progress", *extra]


def _train(tree, model, out, *extra):
    return main(
        ["train", "--model", model, *_data(tree), "--epochs", "3", "--batch-size", "12",
         "--lr", "0.05", "--out", str(out), *extra]
    )  # fmt: skip


def test_user_factory_through_every_command(work, capsys):
    d, tree = work
    ck = d / "dense.pth"
    assert _train(tree, "mynets:tiny", ck, "--model-arg", "width=6") == 0
    capsys.readouterr()
    # a checkpoint made from user code never imports it by itself: --model is required
    assert main(["evaluate", str(ck), *_data(tree)]) == 2
    assert "mynets:tiny" in capsys.readouterr().err
    spec = ["--model", "mynets:tiny"]
    assert main(["evaluate", str(ck), *spec, *_data(tree), "--json", str(d / "e.json")]) == 0
    metrics = json.loads((d / "e.json").read_text())
    assert metrics["num_images"] == 24 and len(metrics["confusion_matrix"]) == 3
    assert metrics["accuracy"] > 0.5  # the colours are easy
    pruned = d / "p.pth"
    assert main(["prune", str(ck), *spec, "--sparsity", "0.5", "--out", str(pruned)]) == 0
    assert main(["sparsity", str(pruned), *spec, "--json", str(d / "s.json")]) == 0
    rep = json.loads((d / "s.json").read_text())
    assert rep["prunable_sparsity"] == pytest.approx(0.5, abs=0.01)
    scan = d / "scan"
    assert (
        main(["sensitivity", str(ck), *spec, *_data(tree), "--sparsities", "0.5",
              "--out", str(scan)])
        == 0
    )  # fmt: skip
    layers = json.loads((scan / "sensitivity.json").read_text())["layers"]
    assert set(layers) == {"stem.0", "body.0"}
    ft = d / "ft.pth"
    assert (
        main(["finetune", str(pruned), *spec, *_data(tree), "--epochs", "1", "--batch-size",
              "12", "--out", str(ft)])
        == 0
    )  # fmt: skip
    assert main(["export", str(ft), *spec, "--out", str(d / "ft.plz")]) == 0
    assert (d / "ft.plz").stat().st_size < ft.stat().st_size


def test_registry_model_on_a_3_class_40px_tree_needs_no_flags(work):
    d, tree = work
    ck = d / "rn.pth"
    assert _train(tree, "resnet20", ck, "--model-arg", "width=0.25") == 0
    assert main(["evaluate", str(ck), *_data(tree), "--json", str(d / "e.json")]) == 0
    assert json.loads((d / "e.json").read_text())["num_images"] == 24
    assert main(["prune", str(ck), "--sparsity", "0.3", "--out", str(d / "p.pth")]) == 0
    assert main(["export", str(d / "p.pth"), "--out", str(d / "p.plz")]) == 0


@pytest.mark.parametrize(
    "model, message",
    [
        ("nosuchmodule_xyz:tiny", "nosuchmodule_xyz"),
        ("mynets:missing", "missing"),
        ("mynets:not_a_module", "nn.Module"),
        ("resnet21", "resnet20"),
    ],
)
def test_bad_factories_are_one_line_errors(work, capsys, model, message):
    d, tree = work
    assert _train(tree, model, d / "x.pth") == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (d / "x.pth").exists()


def test_default_hold_out_fits_a_small_tree(work, capsys):
    """With no --val-size a 72-image tree holds out a tenth (7), not the study's 5,000."""
    d, tree = work
    ck = d / "dense.pth"
    args = ["train", "--model", "mynets:tiny", "--data-dir", str(tree), "--no-progress",
            "--epochs", "1", "--batch-size", "12", "--out", str(ck)]  # fmt: skip
    assert main(args) == 0
    assert "7 of the 72 training images held out" in capsys.readouterr().out
    assert main([*args[:-2], "--val-size", "73", "--out", str(d / "x.pth")]) == 2
    err = capsys.readouterr().err
    assert "73 validation images: expected 0 to 72" in err and "--val-fraction" in err
    assert len(err.strip().splitlines()) == 1 and not (d / "x.pth").exists()


def test_default_val_size_is_the_studys_on_cifar_sized_trees():
    from prunelab.app.steps import default_val_size

    assert default_val_size(50_000) == 5000 and default_val_size(60_000) == 5000
    assert default_val_size(900) == 90 and default_val_size(9) == 0


def test_channel_pruning_says_which_layers_it_left_whole(work, capsys):
    """A uniform ratio cannot cut a grouped conv's channels: the command says so, and why."""
    d, tree = work
    ck = d / "g.pth"
    assert _train(tree, "mynets:grouped", ck) == 0
    capsys.readouterr()
    out = d / "slim.pth"
    args = ["prune", str(ck), "--model", "mynets:grouped", "--channels", "0.5", "--out", str(out)]
    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "| 4 | 16 | 8 |" in lines  # the last conv lost half its channels
    assert "| 8 | 12 | 6 |" in lines  # and the hidden linear half its features
    whole = [line for line in lines if line.startswith("left whole by channel pruning")]
    assert len(whole) == 2 and all("(a grouped convolution, groups=2)" in w for w in whole)
    assert whole[1].endswith(
        "other layers): 0 (channel group '0' cannot be pruned: it holds "
        "Conv2d '2' (a grouped convolution, groups=2), which prunelab "
        "cannot cut consistently)"
    )
