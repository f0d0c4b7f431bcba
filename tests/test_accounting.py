"""Accounting: MACs from FlopCounterMode on the real input size, parameters counted once,
conv/linear scopes that say what they cover, and one-line errors for impossible shapes."""

import pytest
import torch
from torch import nn

from prunelab import models
from prunelab.accounting import (
    InputShapeError,
    count_macs,
    count_params,
    model_input_shape,
    sparsity_report,
)
from prunelab.errors import PlanError, PrunelabError
from prunelab.models import VGG, resnet20
from prunelab.pruning import Pruner, prunable_layers


class OddConvs(nn.Module):
    """Every conv flavour of the 'conv' scope plus a Linear, on a 2x5x5 input."""

    def __init__(self):
        super().__init__()
        self.up = nn.ConvTranspose2d(2, 3, 3, stride=2)  # 5x5 -> 11x11
        self.c1 = nn.Conv1d(3, 2, 3)  # rows of the map as a sequence
        self.c3 = nn.Conv3d(1, 1, 2, bias=False)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.up(x)  # (1, 3, 11, 11)
        s = self.c1(y.mean(dim=3))  # (1, 2, 9)
        v = self.c3(y.unsqueeze(1))  # (1, 1, 2, 10, 10)
        return self.fc(torch.cat([s.mean(2), v.flatten(1).mean(1, keepdim=True).repeat(1, 2)], 1))


class Tied(nn.Module):
    """Two convolutions sharing one weight (weight tying), then a classifier."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.a = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.b = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.b.weight = self.a.weight
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.b(torch.relu(self.a(torch.relu(self.stem(x)))))
        return self.fc(x.mean(dim=(2, 3)))


def test_study_vgg_macs_match_the_lab_rule():
    """605,754,368 conv+linear MACs per 3x32x32 image: the number the course lab's rule gives."""
    r = count_macs(VGG(width=1.0), (3, 32, 32))
    assert r["total"] == 605_754_368
    assert sum(r["per_layer"].values()) == r["total"]
    assert r["per_layer"]["backbone.conv0"] == 32 * 32 * 64 * 3 * 9
    assert r["per_layer"]["classifier"] == 512 * 10


def test_every_conv_flavour_is_in_scope_and_counted():
    net = OddConvs()
    assert list(prunable_layers(net, "conv")) == ["up", "c1", "c3"]
    assert list(prunable_layers(net, "linear")) == ["fc"]
    assert list(prunable_layers(net, "all")) == ["up", "c1", "c3", "fc"]
    per = count_macs(net, (2, 5, 5))["per_layer"]
    assert per["up"] == 5 * 5 * (2 * 3 * 9)  # transposed: every input pixel times the kernel
    assert per["c1"] == 9 * (3 * 2 * 3)
    assert per["c3"] == 2 * 10 * 10 * 8
    assert per["fc"] == 4 * 2
    r = sparsity_report(net, scope="conv", input_shape=(2, 5, 5))
    assert [row["name"] for row in r["layers"]] == ["up", "c1", "c3"]
    assert r["macs_dense"] == per["up"] + per["c1"] + per["c3"]


def test_scope_that_matches_nothing_says_what_it_covers():
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(PlanError) as e:
        Pruner(net, 0.5)
    msg = str(e.value)
    assert "\n" not in msg and "'conv'" in msg and "ConvTranspose1d/2d/3d" in msg
    assert "Linear, ReLU" in msg and "0, 2" in msg
    with pytest.raises(PlanError, match="linear: Linear"):
        prunable_layers(net, "dense")


def test_shared_weight_counted_once():
    torch.manual_seed(0)
    net = Tied()
    distinct = 4 * 3 * 9 + 4 * 4 * 9 + 4 * 3 + 3
    assert count_params(net) == distinct == sum(p.numel() for p in net.parameters())
    macs = count_macs(net, (3, 8, 8))["per_layer"]
    assert macs["a"] == macs["b"] == 64 * 4 * 4 * 9
    r = sparsity_report(net, scope="conv", input_shape=(3, 8, 8))
    assert [row["param"] for row in r["layers"]] == ["stem.weight", "a.weight"]
    assert r["prunable_params"] == 4 * 3 * 9 + 4 * 4 * 9
    assert r["layers"][1]["macs_dense"] == macs["a"] + macs["b"]  # both layers compute
    assert r["model_params"] == distinct


def test_shared_weight_pruner_and_plans():
    torch.manual_seed(0)
    net = Tied()
    pruner = Pruner(net, 0.5)
    pruner.apply()
    assert set(pruner.masks) == {"stem.weight", "a.weight"}
    assert int((net.b.weight == 0).sum()) == round(net.a.weight.numel() * 0.5)
    r = sparsity_report(net, input_shape=(3, 8, 8))
    assert r["prunable_zeros"] == round(108 * 0.5) + round(144 * 0.5)
    assert r["prunable_sparsity"] == pytest.approx(0.5)
    assert all(v["matches_target"] for v in pruner.report().values())
    # a plan naming the alias resolves to the shared weight's one mask
    alias = Pruner(Tied(), {"b": 0.25})
    assert set(alias.targets) == {"a.weight"}
    with pytest.raises(PlanError, match="listed twice"):
        Pruner(Tied(), {"a": 0.25, "b.weight": 0.5})
    # masks saved under the alias re-attach to the same parameter
    back = Pruner.from_masks(Tied(), {"b.weight": pruner.masks["a.weight"]})
    assert set(back.masks) == {"a.weight"}
    # training keeps the shared zeros at zero
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    for _ in range(2):
        opt.zero_grad()
        net(torch.randn(2, 3, 8, 8)).sum().backward()
        pruner.step(opt)
    assert not net.b.weight[~pruner.masks["a.weight"]].any()


def test_input_shape_comes_from_the_model_record():
    assert model_input_shape(VGG(width=0.125)) == (3, 32, 32)
    if hasattr(models, "build_model"):
        net = models.build_model("resnet20", {"width": 0.25}, input_shape=[3, 40, 40])
        assert model_input_shape(net) == (3, 40, 40)
        assert sparsity_report(net)["input_size"] == [3, 40, 40]


def test_impossible_input_is_one_line_error():
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 4))
    with pytest.raises(InputShapeError) as e:
        sparsity_report(mlp, scope="linear")  # the default 3x32x32 does not fit
    assert "\n" not in str(e.value) and "[3, 32, 32]" in str(e.value)
    assert isinstance(e.value, PrunelabError)
    for bad in [(3, 0, 4), "3x32x32", (3.0, 32, 32), ()]:
        with pytest.raises(InputShapeError, match="input shape"):
            count_macs(mlp, bad)
    assert sparsity_report(mlp, scope="linear", input_shape=(3, 16, 16))["macs_dense"] == 768 * 4


def test_macs_can_be_skipped_and_model_state_is_kept():
    model = resnet20(width=0.25).train()
    r = sparsity_report(model, input_size=None)
    assert r["macs_dense"] is None and r["input_size"] is None
    assert sparsity_report(model, macs=False)["layers"][0]["macs_sparse"] is None
    count_macs(model)
    assert model.training  # the forward pass ran in eval mode and the flag came back
