"""The [compare] recipe end to end on a small real subset: tables, figure, achieved
sparsities, exported files; and its recipe checks."""

import json
import tomllib
from pathlib import Path

import pytest

from prunelab.app.recipes import load_recipe
from prunelab.app.run import run_recipe
from prunelab.errors import RecipeError
from prunelab.export import load_compressed
from prunelab.pruning import sparsity_report

RECIPE = """
name = "tiny-compare"
description = "CI-sized comparison"
seed = 1

[data]
val_size = 500
train_subset = 2000
test_subset = 500

[dense]
width = 0.25

[dense.train]
epochs = 1
batch_size = 128
bf16 = true

[compare]
sparsities = [0.6, 0.9]
methods = ["uniform", "sensitivity", "gradual"]

[compare.scan]
sparsities = [0.5, 0.8, 0.95]
bf16 = true

[compare.finetune]
epochs = 1
batch_size = 128
bf16 = true

[compare.gradual]
prune_every = 2
prune_steps_fraction = 0.5
"""


@pytest.fixture(scope="module")
def compared(tmp_path_factory, jpeg_root, cifar, cifar_cache):
    tmp = tmp_path_factory.mktemp("compare")
    (tmp / "tiny.toml").write_text(RECIPE)
    rec = load_recipe(tmp / "tiny.toml")
    out = tmp / "run"
    results = run_recipe(rec, jpeg_root, out, cache=cifar_cache, progress=False)
    return rec, out, results


def test_outputs_written_and_agree(compared):
    rec, out, results = compared
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["rows"] == json.loads(json.dumps(results["rows"]))
    assert len(on_disk["rows"]) == 6
    png = (out / "figures" / "accuracy_vs_sparsity.png").read_bytes()
    assert png[:4] == b"\x89PNG" and len(png) > 10_000
    report = (out / "report.md").read_text()
    assert "figures/accuracy_vs_sparsity.png" in report and "theoretical" in report
    for row in on_disk["rows"]:
        line = next(
            ln
            for ln in report.splitlines()
            if ln.startswith(f"| {row['label']} | {row['target']:.2f} |")
        )
        assert f"{100 * row['accuracy_after']:.2f}" in line
        assert f"{row['export_bytes'] / 1024:.1f}" in line
        assert (row["accuracy_before"] is None) == (row["method"] == "gradual")
    assert on_disk["scan"]["split"] == "val" and on_disk["scan"]["images"] == 500


def test_achieved_sparsities_match_plans(compared):
    _, out, results = compared
    for row in results["rows"]:
        model = load_compressed(out / "export" / f"{row['method']}-s{row['target']:.2f}.plz")
        measured = sparsity_report(model, input_size=None)["prunable_sparsity"]
        assert measured == pytest.approx(row["sparsity"], abs=1e-12)
        assert row["sparsity"] == pytest.approx(row["planned_sparsity"], abs=1e-4)
        assert row["planned_sparsity"] == pytest.approx(row["target"], abs=1e-4)
        assert row["export_bytes"] < row["plain_state_dict_bytes"]
    sens = results["plans"]["sensitivity-s0.90"]["plan"]
    assert len(set(sens.values())) > 1  # not uniform


def test_rerun_skips_finished_steps(compared, jpeg_root, cifar_cache):
    rec, out, results = compared
    files = [p for p in out.rglob("*") if p.suffix in (".pth", ".plz", ".json")]
    before = {
        p: p.stat().st_mtime_ns for p in files if p.name not in ("results.json", "recipe.json")
    }
    again = run_recipe(rec, jpeg_root, out, cache=cifar_cache, progress=False)
    assert again["timings_seconds"] == {}  # no step ran
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert again["rows"] == results["rows"]


def write(tmp_path: Path, extra: str, data: str = "[data]\nval_size = 100\n") -> Path:
    p = tmp_path / "r.toml"
    p.write_text(data + "[dense]\nwidth = 0.25\n" + extra)
    return p


@pytest.mark.parametrize(
    "extra, expected",
    [
        ("[compare]\nbogus = 1\n", "compare.bogus"),
        ("[compare]\nmethods = ['uniform', 'magic']\n", "compare.methods"),
        ("[compare]\nsparsities = [0.5, 1.0]\n", "compare.sparsities"),
        ("[compare.finetune]\nkeep_best = true\n", "keep_best"),
        ("[compare.finetune]\nlearning_rate = 0.1\n", "learning_rate"),
        ("[compare.gradual]\nprune_every = 0\n", "prune_every"),
        ("[compare.plan]\ndefault_cap = 1.0\n", "default_cap"),
    ],
)
def test_bad_compare_tables_are_refused(tmp_path, extra, expected):
    with pytest.raises(RecipeError, match=expected.replace(".", r"\.")):
        load_recipe(write(tmp_path, extra))


def test_compare_needs_a_validation_split(tmp_path):
    with pytest.raises(RecipeError, match="val_size"):
        load_recipe(write(tmp_path, "[compare]\n", data="[data]\nval_size = 0\n"))


def test_shipped_recipe_parses():
    path = Path(__file__).resolve().parents[1] / "recipes" / "beyond.toml"
    rec = load_recipe(path)
    assert rec["compare"]["sparsities"] == [0.6, 0.8, 0.9]
    assert rec["compare"]["methods"] == ["uniform", "sensitivity", "gradual"]
    assert rec["dense"]["train"].epochs == 10 and rec["dense"]["width"] == 0.25
    assert (
        tomllib.loads(path.read_text())["dense"]
        == tomllib.loads((path.parent / "quick.toml").read_text())["dense"]
    )
