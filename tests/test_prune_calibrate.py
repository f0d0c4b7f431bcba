"""`prunelab prune --calibrate N`: BatchNorm statistics re-estimated on training images after
pruning, weights untouched, recorded in the checkpoint; a model without BatchNorm refused."""

import sys

import pytest
import torch

from prunelab.app.cli import main
from prunelab.app.steps import calibration_images, load_splits, norm
from prunelab.evaluation import normalizer, to_input
from prunelab.models import build_model, load_model, save_checkpoint


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    path = tmp_path_factory.mktemp("calibrate") / "vgg.pth"
    torch.manual_seed(0)
    return save_checkpoint(path, build_model("vgg", {"width": 0.125}))


def _prune(dense, out, jpeg_root, cifar_cache, *extra):
    data = ["--data-dir", str(jpeg_root), "--cache-dir", str(cifar_cache)]
    return main(["prune", str(dense), *extra, *data, "--out", str(out)])


@pytest.mark.parametrize("how", [["--channels", "0.5"], ["--sparsity", "0.5"]], ids=str)
def test_calibrate_re_estimates_statistics_and_leaves_weights(
    dense, tmp_path, jpeg_root, cifar, cifar_cache, capsys, how
):
    plain, calibrated = tmp_path / "plain.pth", tmp_path / "cal.pth"
    assert _prune(dense, plain, jpeg_root, cifar_cache, *how) == 0
    assert _prune(dense, calibrated, jpeg_root, cifar_cache, *how, "--calibrate", "300") == 0
    assert "re-estimated on 300 training images" in capsys.readouterr().out
    a, _ = load_model(plain)
    b, ck = load_model(calibrated)
    assert ck["meta"]["bn_recalibrated_on"] == 300
    sa, sb = a.state_dict(), b.state_dict()
    for k in sa:  # the same weights; only the running statistics moved
        moved = not torch.equal(sa[k], sb[k])
        assert moved == k.endswith(("running_mean", "running_var", "num_batches_tracked")), k
    # the first BatchNorm now holds the mean of conv0's outputs on the drawn training images
    splits = load_splits(jpeg_root, cifar_cache, val_size=5000, seed=0)
    x = calibration_images(splits, 300, seed=0)
    inputs = to_input(x, False, normalizer(norm(b), (1, *x.shape[1:]), torch.device("cpu")))
    with torch.no_grad():
        out = b.backbone.conv0(inputs)
    expected = out.mean(dim=(0, 2, 3))
    torch.testing.assert_close(b.backbone.bn0.running_mean, expected, rtol=1e-4, atol=1e-5)


NO_BATCHNORM = """
import torch
from torch import nn


class NoBatchNorm(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))
"""


def test_calibrate_without_batchnorm_is_one_line_and_writes_nothing(
    tmp_path, jpeg_root, cifar_cache, capsys, monkeypatch
):
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    (tmp_path / "nobn_model.py").write_text(NO_BATCHNORM)
    spec = "nobn_model:NoBatchNorm"
    save_checkpoint(tmp_path / "m.pth", build_model(spec, {}))
    out = tmp_path / "pruned.pth"
    code = _prune(tmp_path / "m.pth", out, jpeg_root, cifar_cache, "--sparsity", "0.5",
                  "--calibrate", "64", "--model", spec)  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "no BatchNorm layers" in err[0] and "--calibrate" in err[0]
    assert not out.exists()
