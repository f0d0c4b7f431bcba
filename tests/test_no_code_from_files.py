"""No file prunelab reads can run code: crafted pickles are refused by name, never executed."""

import pickle
import subprocess
import sys

import pytest
import torch
from torch import nn

from prunelab.errors import CheckpointError, DataError
from prunelab.models import VGG, read_checkpoint
from prunelab.safeload import load_tensors
from prunelab.train import TrainConfig, fit


class _Payload:
    """Unpickling this creates `marker`: proof that code chosen by the file ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def _plant(path, marker, **extra):
    torch.save({"state_dict": {"w": torch.zeros(1)}, "evil": _Payload(marker), **extra}, path)


def test_checkpoint_with_code_is_refused_and_never_runs(tmp_path):
    marker, ckpt = tmp_path / "ran", tmp_path / "evil.pth"
    _plant(ckpt, marker)
    with pytest.raises(CheckpointError, match="would import"):
        read_checkpoint(ckpt)
    assert not marker.exists()


def test_training_state_with_code_is_refused_on_resume(tmp_path):
    marker, state = tmp_path / "ran", tmp_path / "out.pth.state"
    torch.save({"model": _Payload(marker), "optimizer": {}}, state)
    model = VGG(width=0.125)
    x = torch.randint(0, 255, (8, 3, 32, 32), dtype=torch.uint8)
    y = torch.randint(0, 10, (8,))
    cfg = TrainConfig(epochs=1, batch_size=4)
    with pytest.raises(CheckpointError, match="training state"):
        fit(model, x, y, cfg, state_path=state, resume=True, progress=False)
    assert not marker.exists()


def test_cli_commands_never_run_code_from_files(tmp_path):
    marker, ckpt = tmp_path / "ran", tmp_path / "evil.pth"
    _plant(ckpt, marker)
    for cmd in (["evaluate", "--checkpoint", str(ckpt)], ["sparsity", str(ckpt)]):
        r = subprocess.run(
            [sys.executable, "-m", "prunelab", *cmd], capture_output=True, text=True, timeout=120
        )
        assert r.returncode == 2, r.stderr
        assert "Traceback" not in r.stderr
        assert not marker.exists()


def test_cifar_pickle_with_code_is_refused(tmp_path):
    from prunelab.data import load_cifar10

    marker, folder = tmp_path / "ran", tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4"]:
        (folder / name).write_bytes(pickle.dumps({b"data": _Payload(marker)}))
    for name in ["data_batch_5", "test_batch", "batches.meta"]:
        (folder / name).write_bytes(pickle.dumps({b"data": _Payload(marker)}))
    with pytest.raises(DataError):
        load_cifar10(folder, cache=tmp_path / "cache")
    assert not marker.exists()


def test_pickled_module_is_named_as_such(tmp_path):
    path = tmp_path / "whole_model.pth"
    torch.save(nn.Linear(2, 2), path)
    with pytest.raises(CheckpointError, match=r"a pickled nn\.Module .*state_dict\(\) instead"):
        load_tensors(path)


def test_training_state_is_plain_tensors_and_resumes(tmp_path):
    """The state fit writes loads under weights_only=True (RNG state is a tensor)."""
    state = tmp_path / "run.state"
    model = VGG(width=0.125)
    x = torch.randint(0, 255, (16, 3, 32, 32), dtype=torch.uint8)
    y = torch.randint(0, 10, (16,))
    fit(model, x, y, TrainConfig(epochs=1, batch_size=8), state_path=state, progress=False)
    loaded = load_tensors(state, "training state")
    assert loaded["epoch"] == 1 and isinstance(loaded["model"], dict)


def test_decoded_image_cache_with_code_is_refused(tmp_path):
    import numpy as np

    from prunelab.data.cache import read_cache

    marker, path = tmp_path / "ran", tmp_path / "images.npys"
    with open(path, "wb") as f:
        np.save(f, np.array([_Payload(marker)], dtype=object), allow_pickle=True)
    with pytest.raises(DataError):
        read_cache(path, 4)
    assert not marker.exists()
