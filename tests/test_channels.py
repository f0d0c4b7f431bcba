"""Channel pruning: groups, importance, sorting, surgery to counts, and the course lab's numbers."""

import copy
import re

import pytest
import torch
from model_matrix import MATRIX
from torch import nn

from prunelab.accounting import count_macs, count_params
from prunelab.channels import (
    ChannelError,
    channel_groups,
    channel_importance,
    graph_of,
    kept_channels,
    prune_channels,
    sort_channels,
)
from prunelab.errors import PlanError, PrunelabError
from prunelab.models import VGG, build_model, make_arch

IMPORTANCES = ["l2", "l1", "lab", "bn", "group"]


def randomized(model: nn.Module, seed: int = 0) -> nn.Module:
    """Eval mode with BatchNorm statistics and affine parameters away from their defaults, so
    a wrong permutation of any of them shows in the outputs."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = torch.rand(n, generator=g) + 0.5
            m.bias.data = torch.rand(n, generator=g) - 0.5
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
    return model.eval()


def small(name: str) -> nn.Module:
    kw = {"vgg": {"width": 0.125}, "resnet20": {"width": 0.5}, "mobilenetv2": {"width": 0.25}}
    torch.manual_seed(0)
    return randomized(build_model(name, kw[name]))


def x4(seed: int = 0) -> torch.Tensor:
    return torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


# ---- the course lab (MIT 6.5940 Lab 1, channel pruning), written out from its description ----


@torch.no_grad()
def lab_reference(model: VGG, ratio: float) -> None:
    """Sort each conv's output channels by the Frobenius norm of the next conv's input slice
    (all convs but the last), then keep the first round(c * (1 - ratio)) of each."""
    convs = [m for m in model.backbone if isinstance(m, nn.Conv2d)]
    bns = [m for m in model.backbone if isinstance(m, nn.BatchNorm2d)]
    for i in range(len(convs) - 1):
        prev, bn, nxt = convs[i], bns[i], convs[i + 1]
        imp = torch.stack([nxt.weight[:, c].norm() for c in range(nxt.weight.shape[1])])
        idx = torch.argsort(imp, descending=True)
        prev.weight.copy_(prev.weight.index_select(0, idx))
        for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
            t.copy_(t.index_select(0, idx))
        nxt.weight.copy_(nxt.weight.index_select(1, idx))
    for i in range(len(convs) - 1):
        prev, bn, nxt = convs[i], bns[i], convs[i + 1]
        k = int(round(prev.out_channels * (1 - ratio)))
        prev.weight.set_(prev.weight.detach()[:k])
        for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
            t.set_(t.detach()[:k])
        nxt.weight.set_(nxt.weight.detach()[:, :k])


def test_lab_parity_numbers_on_vgg():
    torch.manual_seed(0)
    m = VGG(width=1.0)
    assert count_params(m) == 9_228_362
    assert count_macs(m)["total"] == 605_754_368
    kept = prune_channels(m, 0.3, importance="lab")
    assert list(kept.values()) == [45, 90, 179, 179, 358, 358, 358, 512]
    assert list(kept) == [f"backbone.conv{i}" for i in range(8)]
    assert all(type(v) is int for v in kept.values())
    assert count_params(m) == 5_013_666
    assert count_macs(m)["total"] == 305_097_920
    assert m.prunelab_arch["channels"] == kept and m.prunelab_arch["channels"] is not kept
    assert m(torch.rand(1, 3, 32, 32)).shape == (1, 10)


def test_lab_procedure_is_the_labs_own():
    torch.manual_seed(1)
    ours = randomized(VGG(width=0.25))
    ref = copy.deepcopy(ours)
    prune_channels(ours, 0.3, importance="lab")
    lab_reference(ref, 0.3)
    a, b = ours.state_dict(), ref.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ---- groups ----


def test_resnet_groups_tie_every_conv_feeding_an_add():
    g = channel_groups(small("resnet20"))
    assert list(g)[:4] == ["conv1", "layer1.0.conv1", "layer1.1.conv1", "layer1.2.conv1"]
    stem = set(g["conv1"]["members"])
    assert stem == {"conv1", "layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2"}
    assert {"layer2.0.conv2", "layer2.0.shortcut.0", "layer2.2.conv2"} <= set(
        g["layer2.0.conv2"]["members"]
    )
    assert {"layer3.0.conv1", "layer3.0.shortcut.0"} <= set(g["layer2.0.conv2"]["consumers"])
    assert g["layer3.0.conv2"]["feeds_output"] and "fc" in g["layer3.0.conv2"]["consumers"]
    assert not g["conv1"]["feeds_output"]
    assert "fc" not in g


def test_mobilenet_depthwise_convs_are_tied_to_their_expansion():
    g = channel_groups(small("mobilenetv2"))
    block = g["features.4.conv.0.0"]
    assert block["members"] == ["features.4.conv.0.0", "features.4.conv.1.0"]
    assert block["depthwise"] == ["features.4.conv.1.0"]
    assert block["consumers"] == ["features.4.conv.2"]
    assert g["features.18.0"]["feeds_output"]


@pytest.mark.parametrize(
    "name, plan, match",
    [
        ("vgg", 1.0, r"ratio must be a number in \[0, 1\).*got 1.0"),
        ("vgg", -0.1, r"ratio must be a number in \[0, 1\)"),
        ("vgg", True, r"ratio must be a number in \[0, 1\)"),
        ("vgg", {"backbone.conv9": 0.5}, r"unknown channel group 'backbone.conv9'; groups"),
        ("vgg", {"classifier": 0.5}, r"'classifier' produces the model's output"),
        ("vgg", {"backbone.conv0": 0.95}, r"pruning would empty layer 'backbone.conv0'"),
        ("mobilenetv2", {"features.4.conv.1.0": 0.5},
         r"'features.4.conv.1.0' is pruned with channel group 'features.4.conv.0.0' "
         r"\(a depthwise conv"),
        ("resnet20", {"layer2.0.shortcut.0": 0.5},
         r"pruned with channel group 'layer2.0.conv2' \(coupled"),
        ("resnet20", {"fc": 0.1}, r"'fc' produces the model's output"),
    ],
)  # fmt: skip
def test_plan_errors_are_one_line(name, plan, match):
    with pytest.raises(PlanError, match=match) as e:
        prune_channels(small(name), plan)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"importance": "l3"}, r"unknown channel importance 'l3'; valid: l2, l1, lab, bn"),
        ({"round_to": 0}, r"round_to must be an integer >= 1"),
        ({"round_to": 2.0}, r"round_to must be an integer >= 1"),
    ],
)
def test_argument_errors(kw, match):
    with pytest.raises(PlanError, match=match):
        prune_channels(small("vgg"), 0.5, **kw)


def test_lab_keeps_the_last_conv_whole():
    with pytest.raises(PlanError, match=r"'backbone.conv7' feeds the classifier"):
        prune_channels(small("vgg"), {"backbone.conv7": 0.5}, importance="lab")
    kept = prune_channels(small("vgg"), 0.5, keep_last_conv=True)
    assert kept["backbone.conv7"] == 64 and kept["backbone.conv6"] == 32


def test_bn_importance_needs_a_batchnorm():
    m = MATRIX[3].build()  # biased_conv: no BatchNorm
    m.prunelab_arch = make_arch("x:y", {}, (3, 32, 32))
    with pytest.raises(PlanError, match=r"importance 'bn' needs an affine BatchNorm in channel"):
        prune_channels(m, 0.5, importance="bn")


class Broken(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.head = nn.Linear(5, 2)  # wrong width: the forward fails here

    def forward(self, x):
        return self.head(self.conv(x).mean(dim=(2, 3)))


def test_untraceable_model_names_the_module():
    with pytest.raises(ChannelError, match=r"cannot trace Broken .* in module 'head': ") as e:
        prune_channels(Broken(), 0.5)
    assert isinstance(e.value, PrunelabError) and "\n" not in str(e.value)


# ---- importance and sorting ----


def test_importances_follow_their_definitions():
    m = small("vgg")
    conv0, conv1, bn0 = m.backbone.conv0, m.backbone.conv1, m.backbone.bn0
    imp = {k: channel_importance(m, k)["backbone.conv0"] for k in IMPORTANCES}
    w = conv0.weight.detach().double()
    assert torch.allclose(imp["l2"], w.flatten(1).norm(dim=1))
    assert torch.allclose(imp["l1"], w.flatten(1).abs().sum(1))
    nxt = conv1.weight.detach().double()
    assert torch.allclose(imp["lab"], torch.stack([nxt[:, c].norm() for c in range(8)]))
    assert torch.allclose(imp["bn"], bn0.weight.detach().double().abs())
    sq = w.flatten(1).pow(2).sum(1) + bn0.weight.detach().double() ** 2
    sq += torch.stack([nxt[:, c].pow(2).sum() for c in range(8)])
    assert torch.allclose(imp["group"], sq)  # filter, BN scale and next layer's input slice


def test_importance_sums_over_the_group():
    m = small("resnet20")
    got = channel_importance(m, "l2")["conv1"]
    names = ["conv1", "layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2"]
    convs = dict(m.named_modules())
    want = sum(convs[n].weight.detach().double().flatten(1).norm(dim=1) for n in names)
    assert torch.allclose(got, want)
    bn = channel_importance(m, "bn")["conv1"]
    bns = ["bn1", "layer1.0.bn2", "layer1.1.bn2", "layer1.2.bn2"]
    assert torch.allclose(bn, sum(convs[n].weight.detach().double().abs() for n in bns))


@pytest.mark.parametrize("name", ["vgg", "resnet20", "mobilenetv2"])
@pytest.mark.parametrize("importance", IMPORTANCES)
def test_sorting_leaves_the_outputs_unchanged(name, importance):
    m = small(name)
    x = x4()
    with torch.no_grad():
        ref = m(x)
        before = {k: v.clone() for k, v in m.state_dict().items()}
        orders = sort_channels(m, importance)
        got = m(x)
    assert torch.allclose(got, ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max()))
    moved = [k for k, v in m.state_dict().items() if not torch.equal(v, before[k])]
    assert moved, "sorting permuted nothing"
    assert any(o != sorted(o) for o in orders.values())
    after = channel_importance(m, importance)
    for n in orders:  # now in descending importance
        assert torch.all(after[n][:-1] >= after[n][1:]), n


# ---- surgery to counts ----


def test_counts_rounding():
    assert kept_channels(64, 0.3) == 45 and kept_channels(128, 0.3) == 90
    assert kept_channels(30, 0.5, round_to=8) == 16  # 15 -> nearest multiple
    assert kept_channels(30, 0.0, round_to=8) == 30  # never above c
    assert kept_channels(30, 0.9, round_to=8) == 8  # never below round_to
    assert kept_channels(6, 0.0, round_to=8) == 6


def test_round_to_applies_to_every_group():
    kept = prune_channels(small("vgg"), 0.3, round_to=4)
    assert list(kept.values()) == [8, 12, 24, 24, 44, 44, 44, 44]
    assert all(v % 4 == 0 for v in kept.values())


def test_removes_the_least_important_channels():
    m = small("vgg")
    imp = channel_importance(m, "l2")["backbone.conv1"]
    w = m.backbone.conv1.weight.detach().clone()
    prune_channels(m, {"backbone.conv1": 0.25}, importance="l2")
    keep = sorted(torch.argsort(imp, descending=True)[:12].tolist())
    assert torch.equal(m.backbone.conv1.weight, w[keep])  # kept in their original order
    assert m.backbone.conv2.in_channels == 12 and m.backbone.bn1.num_features == 12
    assert m.prunelab_arch["channels"]["backbone.conv0"] == 8


@pytest.mark.parametrize("importance", IMPORTANCES)
def test_resnet_residual_groups_prune_together(importance):
    m = small("resnet20")
    params, x = count_params(m), x4()
    fc = m.fc.weight.shape
    kept = prune_channels(m, 0.5, importance=importance)
    assert m(x).shape == (4, 10) and m.fc.out_features == 10
    assert count_params(m) < params
    if importance == "lab":  # the group feeding the classifier keeps all its channels
        assert kept["layer3.0.conv2"] == 32 and m.fc.weight.shape == fc
    else:
        assert kept["layer3.0.conv2"] == 16 and m.fc.weight.shape == (10, 16)
    for block in (m.layer2[0], m.layer2[1], m.layer2[2]):
        assert block.conv2.out_channels == kept["layer2.0.conv2"] == 8
    assert m.layer2[0].shortcut[0].out_channels == 8
    assert m.layer3[0].shortcut[0].in_channels == 8
    assert m.conv1.out_channels == m.layer1[2].conv2.out_channels == 4


@pytest.mark.parametrize("importance", IMPORTANCES)
def test_mobilenet_depthwise_in_and_out_prune_together(importance):
    m = small("mobilenetv2")
    macs, x = count_macs(m)["total"], x4()
    kept = prune_channels(m, 0.5, importance=importance)
    assert m(x).shape == (4, 10) and m.classifier.out_features == 10
    assert count_macs(m)["total"] < macs
    block = m.features[4].conv
    dw = block[1][0]
    assert dw.in_channels == dw.out_channels == dw.groups == kept["features.4.conv.0.0"] == 24
    assert block[0][0].out_channels == block[2].in_channels == 24


def test_pruning_twice_updates_the_record():
    m = small("vgg")
    prune_channels(m, {"backbone.conv2": 0.5})
    kept = prune_channels(m, {"backbone.conv2": 0.5, "backbone.conv3": 0.25})
    assert kept["backbone.conv2"] == 8 and kept["backbone.conv3"] == 24
    assert m.prunelab_arch["channels"] == kept


def test_a_model_without_record_warns():
    m = MATRIX[3].build()
    with pytest.warns(UserWarning, match=re.escape("has no architecture record")):
        kept = prune_channels(m, 0.5)
    assert kept == {"conv1": 4, "conv2": 8} and not hasattr(m, "prunelab_arch")


@pytest.mark.parametrize("case", MATRIX, ids=str)
def test_every_matrix_model_sorts_and_prunes(case):
    m = randomized(case.build())
    m.prunelab_arch = make_arch("x:y", {}, case.input_shape)
    x = case.batch(2)
    with torch.no_grad():
        ref = m(x)
        sort_channels(m)
        assert torch.allclose(m(x), ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max()))
        kept = prune_channels(m, 0.5)
        assert kept and m(x).shape == (2, case.num_classes)


def test_training_mode_and_frozen_weights_are_restored():
    m = small("vgg").train()
    m.backbone.conv0.weight.requires_grad_(False)
    prune_channels(m, 0.5)
    assert m.training and not m.backbone.conv0.weight.requires_grad
    assert m.backbone.conv1.weight.requires_grad


class GroupedNet(nn.Module):
    """A grouped (not depthwise) conv: its channels cannot be cut one by one."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.conv3 = nn.Conv2d(8, 16, 3, padding=1)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(torch.relu(self.conv3(x)).mean(dim=(2, 3)))


