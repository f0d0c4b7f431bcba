"""BatchNorm folding: same outputs (fp32 rounding), same predictions on real images, and the
original model untouched."""

from __future__ import annotations

import pytest
import torch
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
        if isinstance(m, nn.BatchNorm2d):
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
    hits = []
    hook = model.backbone[1].register_forward_hook(lambda *_: hits.append(1))
    try:
        folded = evaluate(model, x, y, batch_size=150)
        assert hits == []  # the model's own BatchNorm never ran: a folded copy did
        plain = evaluate(model, x, y, batch_size=150, fold_bn=False)
        assert len(hits) == 2
    finally:
        hook.remove()
    assert torch.equal(folded["predictions"], plain["predictions"])
    assert remaining_batchnorms(model) == 8
