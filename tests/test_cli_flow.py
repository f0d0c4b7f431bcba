"""The CLI end to end on a real subset: train -> evaluate -> prune -> sparsity ->
sensitivity -> finetune, checking the numbers each step promises."""

import json

import pytest
import torch

from prunelab.app.cli import main
from prunelab.models import VGG, load_model


@pytest.fixture(scope="module")
def flow(tmp_path_factory, jpeg_root, cifar, cifar_cache):
    d = tmp_path_factory.mktemp("flow")
    data = [
        "--data-dir",
        str(jpeg_root),
        "--cache-dir",
        str(cifar_cache),
        "--val-size",
        "200",
        "--train-subset",
        "1000",
        "--test-subset",
        "500",
        "--no-progress",
    ]
    assert (
        main(
            [
                "train",
                *data,
                "--width",
                "0.25",
                "--epochs",
                "1",
                "--batch-size",
                "100",
                "--bf16",
                "--out",
                str(d / "dense.pth"),
            ]
        )
        == 0
    )
    return d, data


def test_evaluate_writes_json_and_confusion(flow, capsys):
    d, data = flow
    capsys.readouterr()
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                str(d / "dense.pth"),
                *data,
                "--json",
                str(d / "m.json"),
                "--confusion",
                str(d / "cm.png"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    m = json.loads((d / "m.json").read_text())
    assert m["num_images"] == 500 and sum(map(sum, m["confusion_matrix"])) == 500
    assert f"accuracy {m['accuracy']:.4f}" in out and "| airplane |" in out
    assert (d / "cm.png").read_bytes()[:4] == b"\x89PNG"


def test_prune_reaches_round_n_s_over_n_and_survives_reload(flow, capsys):
    d, _ = flow
    s = 0.55
    assert (
        main(
            [
                "prune",
                "--checkpoint",
                str(d / "dense.pth"),
                "--sparsity",
                str(s),
                "--out",
                str(d / "p.pth"),
            ]
        )
        == 0
    )
    model, ck = load_model(d / "p.pth")
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Conv2d):
            n = m.weight.numel()
            zeros = n - int(torch.count_nonzero(m.weight))
            assert zeros == round(n * s), name
            assert torch.equal(ck["masks"][f"{name}.weight"], m.weight != 0)
    plain = VGG(0.25)
    plain.load_state_dict(torch.load(d / "p.pth", weights_only=True)["state_dict"])
    assert int(torch.count_nonzero(plain.backbone.conv3.weight)) == int(
        torch.count_nonzero(model.backbone.conv3.weight)
    )
    capsys.readouterr()
    assert main(["sparsity", str(d / "p.pth"), "--json", str(d / "sp.json")]) == 0
    rep = json.loads((d / "sp.json").read_text())
    out = capsys.readouterr().out
    n_total = rep["prunable_params"]
    expected = sum(round(r["params"] * s) for r in rep["layers"]) / n_total
    assert rep["prunable_sparsity"] == pytest.approx(expected, abs=1e-12)
    assert "backbone.conv3" in out


def test_sensitivity_writes_figure(flow):
    d, data = flow
    assert (
        main(
            [
                "sensitivity",
                "--checkpoint",
                str(d / "dense.pth"),
                *data,
                "--sparsities",
                "0.5,0.9",
                "--split",
                "test",  # the real test images (500 of them), as the study scanned
                "--out",
                str(d / "sens"),
            ]
        )
        == 0
    )
    res = json.loads((d / "sens" / "sensitivity.json").read_text())
    assert res["split"] == "test" and len(res["layers"]) == 8
    assert (d / "sens" / "sensitivity.png").read_bytes()[:4] == b"\x89PNG"


def test_finetune_keeps_zeros_and_writes_curve(flow, capsys):
    d, data = flow
    if not (d / "p.pth").exists():
        assert (
            main(
                [
                    "prune",
                    "--checkpoint",
                    str(d / "dense.pth"),
                    "--sparsity",
                    "0.55",
                    "--out",
                    str(d / "p.pth"),
                ]
            )
            == 0
        )
    before, ck = load_model(d / "p.pth")
    assert (
        main(
            [
                "finetune",
                "--checkpoint",
                str(d / "p.pth"),
                *data,
                "--epochs",
                "1",
                "--batch-size",
                "100",
                "--optimizer",
                "adam",
                "--lr",
                "0.01",
                "--out",
                str(d / "f.pth"),
            ]
        )
        == 0
    )
    after, fck = load_model(d / "f.pth")
    for k, mask in ck["masks"].items():
        w = after.get_parameter(k)
        assert torch.count_nonzero(w[~mask]) == 0, k
    assert fck["meta"]["sparsity_before"] == fck["meta"]["sparsity_after"]
    assert not torch.equal(before.backbone.conv3.weight, after.backbone.conv3.weight)
    assert (d / "f.png").read_bytes()[:4] == b"\x89PNG"
