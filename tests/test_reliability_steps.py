"""Steps are reused only when their settings are the same; outputs that are folders or
files where the other is expected are refused first; edited masks are re-applied, not
trained on and then failed."""

import json

import pytest
import torch
from tiny_recipe import TINY_RECIPE

from prunelab.app.cli import main
from prunelab.models import load_model, save_checkpoint
from prunelab.pruning import Pruner


def _run(tmp_path, jpeg_root, cifar_cache, lr, capsys, out="run"):
    recipe = tmp_path / "steps.toml"
    recipe.write_text(TINY_RECIPE.format(lr=lr))
    argv = ["run", str(recipe), "--data-dir", str(jpeg_root), "--cache-dir", str(cifar_cache)]
    assert main([*argv, "--out", str(tmp_path / out), "--no-progress"]) == 0
    return capsys.readouterr().out + capsys.readouterr().err


def test_edited_recipe_redoes_only_the_changed_step(tmp_path, jpeg_root, cifar, cifar_cache, capfd):
    first = _run(tmp_path, jpeg_root, cifar_cache, 0.01, capfd)
    assert "[step] finetune" in first
    ft = tmp_path / "run" / "finetune" / "s0.50-sgd.pth"
    before = ft.stat().st_mtime_ns
    same = _run(tmp_path, jpeg_root, cifar_cache, 0.01, capfd)
    assert "[skip] finetune" in same and ft.stat().st_mtime_ns == before
    changed = _run(tmp_path, jpeg_root, cifar_cache, 0.02, capfd)
    assert "[skip] dense model" in changed and "[skip] prune" in changed
    assert "[redo] finetune s0.50-sgd" in changed and "0.01 -> 0.02" in changed
    assert ft.stat().st_mtime_ns != before
    meta = load_model(ft)[1]["meta"]
    assert meta["config"]["lr"] == 0.02
    # the remade model is evaluated again: the report never shows the old model's score
    assert "[skip] evaluate dense" in changed and "[redo] evaluate s0.50-sgd" in changed
    reported = json.loads((tmp_path / "run" / "eval" / "s0.50-sgd.json").read_text())
    assert reported["accuracy"] == meta["test_accuracy"]


def test_steps_match_records_by_run_relative_paths_and_older_full_path_records(tmp_path):
    """A step's settings name paths inside the run folder as {run}/..., so a moved run folder
    matches its records; a record from before (full paths in its digest) matches too, and the
    step hands back the digest on record, which its child steps were made with."""
    import json

    from prunelab.app.study import Study, settings_digest

    def study(out):
        return Study({}, None, out, None, torch.device("cpu"), progress=False)

    def make(path):
        return lambda: path.write_text("made")

    old_run, new_run = tmp_path / "a", tmp_path / "b"
    for run in (old_run, new_run):
        run.mkdir()
    out = old_run / "x.txt"
    settings = {"src": str(old_run / "dense.pth"), "lr": 0.1}
    digest = study(old_run).step("x", out, make(out), settings)
    record = json.loads((old_run / "x.txt.settings.json").read_text())
    assert record["settings"]["src"] == "{run}/dense.pth"
    # the same step in a moved folder: skipped, same digest
    (new_run / "x.txt").write_text("kept")
    (new_run / "x.txt.settings.json").write_text(json.dumps(record))
    moved = {"src": str(new_run / "dense.pth"), "lr": 0.1}
    assert study(new_run).step("x", new_run / "x.txt", make(new_run / "x.txt"), moved) == digest
    assert (new_run / "x.txt").read_text() == "kept"
    # a record written before: its digest covers the full path; still a match, and its
    # digest (not the new one) is what child steps get
    legacy = settings_digest(moved)
    (new_run / "x.txt.settings.json").write_text(json.dumps({"digest": legacy}))
    assert study(new_run).step("x", new_run / "x.txt", make(new_run / "x.txt"), moved) == legacy
    assert (new_run / "x.txt").read_text() == "kept"
    # a real change is still redone
    changed = {**moved, "lr": 0.2}
    assert study(new_run).step("x", new_run / "x.txt", make(new_run / "x.txt"), changed) != digest
    assert (new_run / "x.txt").read_text() == "made"


@pytest.fixture()
def pruned(tmp_path):
    from prunelab.models import VGG

    torch.manual_seed(0)
    model = VGG(width=0.125)
    pruner = Pruner(model, 0.5)
    pruner.apply()
    with torch.no_grad():  # someone edits masked weights back to non-zero
        w = model.backbone.conv1.weight
        w[~pruner.masks["backbone.conv1.weight"]] = 0.5
    return save_checkpoint(tmp_path / "edited.pth", model, masks=pruner.masks)


