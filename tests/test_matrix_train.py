"""Training, prediction and evaluation on every model of the matrix: any channel count, image
size and class count, flat (non-image) inputs, optional normalisation, no class count assumed."""

from __future__ import annotations

import warnings

import pytest
import torch
from model_matrix import MATRIX
from sklearn import metrics as skm
from torch import nn

from prunelab.errors import PrunelabError
from prunelab.models import VGG
from prunelab.pruning import Pruner
from prunelab.train import TrainConfig, evaluate, fit, predict, resolve_device


def _uint8(case, n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, *case.input_shape), dtype=torch.uint8, generator=g)
    return x, torch.randint(0, case.num_classes, (n,), generator=g)


@pytest.mark.parametrize("case", MATRIX, ids=str)
def test_every_model_trains_and_evaluates_with_its_own_class_count(case):
    torch.manual_seed(0)
    model = case.build()
    x, y = _uint8(case)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = fit(
        model, x, y, TrainConfig(epochs=1, batch_size=16), val=(x[:16], y[:16]), progress=False
    )
    assert 0 <= res.history[0]["val_accuracy"] <= 1
    assert any(not torch.equal(v, before[k]) for k, v in model.state_dict().items())
    m = evaluate(model, x, y)  # no class count given: the logits' width
    assert len(m["per_class"]["recall"]) == case.num_classes
    assert len(m["confusion_matrix"]) == case.num_classes and m["num_images"] == len(x)


def test_flat_inputs_train_without_augmentation_or_channels_last():
    """An MLP on N x D vectors (not images): augmenting or channels_last would crash."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 4))
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(64, 20, generator=g), torch.randint(0, 4, (64,), generator=g)
    res = fit(model, x, y, TrainConfig(epochs=2, batch_size=16, lr=0.05), progress=False)
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"] + 1.0
    assert evaluate(model, x, y)["predictions"].shape == (64,)
    assert predict(model, x, channels_last=True).shape == (64,)


def test_three_class_model_gives_scikit_learns_macro_recall():
    case = next(c for c in MATRIX if c.name == "mlp")
    torch.manual_seed(0)
    model = case.build()
    x, y = _uint8(case, n=90, seed=3)
    assert set(y.tolist()) == {0, 1, 2}
    m = evaluate(model, x, y)
    preds = m["predictions"].numpy()
    assert m["recall"] == pytest.approx(skm.recall_score(y.numpy(), preds, average="macro"))
    assert m["precision"] == pytest.approx(
        skm.precision_score(y.numpy(), preds, average="macro", zero_division=0)
    )
    assert m["recall"] == pytest.approx(evaluate(model, x, y, 3)["recall"])


def test_twenty_classes_and_labels_the_model_cannot_predict():
    torch.manual_seed(0)
    model = VGG(width=0.125, num_classes=20)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.arange(40) % 20
    assert len(evaluate(model, x, y)["per_class"]["f1"]) == 20
    with pytest.raises(PrunelabError, match="labels go up to 20 but the model has 20 outputs"):
        evaluate(model, x, y + 1)
    with pytest.raises(PrunelabError, match="labels go up to 24 but num_classes is 10"):
        evaluate(model, x, y + 5, num_classes=10)
    with torch.no_grad():  # every image predicted as class 15, beyond the data's 10 classes
        model.classifier.bias.fill_(-1e4)[15] = 1e4
    with pytest.raises(PrunelabError, match="predicted class 15 but the data has 10 classes"):
        evaluate(model, x, y % 10, num_classes=10)
    cfg = TrainConfig(epochs=1, batch_size=8)
    with pytest.raises(PrunelabError, match="labels go up to 29 but the model has 20 outputs"):
        fit(model, x, y + 10, cfg, progress=False)
    with pytest.raises(PrunelabError, match="labels go up to 39"):
        fit(model, x, y, cfg, val=(x, y + 20), progress=False)


def test_normalize_is_applied_after_scaling_everywhere():
    case = next(c for c in MATRIX if c.name == "gray_vgg")
    torch.manual_seed(0)
    model = case.build().eval()
    x, y = _uint8(case, n=24)
    norm = ((0.9,), (0.2,))
    manual = (x.float() / 255 - 0.9) / 0.2
    seen: list[torch.Tensor] = []
    hook = model.register_forward_pre_hook(lambda m, inp: seen.append(inp[0].detach().clone()))
    try:
        predict(model, x, channels_last=False, normalize=norm)
        assert torch.equal(seen.pop(), manual)
        predict(model, x, channels_last=False)  # None: the plain [0, 1] scaling, as before
        assert torch.equal(seen.pop(), x.float() / 255)
        evaluate(model, x, y, normalize=norm, fold_bn=False, batch_size=len(x))
        assert torch.equal(seen.pop(), manual)
        seen.clear()
        cfg = TrainConfig(epochs=1, batch_size=8, augment=False)
        fit(model, x, y, cfg, val=(x, y), normalize=norm, progress=False)
        # 3 training batches and the validation pass (on a folded copy, hook and all)
        assert len(seen) == 4 and all(t.mean() < -1 for t in seen)  # shifted by the mean
    finally:
        hook.remove()
    with pytest.raises(PrunelabError, match="normalize mean must be 1 or 1 finite numbers"):
        predict(model, x, normalize=((0.5, 0.5, 0.5), (0.2, 0.2, 0.2)))
    with pytest.raises(PrunelabError, match="std must be > 0"):
        predict(model, x, normalize=((0.5,), (0.0,)))


@pytest.mark.parametrize("name", ["tpu", "mps", "cuda:x", "cuda:-1", "", "cpu:0 ", "gpu"])
def test_unknown_devices_are_refused_with_the_choices(name):
    with pytest.raises(PrunelabError, match="not one of: auto, cpu, cuda, cuda:N"):
        resolve_device(name)


def test_known_devices_resolve():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(PrunelabError, match="CUDA is not available"):
            resolve_device("cuda:0")


def test_masks_edited_before_fine_tuning_are_reapplied_with_one_warning():
    torch.manual_seed(0)
    model = VGG(width=0.125)
    pruner = Pruner(model, 0.5)
    pruner.apply()
    w = model.backbone.conv1.weight
    mask = pruner.masks["backbone.conv1.weight"]
    with torch.no_grad():
        w[~mask] = 1.0  # weights edited after pruning
    edited = int((~mask).sum())
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (16,), generator=g)
    seen = []

    def hook(step, total):  # the weights at masked positions are zero from the first step on
        seen.append(int(torch.count_nonzero(w[~mask])))

    cfg = TrainConfig(epochs=1, batch_size=8)
    with pytest.warns(UserWarning, match=f"^{edited} weight\\(s\\) were non-zero at masked"):
        fit(model, x, y, cfg, pruner=pruner, step_hook=hook, progress=False)
    assert seen == [0, 0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # masks intact: no warning
        fit(model, x, y, cfg, pruner=pruner, progress=False)
