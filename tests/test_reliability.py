"""Interrupted runs resume without loss, and the same seed gives the same numbers."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from prunelab.app.recipes import load_recipe
from prunelab.app.run import run_recipe


def _train_cmd(jpeg_root, cache, out, *extra):
    return [
        sys.executable,
        "-m",
        "prunelab",
        "train",
        "--data-dir",
        str(jpeg_root),
        "--cache-dir",
        str(cache),
        "--val-size",
        "0",
        "--train-subset",
        "960",
        "--test-subset",
        "100",
        "--width",
        "0.125",
        "--epochs",
        "3",
        "--batch-size",
        "32",
        "--seed",
        "7",
        "--no-progress",
        "--out",
        str(out),
        *extra,
    ]


def test_sigterm_mid_epoch_then_resume_matches_uninterrupted(
    tmp_path, jpeg_root, cifar, cifar_cache
):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    ref = tmp_path / "ref.pth"
    subprocess.run(
        _train_cmd(jpeg_root, cifar_cache, ref),
        check=True,
        env=env,
        capture_output=True,
        timeout=300,
    )

    out = tmp_path / "run.pth"
    state = tmp_path / "run.pth.state"
    proc = subprocess.Popen(
        _train_cmd(jpeg_root, cifar_cache, out),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 240
    while not state.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)  # the state file appears at the end of epoch 1
    proc.send_signal(signal.SIGTERM)  # now somewhere in epoch 2
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    assert "--resume" in err and "Traceback" not in err
    assert not out.exists() and state.exists()

    done = subprocess.run(
        _train_cmd(jpeg_root, cifar_cache, out, "--resume"),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    a = torch.load(ref, weights_only=True)["state_dict"]
    b = torch.load(out, weights_only=True)["state_dict"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert not state.exists()  # cleaned up once the run finished


def test_truncated_training_state_is_refused_by_name(tmp_path, jpeg_root, cifar, cifar_cache):
    out = tmp_path / "x.pth"
    (tmp_path / "x.pth.state").write_bytes(b"PK\x03\x04 truncated")
    r = subprocess.run(
        _train_cmd(jpeg_root, cifar_cache, out, "--resume"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2
    assert "x.pth.state" in r.stderr and "corrupt" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


RECIPE = """
name = "repeat"
seed = 3
[data]
val_size = 200
train_subset = 1000
test_subset = 300
[dense]
width = 0.125
[dense.train]
epochs = 1
batch_size = 100
[prune]
sparsities = [0.5]
[[finetune]]
name = "sgd"
lr = 0.01
schedule = "cosine"
epochs = 1
batch_size = 100
"""


def test_same_seed_same_results_json(tmp_path, jpeg_root, cifar, cifar_cache):
    p = tmp_path / "repeat.toml"
    p.write_text(RECIPE)
    rec = load_recipe(p)
    numbers = []
    for i in range(2):
        run_recipe(rec, jpeg_root, tmp_path / f"run{i}", cache=cifar_cache, progress=False)
        r = json.loads((tmp_path / f"run{i}" / "results.json").read_text())
        numbers.append((r["models"], r["finetune"], r["data"]["fingerprint"]))
        assert {"python", "torch", "prunelab", "device"} <= set(r["environment"])
        resolved = json.loads((tmp_path / f"run{i}" / "recipe.json").read_text())
        assert resolved["dense"]["train"]["epochs"] == 1 and resolved["seed"] == 3
    assert numbers[0] == numbers[1]
    assert numbers[0][0][1]["sparsity"] == pytest.approx(0.5, abs=1e-3)


def test_an_interrupted_recipe_run_says_to_rerun_it_not_to_add_resume(
    tmp_path, capsys, monkeypatch
):
    import prunelab.app.run as run_module
    from prunelab.app.cli import main
    from prunelab.train import Interrupted

    def stopped(*a, **kw):
        raise Interrupted("stopped by signal 15 at epoch 1, batch 3; state saved to x.state")

    monkeypatch.setattr(run_module, "run_recipe", stopped)
    code = main(["run", "quick", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1, err
    assert "state saved to x.state" in err and "rerun the same prunelab run command" in err
    assert "--resume" not in err  # `prunelab run` has no such flag
