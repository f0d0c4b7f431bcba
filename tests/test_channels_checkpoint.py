"""Channel-pruned checkpoints: plain tensors plus {group: kept}, rebuilt by load_model."""

import pytest
import torch
from torch import nn

from prunelab.accounting import count_params
from prunelab.channels import channel_groups, prune_channels, sort_channels
from prunelab.errors import CheckpointError
from prunelab.export import export_compressed, load_compressed
from prunelab.models import apply_channel_record, build_model, load_model, save_checkpoint
from prunelab.pruning import Pruner

SMALL = {
    "vgg": {"width": 0.125},
    "resnet20": {"width": 0.5},
    "mobilenetv2": {"width": 0.25},
}


class ConcatNet(nn.Module):
    """Two conv branches concatenated, a conv reading both, then a flatten into a Linear:
    channel indices pass through a concatenation and a reshape."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.a = nn.Conv2d(in_channels, 8, 3, padding=1)
        self.b = nn.Conv2d(in_channels, 6, 1)
        self.bn = nn.BatchNorm2d(14)
        self.mix = nn.Conv2d(14, 12, 3, stride=2, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(12 * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(torch.cat([self.a(x), self.b(x)], dim=1)))
        return self.fc(torch.flatten(self.pool(torch.relu(self.mix(x))), 1))


def built(name: str) -> nn.Module:
    torch.manual_seed(0)
    m = build_model(name, SMALL.get(name))
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 1.5)
    return m.eval()


def x4() -> torch.Tensor:
    return torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    "name, importance", [("vgg", "l2"), ("resnet20", "bn"), ("mobilenetv2", "lab")]
)
def test_pruned_checkpoint_reloads_with_no_flags(tmp_path, name, importance):
    m = built(name)
    kept = prune_channels(m, 0.4, importance=importance)
    path = save_checkpoint(tmp_path / "ch.pth", m)
    assert torch.load(path, weights_only=True)["arch"]["channels"] == kept
    net, ck = load_model(path)
    assert ck["arch"]["channels"] == kept
    assert count_params(net) == count_params(m) < count_params(built(name))
    with torch.no_grad():
        assert torch.equal(net.eval()(x4()), m(x4()))


def test_masks_on_the_slimmer_model_save_and_reload(tmp_path):
    m = built("resnet20")
    prune_channels(m, 0.5)
    pruner = Pruner(m, 0.5)
    pruner.apply()
    path = save_checkpoint(tmp_path / "both.pth", m, masks=pruner.masks)
    net, ck = load_model(path)
    assert set(ck["masks"]) == set(pruner.masks)
    for k, mask in pruner.masks.items():
        assert torch.equal(ck["masks"][k], mask.bool())
    with torch.no_grad():
        assert torch.equal(net.eval()(x4()), m(x4()))


def test_sorted_then_pruned_user_model_reloads_with_model_flag(tmp_path):
    spec = "test_channels_checkpoint:ConcatNet"
    m = build_model(spec).eval()
    x = x4()
    with torch.no_grad():
        ref = m(x)
        sort_channels(m, "l1")
        assert torch.allclose(m(x), ref, atol=1e-6)
    groups = channel_groups(m)
    assert list(groups) == ["a", "b", "mix"]
    assert groups["a"]["consumers"] == ["mix"] and groups["mix"]["consumers"] == ["fc"]
    kept = prune_channels(m, {"a": 0.5, "b": 0.5, "mix": 0.25})
    assert kept == {"a": 4, "b": 3, "mix": 9}
    assert m.bn.num_features == 7 and m.mix.in_channels == 7 and m.fc.in_features == 36
    path = save_checkpoint(tmp_path / "cat.pth", m)
    with pytest.raises(CheckpointError, match="pass --model"):
        load_model(path)
    net, _ = load_model(path, model=spec)
    with torch.no_grad():
        assert torch.equal(net.eval()(x), m(x))


def test_record_applies_on_the_meta_device():
    m = built("mobilenetv2")
    kept = prune_channels(m, 0.5)
    with torch.device("meta"):
        base = build_model("mobilenetv2", SMALL["mobilenetv2"])
        out = apply_channel_record(base, kept, "test")
    assert out is base
    shapes = {k: v.shape for k, v in base.state_dict().items()}
    assert shapes == {k: v.shape for k, v in m.state_dict().items()}
    assert all(v.is_meta for v in base.state_dict().values())


def test_compressed_export_of_a_channel_pruned_model(tmp_path):
    m = built("vgg")
    prune_channels(m, 0.5)
    export_compressed(m, tmp_path / "m.plz", arch=m.prunelab_arch)
    net = load_compressed(tmp_path / "m.plz")
    with torch.no_grad():
        assert torch.equal(net(x4()), m(x4()))


@pytest.mark.parametrize(
    "channels, match",
    [
        ({"backbone.conv9": 4}, r"names unknown channel group 'backbone.conv9' \(groups of "),
        ({"classifier": 4}, r"names unknown channel group 'classifier'"),
        ({"backbone.conv0": 9}, r"keeps 9 channels of group 'backbone.conv0', which has 8 "
                                r"\(expected 1..8\)"),
    ],
)  # fmt: skip
def test_bad_records_are_refused_by_load_model(tmp_path, channels, match):
    m = built("vgg")
    arch = {**m.prunelab_arch, "channels": channels}
    path = save_checkpoint(tmp_path / "bad.pth", m, arch=arch)
    with pytest.raises(CheckpointError, match=match) as e:
        load_model(path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)


@pytest.mark.parametrize(
    "channels", [{"backbone.conv0": "4"}, {"backbone.conv0": True}, ["backbone.conv0"], "x"]
)
def test_record_must_be_a_dict_of_ints(channels):
    with pytest.raises(CheckpointError, match=r"src: the 'channels' record must be a dict"):
        apply_channel_record(built("vgg"), channels, "src")


def test_record_without_matching_weights_is_a_shape_error(tmp_path):
    m = built("vgg")
    arch = {**m.prunelab_arch, "channels": {"backbone.conv1": 8}}
    path = save_checkpoint(tmp_path / "mismatch.pth", m, arch=arch)
    with pytest.raises(CheckpointError, match=r"'backbone.conv1.weight' has shape \(16, 8, 3, 3\)"):
        load_model(path)


def test_unpruned_models_pass_through():
    m = built("vgg")
    assert apply_channel_record(m, None) is m
    assert apply_channel_record(m, {}) is m
