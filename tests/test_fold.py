"""BatchNorm folding: same outputs (fp32 rounding), same predictions on real images, and the
original model untouched."""

from __future__ import annotations

import warnings

import pytest
import torch
from model_matrix import MATRIX
from torch import nn

from prunelab.app.bench import calibrate
from prunelab.data import subset
from prunelab.fold import fold_batchnorm, fold_conv_bn, remaining_batchnorms
from prunelab.models import VGG
from prunelab.train import evaluate, predict


def _random_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN parameters and statistics, so folding really changes the weights."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.1)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
    return model.eval()


def test_fold_conv_bn_matches_eval_bn_with_and_without_conv_bias():
    torch.manual_seed(0)
    x = torch.randn(4, 5, 9, 9)
    for bias in (False, True):
        conv = nn.Conv2d(5, 7, 3, padding=1, stride=2, bias=bias)
        bn = _random_bn(nn.Sequential(nn.BatchNorm2d(7)))[0]
        fused = fold_conv_bn(conv, bn)
        assert fused.bias is not None and fused.stride == (2, 2)
        with torch.no_grad():
            torch.testing.assert_close(fused(x), bn(conv(x)), rtol=1e-5, atol=1e-5)


def test_folded_vgg_equals_original_and_leaves_it_alone():
    torch.manual_seed(0)
    model = _random_bn(VGG(width=0.25))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = fold_batchnorm(model)
    assert remaining_batchnorms(folded) == 0 and remaining_batchnorms(model) == 8
    assert not folded.training and not any(p.requires_grad for p in folded.parameters())
    assert [type(m).__name__ for m in folded.backbone][:3] == ["Conv2d", "Identity", "ReLU"]
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"original model changed: {k}"
    x = torch.rand(16, 3, 32, 32)
    with torch.no_grad():
        a, b = model(x), folded(x)
    scale = a.abs().max().item()
    assert (a - b).abs().max().item() <= 1e-5 * max(scale, 1.0)
    # channels_last (what predict uses) works on the folded copy too
    assert torch.equal(predict(folded, x), predict(model, x))


def test_folded_predictions_identical_on_real_test_images(cifar):
    """A VGG with BN statistics of real images, on 500 real test images: same predictions."""
    torch.manual_seed(0)
    model = calibrate(VGG(width=0.25), cifar.train_x[:256])
    x, _ = subset(cifar.test_x, cifar.test_y, 500, seed=0)
    folded = fold_batchnorm(model)
    with torch.no_grad():
        xf = x.float() / 255
        diff = (model(xf) - folded(xf)).abs().max().item()
    assert diff < 1e-4
    p, q = predict(model, x, batch_size=250), predict(folded, x, batch_size=250)
    assert len(p.unique()) > 5  # predictions are spread, so a flip would be visible
    assert torch.equal(p, q)


def test_fold_refuses_bn_without_running_stats():
    conv, bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False)
    with pytest.raises(ValueError, match="running statistics"):
        fold_conv_bn(conv, bn)
    seq = nn.Sequential(conv, bn)
    assert remaining_batchnorms(fold_batchnorm(seq)) == 1  # left as it is, not folded


def test_evaluate_folds_by_default_and_can_run_the_model_as_is(cifar):
    torch.manual_seed(0)
    model = calibrate(VGG(width=0.25), cifar.train_x[:256])
    x, y = subset(cifar.test_x, cifar.test_y, 300, seed=1)
    bn_calls = []
    hook = torch.nn.modules.module.register_module_forward_hook(
        lambda m, *_: bn_calls.append(1) if isinstance(m, nn.BatchNorm2d) else None
    )
    try:
        folded = evaluate(model, x, y, batch_size=150)
        checked = len(bn_calls)  # the fold is verified once on unfolded BatchNorms
        plain = evaluate(model, x, y, batch_size=150, fold_bn=False)
        assert len(bn_calls) - checked == 2 * 8  # two batches through 8 BatchNorms
        assert checked <= 8  # not per batch: a folded copy did the work
    finally:
        hook.remove()
    assert torch.equal(folded["predictions"], plain["predictions"])
    assert remaining_batchnorms(model) == 8


def test_a_pair_with_a_forward_hook_is_not_folded_so_the_hook_still_acts(cifar):
    torch.manual_seed(0)
    model = calibrate(VGG(width=0.25), cifar.train_x[:256])
    x, y = subset(cifar.test_x, cifar.test_y, 300, seed=1)
    clean = evaluate(model, x, y, batch_size=150)["predictions"]
    hook = model.backbone[4].register_forward_hook(lambda m, i, o: o * 0.5)  # changes layer 1
    try:
        assert remaining_batchnorms(fold_batchnorm(model)) == 1
        folded = evaluate(model, x, y, batch_size=150)["predictions"]
        plain = evaluate(model, x, y, batch_size=150, fold_bn=False)["predictions"]
    finally:
        hook.remove()
    assert torch.equal(folded, plain)
    assert not torch.equal(folded, clean)  # the hook mattered, and folding kept it


