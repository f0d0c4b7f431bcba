"""Smoke test of the benchmark: every row is there and the arithmetic is right (no timings)."""

from __future__ import annotations

import json

import pytest
import torch

from prunelab.app import bench
from prunelab.models import VGG


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (96, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (96,), generator=g)
    model = bench.calibrate(VGG(width=0.125), x[:64])
    return model, x, y, bench.flops_per_image(model)


def test_flops_per_image_counts_convs_and_classifier(tiny):
    model, _, _, fpi = tiny
    names = [n for n, _ in fpi["layers"]]
    assert names == [f"backbone.conv{i}" for i in range(8)] + ["classifier"]
    assert fpi["total"] == sum(f for _, f in fpi["layers"])
    conv0 = model.backbone.conv0.weight.numel() * 32 * 32 * 2
    assert fpi["layers"][0][1] == conv0
    assert bench.suffix_flops(fpi["layers"], "backbone.conv0") == fpi["total"]
    assert bench.suffix_flops(fpi["layers"], "classifier") == fpi["layers"][-1][1]
    assert bench.scan_work(fpi, ["backbone.conv0"], 3, reuse=True) == 4 * fpi["total"]


def test_rows_and_ratio_arithmetic(tiny):
    model, x, y, fpi = tiny
    rows, _ = bench.bench_eval(model, x[:64], y[:64], fpi, batch_size=32, reps=1)
    rows += bench.bench_train(model, x[:64], y[:64], fpi, batch_size=16)
    rows += bench.bench_scan(model, x[:40], y[:40], fpi, [0.5], reps=1)
    peak = {"fp32": 1e11, "bf16": 2e11, "detail": {}, "n": 0}
    bench.finish(rows, peak)
    paths = {(r.task, r.path) for r in rows}
    assert len(paths) == len(rows) == 5 + 3 + 4
    for task in ("eval", "train", "scan"):
        bases = [r for r in rows if r.task == task and r.baseline]
        assert len(bases) == 1, task
        base = bases[0]
        for r in rows:
            if r.task != task:
                continue
            want = r.value / base.value if r.unit == "img/s" else base.value / r.value
            assert r.ratio == pytest.approx(want)
            assert r.peak_fraction == pytest.approx(r.flops / peak[r.precision])
    ev = {r.path: r for r in rows if r.task == "eval"}
    assert all("bf16" in p or ev[p].pred_diff == 0 for p in ev), "fp32 paths must agree"
    for r in rows:
        if r.task == "train":
            assert r.flops == pytest.approx(r.value * 3 * fpi["total"])
        if r.task == "scan" and "fp32" in r.path:
            assert r.pred_diff == 0 and r.accuracy_diff == 0.0  # identical accuracies
    table = bench.format_table(rows, peak)
    assert all(r.path in table for r in rows)
    verdicts = bench.goals(rows, {}, width=0.125)
    assert any(g.startswith("eval bf16") for g, _, _ in verdicts)
    assert any(g.startswith("scan fp32") for g, _, _ in verdicts)
    assert all("width 1.0" in g for g, _, _ in verdicts)


def test_speedup_direction():
    assert bench.speedup(300.0, 100.0, "img/s") == 3.0
    assert bench.speedup(10.0, 40.0, "s") == 4.0


def test_per_sample_dataset_augments_one_image_at_a_time():
    x = torch.arange(3 * 32 * 32, dtype=torch.float32).reshape(1, 3, 32, 32).to(torch.uint8)
    ds = bench.PerSampleDataset(x, torch.tensor([3]), augment=True, seed=0)
    img, label = ds[0]
    assert img.shape == (3, 32, 32) and img.dtype == torch.float32 and label == 3
    assert 0.0 <= img.min() and img.max() <= 1.0


def test_main_end_to_end_writes_json(jpeg_root, cifar_cache, tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = [
        "--width",
        "0.125",
        "--n-eval",
        "40",
        "--n-train",
        "32",
        "--train-batch-size",
        "16",
        "--n-scan",
        "20",
        "--scan-sparsities",
        "0.5",
        "--reps",
        "1",
        "--peak-size",
        "256",
        "--no-profile",
        "--data-dir",
        str(jpeg_root),
        "--cache-dir",
        str(cifar_cache),
        "--json",
        str(out),
        "--plot",
        str(tmp_path / "bench.png"),
    ]
    assert bench.main(argv) == 0
    text = capsys.readouterr().out
    assert "goals:" in text and "peak" in text
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = json.loads(out.read_text())
    assert len(result["rows"]) == 12 and result["goals"]
    assert {r["task"] for r in result["rows"]} == {"eval", "train", "scan"}


def test_study_rows_on_a_tiny_recipe(jpeg_root, cifar_cache, tmp_path):
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(
        'name = "tiny"\nseed = 0\n[data]\nval_size = 32\ntrain_subset = 64\n'
        "test_subset = 40\n[dense]\nwidth = 0.125\n"
        'checkpoint = ""\n[dense.train]\nepochs = 1\nbatch_size = 32\n'
        '[sensitivity]\nsparsities = [0.5]\nsplit = "test"\n[prune]\nsparsities = [0.5]\n'
        '[[finetune]]\nname = "sgd"\nepochs = 1\nbatch_size = 32\nlr = 0.01\n'
    )
    rows = bench.bench_study(recipe, str(jpeg_root), str(cifar_cache))
    bench.finish(rows, {"fp32": 1.0, "bf16": 1.0})
    assert [r.baseline for r in rows] == [True, False]
    assert rows[1].ratio == pytest.approx(rows[0].value / rows[1].value)
    assert 0.0 <= rows[0].accuracy <= 1.0 and 0.0 <= rows[1].accuracy <= 1.0


def test_unwritable_outputs_are_refused_before_any_work(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code = bench.main(["--plot", str(blocker / "b.png"), "--data-dir", str(tmp_path / "none")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "is a file" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--scan-sparsities", "abc"], "'abc' is not a number"),
        (["--scan-sparsities", "0.5,1.5"], "1.5"),
        (["--reps", "0"], "must be >= 1"),
        (["--width", "0"], "must be > 0"),
        (["--n-train", "100", "--train-batch-size", "64"], "expected at least 128"),
    ],
)
def test_bad_options_are_one_line_errors(tmp_path, capsys, argv, expected):
    try:  # option errors exit from argparse, others return: both must say one line, status 2
        code = bench.main([*argv, "--data-dir", str(tmp_path), "--json", str(tmp_path / "b.json")])
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and expected in err and len(err.splitlines()) == 1
    assert not (tmp_path / "b.json").exists()
