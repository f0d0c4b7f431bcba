"""`prunelab run RECIPE --dense CKPT` starts the study from that checkpoint, on its network,
instead of training the recipe's model (reusing the quick study's model, or another width)."""

import pytest
import torch
from tiny_recipe import TINY_RECIPE

from prunelab.app.cli import main
from prunelab.models import VGG, build_model, load_model, save_checkpoint


def _argv(tmp_path, jpeg_root, cifar_cache, *extra):
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(TINY_RECIPE.format(lr=0.01))
    return ["run", str(recipe), "--data-dir", str(jpeg_root), "--cache-dir", str(cifar_cache),
            "--no-progress", *extra]  # fmt: skip


def test_run_starts_from_the_given_checkpoint_and_its_network(
    tmp_path, jpeg_root, cifar, cifar_cache, capfd
):
    torch.manual_seed(0)
    given = save_checkpoint(tmp_path / "w025.pth", VGG(width=0.25))
    out = tmp_path / "run"
    argv = _argv(tmp_path, jpeg_root, cifar_cache, "--dense", str(given), "--out", str(out))
    assert main(argv) == 0
    log = "".join(capfd.readouterr())
    assert "train epoch" not in log and "train: epoch" not in log  # nothing trained densely
    dense, ck = load_model(out / "dense" / "model.pth")
    assert dense.prunelab_arch["kwargs"]["width"] == 0.25  # the file's width, not the recipe's
    assert ck["meta"]["source"] == f"checkpoint {given}"
    for name, tensor in load_model(given)[0].state_dict().items():
        assert torch.equal(dense.state_dict()[name], tensor), name
    report = (out / "report.md").read_text()
    assert "width 0.25" in report and "width 0.125" not in report
    # the same run again finds its steps done
    assert main(argv) == 0
    assert "[skip] dense model" in "".join(capfd.readouterr())


USER_NET = """
from torch import nn

def tiny(num_classes=10, in_channels=3):
    return nn.Sequential(nn.Conv2d(in_channels, 4, 3), nn.Flatten(), nn.LazyLinear(num_classes))
"""


@pytest.mark.parametrize("case", ["missing", "user code", "no record"])
def test_run_dense_that_cannot_be_used_fails_before_anything_is_written(
    case, tmp_path, jpeg_root, cifar_cache, capsys, monkeypatch
):
    """One line naming the file and what to do, exit status 2, no run folder: a missing file;
    a user model's checkpoint under a recipe for another model (prunelab never imports code
    a file names); a bare state dict that is not the study's VGG (no record to rebuild)."""
    given, expect = tmp_path / "missing.pth", "missing.pth"
    if case == "user code":
        (tmp_path / "usernets.py").write_text(USER_NET)
        monkeypatch.syspath_prepend(str(tmp_path))
        given, expect = tmp_path / "user.pth", "name is 'usernets:tiny'"
        model = build_model("usernets:tiny")
        model(torch.zeros(1, 3, 32, 32))  # materialise the lazy layer
        save_checkpoint(given, model)
    elif case == "no record":
        given, expect = tmp_path / "bare.pth", "--dense needs one written by prunelab"
        torch.save({"state_dict": {"w": torch.zeros(3)}}, given)
    out = tmp_path / "run"
    code = main(_argv(tmp_path, jpeg_root, cifar_cache, "--dense", str(given), "--out", str(out)))
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and expect in err, err
    assert not out.exists()