# --- any model: true pairs only, verified ------------------------------------------------------


def _logits_close(a: torch.Tensor, b: torch.Tensor) -> None:
    scale = max(a.abs().max().item(), 1.0)
    assert (a - b).abs().max().item() <= 1e-5 * scale


@pytest.mark.parametrize("case", MATRIX, ids=str)
def test_every_matrix_model_folds_to_the_same_logits(case):
    torch.manual_seed(0)
    model = _random_bn(case.build())
    x = case.batch(8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a matrix model must fold without a fallback
        folded = fold_batchnorm(model, example=x)
        guessed = fold_batchnorm(model)  # verified on a random input of the model's shape
    with torch.no_grad():
        _logits_close(model(x), folded(x))
        _logits_close(model(x), guessed(x))
    assert remaining_batchnorms(folded) == 0 == remaining_batchnorms(guessed)
    if case.name in ("vgg", "resnet20", "mobilenetv2"):
        assert remaining_batchnorms(model) > 0  # there was something to fold


class ResidualBetween(nn.Sequential):
    """Looks like conv -> BN to a walk over the Sequential, but adds its input in between."""

    def __init__(self):
        super().__init__(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())

    def forward(self, x):
        return self[2](self[1](self[0](x) + x))


class SharedConv(nn.Module):
    """One conv weight used by two convs, each followed by its own BN (and one conv called
    twice): folding either into its BN would change the other path."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.c2.weight = self.c1.weight
        self.bn1, self.bn2, self.bn3 = nn.BatchNorm2d(4), nn.BatchNorm2d(4), nn.BatchNorm2d(4)
        self.twice = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        h = self.bn1(self.c1(x)) + self.bn2(self.c2(x))
        return self.bn3(self.twice(h)) + self.twice(x)


class ConvOutputReused(nn.Module):
    """The conv output feeds the BN and a skip: folding would change the skip."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv1d(4, 4, 3, padding=1), nn.BatchNorm1d(4)
        self.conv3, self.bn3 = nn.Conv3d(4, 4, 1), nn.BatchNorm3d(4)  # a true 3-D pair

    def forward(self, x):
        h = self.conv(x)
        h = self.bn(h) + h
        return h + self.bn3(self.conv3(h[:, :, None, :, None])).flatten(2)


@pytest.mark.parametrize(
    "make,shape,left",
    [(ResidualBetween, (2, 4, 8, 8), 1), (SharedConv, (2, 4, 8, 8), 3)],
    ids=["residual-between", "shared-weight"],
)
def test_false_pairs_are_not_folded(make, shape, left):
    torch.manual_seed(0)
    model = _random_bn(make())
    x = torch.randn(shape)
    folded = fold_batchnorm(model, example=x)
    assert remaining_batchnorms(folded) == left
    with torch.no_grad():
        assert torch.equal(model(x), folded(x))


def test_conv1d_and_conv3d_pairs_fold_and_reused_outputs_do_not():
    torch.manual_seed(0)
    model = ConvOutputReused().eval()
    for bn in (model.bn, model.bn3):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 4, 6)
    folded = fold_batchnorm(model, example=x)
    assert isinstance(folded.bn, nn.BatchNorm1d) and isinstance(folded.bn3, nn.Identity)
    with torch.no_grad():
        _logits_close(model(x), folded(x))


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

    def forward(self, x):
        h = self.bn(self.conv(x))
        return h if h.sum() > 0 else -h


def test_untraceable_or_failing_verification_returns_an_unfolded_copy(monkeypatch):
    model = DataDependent().eval()
    x = torch.rand(2, 3, 8, 8)
    with pytest.warns(UserWarning, match="not folded: the forward cannot be traced"):
        folded = fold_batchnorm(model, example=x)
    assert remaining_batchnorms(folded) == 1 and folded is not model
    with torch.no_grad():
        assert torch.equal(folded(x), model(x))

    import prunelab.fold as fold

    def broken(conv, bn):  # a fold that gets the maths wrong must never be used
        out = fold_conv_bn(conv, bn)
        with torch.no_grad():
            out.bias.add_(1.0)
        return out

    monkeypatch.setattr(fold, "fold_conv_bn", broken)
    model = _random_bn(VGG(width=0.125))
    with pytest.warns(UserWarning, match="differ from the original"):
        folded = fold.fold_batchnorm(model)
    assert remaining_batchnorms(folded) == 8
    y = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(folded(y), model(y))
