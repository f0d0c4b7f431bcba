"""The [channels] comparison end to end on a small slice of the real images: every method
fine-tuned with the same budget, latency measured for all in one run, a report and a figure."""

import json

import pytest

from prunelab.app.recipes import load_recipe
from prunelab.app.run import run_recipe

RECIPE = """
name = "tiny-channels"
seed = 0

[model]
name = "vgg"
width = 0.125

[data]
val_size = 200
train_subset = 512
test_subset = 200
scan_subset = 100

[dense.train]
epochs = 1
batch_size = 128

[channels]
ratios = [0.5]
importance = "l2"

[channels.scan]
ratios = [0.5]

[channels.finetune]
epochs = 1
batch_size = 128
bf16 = false

[channels.latency]
batch_sizes = [1, 8]
reps = 3
"""


@pytest.fixture(scope="module")
def result(tmp_path_factory, jpeg_root, cifar, cifar_cache):
    tmp = tmp_path_factory.mktemp("channels")
    (tmp / "r.toml").write_text(RECIPE)
    rec = load_recipe(tmp / "r.toml")
    res = run_recipe(rec, jpeg_root, out=tmp / "run", cache=cifar_cache, progress=False)
    return tmp / "run", res


def test_every_method_is_measured_beside_dense(result):
    run, res = result
    rows = {r["method"]: r for r in res["rows"]}
    assert set(rows) == {"dense", "fine", "uniform", "guided"}
    dense = rows["dense"]
    # channel pruning removes MACs; fine-grained keeps them (zeros are multiplied too)
    assert rows["uniform"]["macs"] < 0.5 * dense["macs"]
    assert rows["fine"]["macs"] == dense["macs"]
    # guided reaches at most the uniform model's MACs; fine-grained matches its size
    assert rows["guided"]["macs"] <= rows["uniform"]["macs"]
    assert rows["fine"]["nonzero_params"] <= rows["uniform"]["params"] * 1.01
    for r in res["rows"]:
        assert r["latency_ms_b1"] > 0 and r["latency_ms_b8"] > 0
    latency = json.loads((run / "latency.json").read_text())
    assert latency["baseline"] == "dense" and len(latency["rows"]) == 4 * 2


def test_a_copied_run_folder_redoes_nothing(result, rerun_copy):
    """Steps record paths inside the run folder relative to it, so a copy resumes as is."""
    text = rerun_copy(result[0], RECIPE)
    assert "[skip] finetune" in text and "[step]" not in text and "[redo]" not in text, text


def test_report_and_figure_written(result):
    run, res = result
    report = (run / "report.md").read_text()
    assert "channels, sensitivity-guided (same MACs)" in report and "## Latency" in report
    assert res["left_whole"] == {} and "left whole" not in report  # VGG: every conv can go
    assert (run / "figures" / "accuracy_vs_latency.png").stat().st_size > 10_000


def test_channel_pruned_models_reload_without_flags(result):
    from prunelab.models import load_model

    run, _ = result
    model, ck = load_model(run / "finetune" / "uniform-s0.50.pth")
    assert ck["arch"]["channels"] and "masks" not in ck
    assert model.backbone.conv0.out_channels == 4  # 8 channels at width 0.125, half kept


def test_a_model_remade_at_the_same_path_is_fine_tuned_and_timed_again(result, rerun_copy):
    """A changed pruning step (here the channel rounding) remakes the pruned models under
    the same file names: everything made from them must be redone, not skipped by name."""
    text = rerun_copy(
        result[0], RECIPE.replace('importance = "l2"', 'importance = "l2"\nround_to = 2')
    )
    for step in (
        "channels uniform 0.50",
        "finetune uniform-s0.50",
        "finetune guided-s0.50",
        "latency (interleaved, eager fp32)",
    ):
        assert f"[redo] {step}:" in text, (step, text)
    assert "[skip] finetune fine-s0.50" in text  # fine-grained pruning does not round


def test_calibrate_redoes_only_the_scores_before_fine_tuning(result, rerun_copy, tmp_path):
    """`calibrate = N` re-estimates each pruned model's BatchNorm statistics before "before
    FT" is measured: those evaluations are redone and nothing else, since fine-tuning
    normalises with each batch's own statistics and ends the same either way."""
    recipe = RECIPE.replace('importance = "l2"', 'importance = "l2"\ncalibrate = 128')
    text = rerun_copy(result[0], recipe)
    for method in ("fine", "uniform", "guided"):
        assert f"[redo] evaluate {method}-s0.50-before" in text, text
        assert f"[skip] finetune {method}-s0.50" in text, text
    assert "[skip] latency" in text and "[skip] evaluate dense" in text, text
    old = {r["method"]: r for r in result[1]["rows"]}
    new = {
        r["method"]: r for r in json.loads((tmp_path / "copy" / "results.json").read_text())["rows"]
    }
    assert all(new[m]["accuracy_after"] == old[m]["accuracy_after"] for m in old)
    assert any(
        new[m]["accuracy_before"] != old[m]["accuracy_before"] for m in ("uniform", "guided")
    )
    report = (tmp_path / "copy" / "report.md").read_text()
    assert "BatchNorm statistics re-estimated on 128 training images" in report


def test_layers_left_whole_are_one_report_line_per_reason():
    from prunelab.app.report import left_whole_lines

    why = "channel group 'a' cannot be pruned: it holds Conv2d 'g' (a grouped convolution)"
    lines = left_whole_lines({"a": why, "b": why, "g": "another reason"})
    assert lines == [
        f"- left whole by channel pruning (the ratios apply to the other layers): a, b ({why})",
        "- left whole by channel pruning (the ratios apply to the other layers): g "
        "(another reason)",
    ]
