"""Sensitivity scan: the fast (suffix-reuse) path equals the straightforward one; plots/files."""

import copy
import csv
import json

import pytest
import torch
from torch import nn

from prunelab import precision
from prunelab.errors import PlanError
from prunelab.fold import fold_batchnorm
from prunelab.models import VGG
from prunelab.pruning import fine_grained_mask
from prunelab.sensitivity import (
    plot_layer_params,
    plot_sensitivity,
    plot_weight_histograms,
    sensitivity_scan,
    write_scan,
)
from prunelab.train import predict

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SPARSITIES = (0.4, 0.7, 0.9)


def bits(model: nn.Module) -> dict[str, bytes]:
    return {k: v.detach().contiguous().numpy().tobytes() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def setup():
    """A small random VGG whose BN statistics fit the data, so predictions are not constant."""
    torch.manual_seed(0)
    model = VGG(width=0.125)
    x = torch.rand(200, 3, 32, 32)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # running stats = this batch's statistics
    with torch.no_grad():
        model.train()(x)
    model.eval()
    with torch.no_grad():
        y = model(x).argmax(1)
    y[::3] = torch.randint(0, 10, (len(y[::3]),))  # dense accuracy well inside (0, 1)
    assert len(y.unique()) > 2
    return model, x, y


def scan(model, x, y, **kw):
    kw = {"sparsities": SPARSITIES, "batch_size": 64, "progress": False, **kw}
    return sensitivity_scan(model, x, y, **kw)


@pytest.mark.parametrize("channels_last", [True, False])
def test_fast_path_equals_straightforward(setup, channels_last):
    model, x, y = setup
    model.train()
    before = bits(model)
    fast = scan(model, x, y, scope="all", channels_last=channels_last)
    assert bits(model) == before and model.training
    assert all(p.is_contiguous() for p in model.parameters())
    slow = scan(model, x, y, scope="all", channels_last=channels_last, reuse=False)
    model.eval()
    assert bits(model) == before
    assert fast["method"] == "suffix-reuse" and slow["method"] == "plain re-evaluation: reuse=False"
    assert fast["dense_accuracy"] == slow["dense_accuracy"]
    assert list(fast["layers"]) == [f"backbone.conv{i}" for i in range(8)] + ["classifier"]
    for name, r in fast["layers"].items():
        assert r["accuracy"] == slow["layers"][name]["accuracy"], name
        assert r["achieved"] == [round(r["params"] * s) / r["params"] for s in SPARSITIES]
    accs = [a for r in fast["layers"].values() for a in r["accuracy"]]
    assert len(set(accs)) > 3  # pruning actually changed predictions


def test_scan_point_matches_manual_pruning(setup):
    model, x, y = setup
    result = scan(
        model,
        x,
        y,
        layers=["backbone.conv5.weight"],
        channels_last=False,
        batch_size=len(x),
        fold_bn=False,
    )
    w = model.backbone.conv5.weight
    original = w.detach().clone()
    with torch.no_grad():
        w.mul_(fine_grained_mask(w, 0.7))
        acc = int((model(x).argmax(1) == y).sum()) / len(y)
        w.copy_(original)
        dense = int((model(x).argmax(1) == y).sum()) / len(y)
    assert result["layers"]["backbone.conv5"]["accuracy"][1] == acc
    assert result["dense_accuracy"] == dense


def test_folded_scan_probes_are_folded_pruned_models(setup):
    """With BN folded, each point equals pruning the original weights (the ranking must not see
    the per-channel BN scale) and then folding; the folded and unfolded scans agree."""
    model, x, y = setup
    before = bits(model)
    folded = scan(model, x, y, layers=["backbone.conv3", "backbone.conv6"], batch_size=len(x))
    plain = scan(
        model, x, y, layers=["backbone.conv3", "backbone.conv6"], batch_size=len(x), fold_bn=False
    )
    assert folded["settings"]["fold_bn"] and not plain["settings"]["fold_bn"]
    assert bits(model) == before
    for name in ("backbone.conv3", "backbone.conv6"):
        conv = dict(model.named_modules())[name]
        for s, acc in zip(SPARSITIES, folded["layers"][name]["accuracy"], strict=True):
            pruned = copy.deepcopy(model)
            w = dict(pruned.named_modules())[name].weight
            with torch.no_grad():
                w.mul_(fine_grained_mask(conv.weight, s))
            preds = predict(fold_batchnorm(pruned), x, batch_size=len(x))
            assert acc == int((preds == y).sum()) / len(y), (name, s)
        diffs = [
            abs(a - b)
            for a, b in zip(
                folded["layers"][name]["accuracy"], plain["layers"][name]["accuracy"], strict=True
            )
        ]
        assert max(diffs) <= 2 / len(y)  # fp32 rounding may flip a near-tie, no more


def test_uint8_images_are_scaled(setup):
    model, _, y = setup
    x8 = torch.randint(0, 256, (200, 3, 32, 32), dtype=torch.uint8)
    a = scan(model, x8, y, layers=["backbone.conv7"])
    b = scan(model, x8.float() / 255, y, layers=["backbone.conv7"])
    assert a["layers"] == b["layers"] and a["dense_accuracy"] == b["dense_accuracy"]


def test_generic_sequential_reuses_graph_cuts_and_equals_plain():
    torch.manual_seed(1)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.Flatten(), nn.Linear(8 * 4 * 4, 4)
    )
    x, y = torch.rand(50, 3, 8, 8), torch.randint(0, 4, (50,))
    before = bits(net)
    r = scan(net, x, y, scope="all")
    plain = scan(net, x, y, scope="all", reuse=False)
    assert r["method"] == "graph-cut reuse" and list(r["layers"]) == ["0", "2", "4"]
    assert r["layers"] == plain["layers"] and r["dense_accuracy"] == plain["dense_accuracy"]
    assert bits(net) == before