def test_grouped_conv_blocks_its_groups_and_says_why():
    m = GroupedNet()
    m.prunelab_arch = make_arch("x:y", {}, (3, 16, 16))
    assert list(channel_groups(m)) == ["conv3"]
    with pytest.raises(PlanError, match=r"channel group 'conv1' cannot be pruned: it holds "
                       r"Conv2d 'conv2' \(a grouped convolution, groups=2\), which prunelab "
                       r"cannot cut consistently"):  # fmt: skip
        prune_channels(m, {"conv1": 0.5})
    # what a uniform ratio leaves whole, and why, so a command can say it
    assert set(graph_of(m).unprunable) == {"conv1", "conv2"}
    assert "groups=2" in graph_of(m).unprunable["conv1"]
    assert prune_channels(m, 0.5) == {"conv3": 8}
    assert m(torch.rand(1, 3, 16, 16)).shape == (1, 4)


class SplitNet(nn.Module):
    """conv1's channels are chunked in two in the forward, and each half has its own conv."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.left = nn.Conv2d(8, 8, 3, padding=1)
        self.right = nn.Conv2d(8, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 16, 1)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        a, b = torch.chunk(torch.relu(self.conv1(x)), 2, dim=1)
        x = torch.cat([self.left(a), self.right(b)], dim=1)
        return self.fc(torch.relu(self.conv2(x)).mean(dim=(2, 3)))


def test_channels_divided_in_the_forward_stay_whole():
    # the chunk's sizes are in forward(): a cut would hand `left` the wrong channels (an
    # uneven cut fails outright) and a sort would move channels across the halves
    torch.manual_seed(0)
    m = SplitNet().eval()
    m.prunelab_arch = make_arch("x:y", {}, (3, 16, 16))
    why = graph_of(m).unprunable["conv1"]
    assert why.startswith("channel group 'conv1' cannot be pruned: its channels are divided")
    with pytest.raises(PlanError, match="divided in the forward"):
        prune_channels(m, {"conv1": 0.5})
    x = torch.rand(2, 3, 16, 16)
    before = m(x)
    sort_channels(m)
    torch.testing.assert_close(m(x), before, rtol=0, atol=1e-5)
    assert prune_channels(m, 0.5) == {"left": 4, "right": 4, "conv2": 8}
    assert m(x).shape == (2, 4)


class NextBlockNet(nn.Module):
    """A ConvNeXt-style block: depthwise conv, LayerNorm over the channels on channels-last
    activations, Linear layers as pointwise convs, a residual add; then a LayerNorm over
    (C, H, W) on channels-first ones."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.dw = nn.Conv2d(16, 16, 7, padding=3, groups=16)
        self.norm = nn.LayerNorm(16)
        self.pw1 = nn.Linear(16, 32)
        self.pw2 = nn.Linear(32, 16)
        self.conv = nn.Conv2d(16, 8, 3, padding=1)
        self.whole = nn.LayerNorm([8, 8, 8])
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = self.stem(x)
        y = self.norm(self.dw(x).permute(0, 2, 3, 1))
        x = x + self.pw2(torch.nn.functional.gelu(self.pw1(y))).permute(0, 3, 1, 2)
        return self.fc(self.whole(self.conv(x)).mean(dim=(2, 3)))


def test_layernorm_over_the_channels_prunes_with_its_group():
    torch.manual_seed(0)
    m = NextBlockNet().eval()
    for ln in (m.norm, m.whole):
        nn.init.uniform_(ln.weight, 0.5, 1.5)
        nn.init.uniform_(ln.bias, -0.5, 0.5)
    m.prunelab_arch = make_arch("x:y", {}, (3, 8, 8))
    graph = graph_of(m)
    assert list(graph.groups) == ["stem", "pw1"]  # stem's group holds dw, norm, pw2
    assert "LayerNorm 'whole'" in graph.unprunable["conv"]  # over (C, H, W): left whole
    x = torch.rand(2, 3, 8, 8)
    before = m(x)
    sort_channels(m)
    torch.testing.assert_close(m(x), before, rtol=0, atol=1e-5)
    kept = prune_channels(m, 0.5)
    assert kept == {"stem": 8, "pw1": 16}
    assert m.norm.normalized_shape == (8,) and m.norm.weight.shape == (8,)
    assert m.dw.groups == 8 and m.pw2.out_features == 8 and m(x).shape == (2, 4)
