"""A reduced recipe end to end on real CIFAR-10 images: the report must agree with
results.json, fine-tuning must not change sparsity, and every row's metrics must be
recomputable from its saved predictions."""

import json

import pytest
import torch

from prunelab.app.recipes import load_recipe
from prunelab.app.run import run_recipe
from prunelab.app.steps import load_splits
from prunelab.latency_report import format_latency_table
from prunelab.metrics import classification_metrics

RECIPE = """
name = "tiny"
description = "CI-sized study"
seed = 1

[data]
val_size = 500
train_subset = 3000
test_subset = 1000

[dense]
width = 0.25

[dense.train]
epochs = 3
batch_size = 128
bf16 = true

[sensitivity]
sparsities = [0.5, 0.9]
split = "val"

[prune]
sparsities = [0.5, 0.7]

[[finetune]]
name = "adam"
optimizer = "adam"
lr = 0.01
schedule = "constant"
epochs = 1

[[finetune]]
name = "sgd"
optimizer = "sgd"
lr = 0.01
schedule = "cosine"
epochs = 1
"""


@pytest.fixture(scope="module")
def study(tmp_path_factory, jpeg_root, cifar, cifar_cache):
    tmp = tmp_path_factory.mktemp("study")
    recipe = tmp / "tiny.toml"
    recipe.write_text(RECIPE)
    cache = cifar_cache  # already holds the decoded images
    rec = load_recipe(recipe)
    out = tmp / "run"
    results = run_recipe(rec, jpeg_root, out, cache=cache, progress=False)
    return rec, out, results, cache, jpeg_root


def test_report_and_results_agree(study):
    rec, out, results, _, _ = study
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["models"] == json.loads(json.dumps(results["models"]))
    report = (out / "report.md").read_text()
    for row in on_disk["models"]:
        line = next(ln for ln in report.splitlines() if ln.startswith(f"| {row['name']} |"))
        assert f"{100 * row['accuracy']:.2f}" in line
        assert f"{row['precision']:.4f}" in line and f"{row['specificity']:.4f}" in line
    for fig in ("sensitivity", "confusion", "finetune_curves", "weights_dense", "layer_params"):
        assert (out / "figures" / f"{fig}.png").read_bytes()[:4] == b"\x89PNG"
        assert f"figures/{fig}.png" in report
    assert [m["target"] for m in on_disk["models"]] == [0.0, 0.5, 0.7]
    assert on_disk["models"][0]["accuracy"] > 0.3  # the dense model learned something


def test_finetuning_keeps_sparsity_exactly(study):
    _, _, results, _, _ = study
    assert len(results["finetune_runs"]) == 4
    for run in results["finetune_runs"]:
        assert run["sparsity_before"] == run["sparsity_after"]
        n_target = run["target"]
        assert run["sparsity_after"] == pytest.approx(n_target, abs=1e-3)


def test_metrics_recomputed_from_saved_predictions(study):
    rec, out, results, cache, root = study
    d = rec["data"]
    splits = load_splits(
        root,
        cache,
        val_size=d["val_size"],
        seed=rec["seed"],
        train_subset=d["train_subset"],
        test_subset=d["test_subset"],
    )
    for row in results["models"]:
        saved = json.loads((out / row["predictions_file"]).read_text())
        m = classification_metrics(splits.test_y, torch.tensor(saved["predictions"]), 10)
        for k in ("accuracy", "precision", "recall", "specificity", "f1"):
            assert m[k] == pytest.approx(row[k], abs=1e-12), (row["name"], k)


def test_rerun_skips_finished_steps(study):
    rec, out, results, cache, root = study
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.pth")}
    again = run_recipe(rec, root, out, cache=cache, progress=False)
    assert again["timings_seconds"] == {}  # no step ran
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.pth")} == before
    assert again["models"] == results["models"]


def test_latency_of_dense_and_pruned_models_is_in_the_report(study):
    _, out, results, _, _ = study
    lat = results["latency"]
    assert lat["baseline"] == "dense"
    assert {(r["model"], r["batch_size"]) for r in lat["rows"]} == {
        (m, b) for m in ("dense", "s0.50", "s0.70") for b in (1, 64)
    }
    assert all(r["median_ms"] > 0 for r in lat["rows"])
    report = (out / "report.md").read_text()
    assert "## Latency (measured)" in report
    # the report prints the latency result's own table (medians over 100 ms lose decimals)
    table = [line for line in format_latency_table(lat).splitlines() if line.startswith("| s0")]
    assert len(table) == 4 and all(line in report for line in table)