def test_bad_arguments(setup):
    model, x, y = setup
    with pytest.raises(PlanError, match="backbone.conv0"):
        scan(model, x, y, layers=["nope"])
    with pytest.raises(ValueError, match="1.5"):
        scan(model, x, y, sparsities=(0.5, 1.5))
    with pytest.raises(ValueError, match="prunes nothing"):
        scan(model, x, y, sparsities=(0.001,))


def test_plots_and_files(setup, tmp_path):
    model, x, y = setup
    result = scan(model, x[:64], y[:64], layers=["backbone.conv0", "backbone.conv1"])
    paths = [tmp_path / n for n in ("scan.png", "params.png", "hist.png")]
    plot_sensitivity(result, paths[0])
    plot_layer_params(model, paths[1])
    plot_weight_histograms(model, paths[2], title="dense")
    for p in paths:
        assert p.read_bytes()[:8] == PNG_MAGIC
    write_scan(result, tmp_path / "scan.json", tmp_path / "scan.csv")
    assert json.loads((tmp_path / "scan.json").read_text())["layers"] == result["layers"]
    rows = list(csv.DictReader((tmp_path / "scan.csv").open()))
    assert len(rows) == 2 * len(SPARSITIES)
    assert rows[0]["layer"] == "backbone.conv0" and float(rows[0]["sparsity"]) == 0.4
    assert float(rows[-1]["accuracy"]) == result["layers"]["backbone.conv1"]["accuracy"][-1]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["scan.png", "params.png", "hist.png", "scan.json", "scan.csv"]
    )  # no temp files left


def test_fast_path_runs_the_prefix_once_per_batch(setup):
    model, x, y = setup
    calls = []
    hook = model.backbone.conv0.register_forward_hook(lambda m, i, o: calls.append(len(o)))
    try:
        scan(model, x, y, scope="all", batch_size=100, fold_bn=False)
    finally:
        hook.remove()
    # per batch: one dense pass plus one per conv0 probe; the reuse check adds two on batch 0;
    # the other layers' probes (classifier included) never re-enter the first layer
    assert len(calls) == 2 * (len(SPARSITIES) + 1) + 2


@pytest.fixture()
def bf16_kernels(monkeypatch):
    """bf16 as asked even on a CPU where prunelab.precision would run fp32: the bf16 path
    itself is under test (slow there, still correct)."""
    monkeypatch.setattr(precision, "onednn_has_bf16", lambda: True)


def test_bf16_autocast_runs_and_restores(setup, bf16_kernels):
    model, x, y = setup
    before = bits(model)
    r = scan(model, x[:64], y[:64], layers=["backbone.conv6"], bf16=True)
    assert r["settings"]["bf16"]
    assert all(0 <= a <= 1 for a in r["layers"]["backbone.conv6"]["accuracy"])
    assert bits(model) == before


def test_bf16_probes_see_the_pruned_weights(setup, bf16_kernels):
    """Regression: autocast's weight cache once made every bf16 probe score the dense model."""
    model, x, y = setup
    fp32 = scan(model, x, y, scope="all")
    bf16 = scan(model, x, y, scope="all", bf16=True)
    accs = [a for r in bf16["layers"].values() for a in r["accuracy"]]
    assert len(set(accs)) > 3
    for name, r in bf16["layers"].items():
        for a, b in zip(r["accuracy"], fp32["layers"][name]["accuracy"], strict=True):
            assert abs(a - b) <= 0.1, (name, a, b)
