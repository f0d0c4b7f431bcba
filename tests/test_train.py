import os
import signal

import pytest
import torch

from prunelab.errors import PrunelabError
from prunelab.models import VGG
from prunelab.train import Interrupted, TrainConfig, evaluate, fit, lr_factor


def _toy(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return x, y


def test_width_quarter_vgg_learns_real_images(cifar):
    from prunelab.data import subset

    x, y = subset(cifar.train_x, cifar.train_y, 5000, seed=0)
    tx, ty = subset(cifar.test_x, cifar.test_y, 1000, seed=0)
    torch.manual_seed(0)
    model = VGG(0.25)
    cfg = TrainConfig(epochs=3, batch_size=128, lr=0.1, bf16=True, seed=0)
    res = fit(model, x, y, cfg, progress=False)
    acc = evaluate(model, tx, ty)["accuracy"]
    assert acc > 0.35, f"width-0.25 VGG reached only {acc:.3f} on real test images (chance 0.10)"
    assert len(res.history) == 3 and res.history[-1]["train_loss"] < res.history[0]["train_loss"]


def test_resume_after_signal_gives_identical_weights(tmp_path):
    x, y = _toy()
    cfg = TrainConfig(epochs=2, batch_size=32, lr=0.05, seed=3)
    torch.manual_seed(0)
    ref = VGG(0.125)
    fit(ref, x, y, cfg, progress=False)

    torch.manual_seed(0)
    model = VGG(0.125)
    state = tmp_path / "run.state"

    def stop_mid_epoch(step, total):
        if step == 11:  # in the second epoch (8 batches per epoch)
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(Interrupted, match="--resume"):
        fit(model, x, y, cfg, state_path=state, progress=False, step_hook=stop_mid_epoch)
    assert state.exists()
    torch.manual_seed(123)  # a different process state must not matter
    resumed = VGG(0.125)
    fit(resumed, x, y, cfg, state_path=state, resume=True, progress=False)
    for (k, a), b in zip(ref.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_same_seed_same_weights():
    x, y = _toy(128)
    outs = []
    for _ in range(2):
        torch.manual_seed(0)
        m = VGG(0.125)
        fit(m, x, y, TrainConfig(epochs=1, batch_size=32, seed=5), progress=False)
        outs.append(m.backbone.conv3.weight.clone())
    assert torch.equal(*outs)


@pytest.mark.parametrize(
    "field,value",
    [
        ("epochs", -1),
        ("lr", 0.0),
        ("lr", float("nan")),
        ("optimizer", "lbfgs"),
        ("momentum", 1.5),
        ("schedule", "step"),
        ("batch_size", 0),
    ],
)
def test_bad_config_is_refused_by_name(field, value):
    cfg = TrainConfig(**{field: value})
    with pytest.raises(PrunelabError, match=field):
        cfg.validate()


def test_lr_schedules():
    assert lr_factor(0, 100, "cosine", 0.2) == pytest.approx(1.0)
    assert lr_factor(50, 100, "cosine", 0.2) == pytest.approx(0.5)
    assert lr_factor(20, 100, "onecycle", 0.2) == pytest.approx(1.0)
    assert lr_factor(0, 100, "onecycle", 0.2) == pytest.approx(0.1)
    assert lr_factor(100, 100, "onecycle", 0.2) == pytest.approx(0.0)
    assert lr_factor(70, 100, "constant", 0.2) == 1.0