def test_finetune_reapplies_edited_masks_and_warns(tmp_path, pruned, jpeg_root, cifar_cache):
    import subprocess
    import sys

    out = tmp_path / "ft.pth"
    r = subprocess.run(
        [sys.executable, "-m", "prunelab", "finetune", str(pruned), "--data-dir", str(jpeg_root),
         "--cache-dir", str(cifar_cache), "--train-subset", "128", "--test-subset", "64",
         "--val-size", "0", "--epochs", "1", "--batch-size", "64", "--no-progress",
         "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "non-zero at masked positions" in r.stderr
    assert not (tmp_path / "ft.pth.state").exists()
    model, ck = load_model(out)
    w = model.backbone.conv1.weight
    assert int(torch.count_nonzero(w[~ck["masks"]["backbone.conv1.weight"]])) == 0


def test_outputs_of_the_wrong_kind_are_refused_first(tmp_path, pruned, capsys):
    folder = tmp_path / "a_folder"
    folder.mkdir()
    afile = tmp_path / "a_file"
    afile.write_text("keep me")
    cases = [
        (["prune", str(pruned), "--sparsity", "0.5", "--out", str(folder)], "is a directory"),
        (["sparsity", str(pruned), "--json", str(folder)], "is a directory"),
        (["run", "quick", "--out", str(afile)], "is a file"),
        (["sensitivity", str(pruned), "--out", str(afile)], "is a file"),
    ]
    for argv, needle in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert needle in err and len(err.strip().splitlines()) == 1, err
    assert afile.read_text() == "keep me" and list(folder.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "a_folder", "edited.pth"]


def test_a_stopped_steps_state_is_resumed_only_under_the_settings_it_started_with(tmp_path, capfd):
    """A training state left by a stopped step carries the settings it was started with
    (the step's record is written first); a rerun with other settings (a new teacher, say,
    which the training state itself does not record) starts over instead of mixing runs."""
    from prunelab.app.steps import state_path_for
    from prunelab.app.study import Study

    study = Study({}, None, tmp_path, None, torch.device("cpu"), progress=False)
    seen = []

    def stopped(out):  # stands for a fine-tune killed mid-epoch: a state, no output
        seen.append(state_path_for(out).exists())
        state_path_for(out).write_text("half-trained")
        raise KeyboardInterrupt

    def finishes(out):
        seen.append(state_path_for(out).exists())
        out.write_text("trained")
        state_path_for(out).unlink(missing_ok=True)

    for name, second in (("a", {"teacher": "control"}), ("b", {"teacher": "dense"})):
        out = tmp_path / f"{name}.pth"
        with pytest.raises(KeyboardInterrupt):
            study.step(name, out, lambda o=out: stopped(o), {"teacher": "dense"})
        study.step(name, out, lambda o=out: finishes(o), second)
    # a: other settings, the state was discarded; b: the same, it was there to resume from
    assert seen == [False, False, False, True]
    assert "[redo] a: its stopped state was made with other settings" in capfd.readouterr().out


def test_a_step_made_under_its_older_key_is_kept_and_keeps_its_digest(tmp_path):
    """A step whose key changed (`older`: what it was keyed by before) skips an output made
    under the old key and returns the old digest, which its children were made with."""
    from prunelab.app.study import Study

    study = Study({}, None, tmp_path, None, torch.device("cpu"), progress=False)
    out, runs = tmp_path / "p.pth", []

    def make():
        runs.append(1)
        out.write_text("pruned")

    first = study.step("prune", out, make, {"plan": "abc"})
    kept = study.step("prune", out, make, {"channels": [4, 8]}, older={"plan": "abc"})
    assert runs == [1] and kept == first
    redone = study.step("prune", out, make, {"channels": [4, 8]}, older={"plan": "other"})
    assert runs == [1, 1] and redone != first
    again = study.step("prune", out, make, {"channels": [4, 8]}, older={"plan": "other"})
    assert runs == [1, 1] and again == redone


def test_export_size_follows_the_model_not_the_file_name(tmp_path):
    """A model remade under the same name (another plan) is reported at its own size, not
    at the size of the export an earlier run left there."""
    from prunelab.app.study import Study
    from prunelab.models import build_model

    study = Study({}, None, tmp_path, None, torch.device("cpu"), progress=False)
    path = tmp_path / "export" / "guided.plz"
    wide, slim = build_model("vgg", {"width": 0.25}), build_model("vgg", {"width": 0.125})
    first = study.export_bytes(wide, path)
    second = study.export_bytes(slim, path)
    assert second < first and path.stat().st_size == second
