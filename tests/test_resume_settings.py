"""--resume continues only the run that was started: a state saved with other settings (config,
run key, masks, normalisation) is refused by name; the same settings resume exactly."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from prunelab.errors import PrunelabError
from prunelab.gradual import GradualPruner
from prunelab.models import VGG
from prunelab.pruning import Pruner
from prunelab.safeload import load_tensors
from prunelab.train import Interrupted, TrainConfig, fit
from prunelab.train_state import masks_digest

KEY = {"arch": "vgg", "width": 0.125, "data": "abc123", "plan": [0.5, 0.6]}


def _data(n=32):
    g = torch.Generator().manual_seed(0)
    return (
        torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
        torch.randint(0, 10, (n,), generator=g),
    )


def _pruned(model, sparsity):
    pruner = Pruner(model, sparsity)
    pruner.apply()
    return pruner


def _cfg(**kw):
    return TrainConfig(**{"epochs": 2, "batch_size": 8, "lr": 0.05, "seed": 1, **kw})


def _interrupted(state, cfg, pruner_for=None, **kw):
    """A state saved mid-run (SIGTERM after step 5 of 8)."""
    x, y = _data()
    torch.manual_seed(0)
    model = VGG(width=0.125)
    pruner = pruner_for(model) if pruner_for else None

    def stop(step, total):
        if step == 5:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(Interrupted):
        fit(model, x, y, cfg, pruner=pruner, state_path=state, progress=False, step_hook=stop, **kw)
    return x, y


@pytest.mark.parametrize(
    "setting,change,shown",
    [
        ("lr", {"lr": 0.1}, "lr was 0.05 in the saved state, now 0.1"),
        ("epochs", {"epochs": 3}, "epochs was 2 in the saved state, now 3"),
        ("batch_size", {"batch_size": 4}, "batch_size was 8 in the saved state, now 4"),
        ("seed", {"seed": 2}, "seed was 1 in the saved state, now 2"),
        ("augment", {"augment": False}, "augment was True in the saved state, now False"),
    ],
)
def test_changed_config_is_refused_by_name(tmp_path, setting, change, shown):
    state = tmp_path / "run.state"
    x, y = _interrupted(state, _cfg())
    with pytest.raises(PrunelabError) as e:
        fit(VGG(width=0.125), x, y, _cfg(**change), state_path=state, resume=True, progress=False)
    msg = str(e.value)
    assert msg.startswith(f"--resume: {shown};") and str(state) in msg and "\n" not in msg


def test_changed_run_key_masks_or_normalisation_is_refused(tmp_path):
    state = tmp_path / "run.state"
    norm = ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    x, y = _interrupted(state, _cfg(), lambda m: _pruned(m, 0.5), run_key=KEY, normalize=norm)

    def resume(sparsity=0.5, **kw):
        torch.manual_seed(0)  # the same initial weights, so the same masks at 0.5
        model = VGG(width=0.125)
        pruner = _pruned(model, sparsity) if sparsity else None
        kw = {"run_key": KEY, "normalize": norm, **kw}
        fit(model, x, y, _cfg(), pruner=pruner, state_path=state, resume=True, progress=False, **kw)

    with pytest.raises(PrunelabError, match=r"run_key\.data was 'abc123' in the saved state, now"):
        resume(run_key={**KEY, "data": "other"})
    with pytest.raises(PrunelabError, match=r"run_key\.plan was \[0\.5, 0\.6\]"):
        resume(run_key={**KEY, "plan": [0.5, 0.7]})
    with pytest.raises(PrunelabError, match=r"run_key was \{.*\} in the saved state, now None"):
        resume(run_key=None)
    with pytest.raises(PrunelabError, match=r"--resume: masks was '[0-9a-f]{16}' in the saved"):
        resume(0.7)
    with pytest.raises(PrunelabError, match=r"--resume: masks was '[0-9a-f]{16}'.*now None"):
        resume(None)
    with pytest.raises(PrunelabError, match="--resume: normalize was"):
        resume(normalize=None)
    resume()  # the same settings: resumes


def test_same_settings_resume_to_the_uninterrupted_weights(tmp_path):
    cfg = _cfg()
    x, y = _data()
    torch.manual_seed(0)
    ref = VGG(width=0.125)
    ref_pruner = _pruned(ref, 0.5)
    fit(ref, x, y, cfg, pruner=ref_pruner, progress=False, run_key=KEY)

    state = tmp_path / "run.state"
    _interrupted(state, cfg, lambda m: _pruned(m, 0.5), run_key=KEY)
    saved = load_tensors(state, "training state")  # plain types only, weights_only=True
    assert saved["settings"]["run_key"] == KEY and saved["settings"]["lr"] == 0.05
    torch.manual_seed(0)
    model = VGG(width=0.125)
    pruner = _pruned(model, 0.5)
    assert saved["settings"]["masks"] == masks_digest(pruner.masks)
    torch.manual_seed(99)
    fit(model, x, y, cfg, pruner=pruner, state_path=state, resume=True, progress=False, run_key=KEY)
    for (k, a), b in zip(ref.state_dict().items(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_gradual_pruning_resumes_although_its_masks_moved(tmp_path):
    """The masks digest is taken at the start of the run, so a gradual pruner rebuilt for the
    resume (dense masks again) matches the state although the saved masks moved on."""
    state = tmp_path / "run.state"

    def gradual(m):
        return GradualPruner(m, 0.6, prune_every=1, prune_steps=4)

    x, y = _interrupted(state, _cfg(), gradual)
    torch.manual_seed(0)
    model = VGG(width=0.125)
    gp = gradual(model)
    fit(model, x, y, _cfg(), pruner=gp, state_path=state, resume=True, progress=False)
    saved = load_tensors(state, "training state")
    assert saved["epoch"] == 2 and saved["masks"] is not None


def test_state_from_before_settings_is_checked_on_its_config(tmp_path):
    state = tmp_path / "run.state"
    x, y = _interrupted(state, _cfg())
    old = load_tensors(state, "training state")
    del old["settings"]
    torch.save(old, state)
    with pytest.raises(PrunelabError, match="--resume: lr was 0.05"):
        fit(VGG(width=0.125), x, y, _cfg(lr=0.2), state_path=state, resume=True, progress=False)
    fit(VGG(width=0.125), x, y, _cfg(), state_path=state, resume=True, progress=False)


def test_run_key_must_be_plain_json(tmp_path):
    x, y = _data(16)
    with pytest.raises(PrunelabError, match="run_key must hold only"):
        fit(VGG(width=0.125), x, y, _cfg(epochs=1), run_key={"t": torch.zeros(1)}, progress=False)
