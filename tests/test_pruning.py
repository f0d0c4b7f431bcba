"""Masks, plans, the Pruner and sparsity accounting, on synthetic tensors and tiny models."""

import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import prune

from prunelab.errors import PlanError
from prunelab.models import VGG
from prunelab.pruning import (
    Pruner,
    encoded_nbytes,
    fine_grained_mask,
    format_sparsity_table,
    prunable_layers,
    resolve_plan,
    sparsity_report,
)

LAB = torch.tensor(
    [
        [-0.46, -0.40, 0.39, 0.19, 0.37],
        [0.00, 0.40, 0.17, -0.15, 0.16],
        [-0.20, -0.23, 0.36, 0.25, 0.03],
        [0.24, 0.41, 0.07, 0.13, -0.15],
        [0.48, -0.09, -0.36, 0.12, 0.45],
    ]
)


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 5, 3),
        nn.Flatten(),
        nn.Linear(5 * 2 * 2, 3),
    )


def test_lab_check():
    mask = fine_grained_mask(LAB, 0.75)
    kept = sorted(map(tuple, mask.nonzero().tolist()))
    assert kept == [(0, 0), (0, 1), (1, 1), (3, 1), (4, 0), (4, 4)]
    assert mask.dtype == torch.bool and mask.shape == LAB.shape


def test_input_not_modified():
    t = LAB.clone()
    fine_grained_mask(t, 0.5)
    assert torch.equal(t, LAB)


def test_sparsity_zero_and_one():
    assert fine_grained_mask(LAB, 0.0).all()
    assert not fine_grained_mask(LAB, 1.0).any()
    assert fine_grained_mask(LAB, 0.01).all()  # round(0.25) == 0 zeros


def test_ties_are_all_removed():
    t = torch.tensor([0.0, 0.0, 0.0, 1.0, 2.0])
    assert fine_grained_mask(t, 0.2).tolist() == [False, False, False, True, True]


@pytest.mark.parametrize("bad", [-0.1, 1.1, float("nan"), "0.5", None, True])
def test_bad_sparsity_raises_naming_value(bad):
    with pytest.raises(ValueError) as e:
        fine_grained_mask(LAB, bad)
    assert repr(bad) in str(e.value)


distinct = st.lists(
    st.floats(-1e3, 1e3, allow_nan=False, allow_subnormal=False, width=32),
    min_size=1,
    max_size=300,
    unique_by=abs,
)


@settings(max_examples=200, deadline=None)
@given(values=distinct, sparsity=st.floats(0.0, 1.0))
def test_matches_torch_l1_unstructured_without_ties(values, sparsity):
    t = torch.tensor(values, dtype=torch.float32)
    ref = prune.L1Unstructured(sparsity).compute_mask(t, default_mask=torch.ones_like(t))
    mask = fine_grained_mask(t, sparsity)
    assert torch.equal(mask, ref.bool())
    n = t.numel()
    assert (n - int(mask.sum())) / n == round(n * sparsity) / n


@settings(max_examples=100, deadline=None)
@given(values=distinct, sparsity=st.floats(0.0, 1.0))
def test_idempotent(values, sparsity):
    t = torch.tensor(values, dtype=torch.float32)
    mask = fine_grained_mask(t, sparsity)
    assert torch.equal(fine_grained_mask(t * mask, sparsity), mask)


def test_prunable_layers_scopes():
    net = small_net()
    assert list(prunable_layers(net, "conv")) == ["0", "3"]
    assert list(prunable_layers(net, "all")) == ["0", "3", "5"]
    assert list(prunable_layers(VGG(width=0.125), "conv"))[3] == "backbone.conv3"
    with pytest.raises(PlanError, match="conv, all"):
        prunable_layers(net, "dense")


def test_uniform_and_dict_plans():
    net = small_net()
    assert resolve_plan(net, 0.5) == {"0.weight": 0.5, "3.weight": 0.5}
    assert resolve_plan(net, 0.5, scope="all")["5.weight"] == 0.5
    assert resolve_plan(net, {"0": 0.3, "3.weight": 0.6}) == {"0.weight": 0.3, "3.weight": 0.6}
    p = Pruner(net, {"3": 0.75})
    p.apply()
    assert set(p.masks) == {"3.weight"}
    assert int((net[3].weight == 0).sum()) == round(net[3].weight.numel() * 0.75)
    assert int((net[0].weight == 0).sum()) == 0


@pytest.mark.parametrize("cap", [None, 0.8])
def test_global_plan_reaches_overall_sparsity(cap):
    net = small_net()
    with torch.no_grad():
        net[3].weight.mul_(0.1)  # make one layer much smaller so the threshold hits it hardest
    plan = {"global": 0.6} if cap is None else {"global": 0.6, "max_layer_sparsity": cap}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # without a cap layer 3 is pruned to 100%
        p = Pruner(net, plan, scope="all")
    p.apply()
    total = sum(m.weight.numel() for m in prunable_layers(net, "all").values())
    zeros = sum(int((m.weight == 0).sum()) for m in prunable_layers(net, "all").values())
    assert zeros == round(total * 0.6)
    report = p.report()
    assert report["3.weight"]["achieved"] == (cap or 1.0)
    assert all(r["achieved"] <= (cap or 1.0) for r in report.values())


def test_global_plan_impossible_cap():
    with pytest.raises(PlanError, match="max_layer_sparsity"):
        resolve_plan(small_net(), {"global": 0.9, "max_layer_sparsity": 0.5})


def test_unknown_layer_lists_valid_names():
    with pytest.raises(PlanError) as e:
        resolve_plan(small_net(), {"backbone.conv9": 0.5})
    assert "backbone.conv9" in str(e.value) and "0, 3" in str(e.value)


def test_empty_scope_lists_valid_names():
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(PlanError) as e:
        Pruner(net, 0.5)
    assert "'conv'" in str(e.value) and "0, 2" in str(e.value)


def test_bad_plan_value_is_plan_error():
    with pytest.raises(PlanError, match="1.5"):
        resolve_plan(small_net(), {"0": 1.5})


def test_full_pruning_warns():
    with pytest.warns(UserWarning, match="100%"):
        resolve_plan(small_net(), {"3": 1.0})


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=1e-4),
        lambda ps: torch.optim.Adam(ps, lr=0.01),
        lambda ps: torch.optim.AdamW(ps, lr=0.01),
    ],
)
def test_masks_never_resurrect(make_opt):
    net = small_net()
    pruner = Pruner(net, 0.7, scope="all")
    pruner.apply()
    opt = make_opt(net.parameters())
    x, y = torch.randn(8, 3, 6, 6), torch.randint(0, 3, (8,))
    for _ in range(4):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        pruner.step(opt)
        for name, p in net.named_parameters():
            if name not in pruner.masks:
                continue
            off = ~pruner.masks[name]
            assert (p[off] == 0).all()
            states = [v for v in opt.state[p].values() if torch.is_tensor(v) and v.shape == p.shape]
            assert states and all((v[off] == 0).all() for v in states)
    assert all(r["matches_target"] for r in pruner.report().values())


def test_report_warns_before_apply():
    pruner = Pruner(small_net(), 0.5)
    with pytest.warns(UserWarning, match="apply"):
        report = pruner.report()
    assert report["0.weight"]["nonzeros"] == report["0.weight"]["numel"]


def test_from_masks_roundtrip_and_validation():
    net = small_net()
    p = Pruner(net, 0.5)
    q = Pruner.from_masks(small_net(), {k: v.clone() for k, v in p.masks.items()})
    q.apply()
    assert q.targets == {k: round(v.numel() * 0.5) / v.numel() for k, v in p.masks.items()}
    assert all((q.model.get_parameter(k)[~m] == 0).all() for k, m in q.masks.items())
    with pytest.raises(PlanError, match="nope.weight"):
        Pruner.from_masks(net, {"nope.weight": torch.ones(2, dtype=torch.bool)})
    with pytest.raises(PlanError, match="shape"):
        Pruner.from_masks(net, {"0.weight": torch.ones(2, 2, dtype=torch.bool)})


def test_sparsity_report_hand_checked():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Flatten(), nn.Linear(3 * 2 * 2, 4))
    with torch.no_grad():
        net[0].weight.view(-1)[:27] = 0  # 27 of 54 conv weights
        net[0].bias.zero_()  # 3 zeros in a 1-D parameter
        net[2].weight[0] = 0  # 12 of 48 linear weights
    r = sparsity_report(net, scope="all", input_size=(2, 4, 4))
    conv, lin = r["layers"]
    assert conv["shape"] == [3, 2, 3, 3] and conv["params"] == 54 and conv["nonzeros"] == 27
    assert conv["sparsity"] == 0.5
    assert conv["macs_dense"] == 2 * 2 * 54 and conv["macs_sparse"] == 2 * 2 * 27
    assert lin["macs_dense"] == 48 and lin["macs_sparse"] == 36
    assert conv["mib_dense"] == 54 * 4 / 2**20 and conv["mib_nonzero"] == 27 * 4 / 2**20
    assert conv["mib_encoded"] == (27 * 4 + math.ceil(54 / 8)) / 2**20
    assert r["prunable_sparsity"] == 39 / 102
    assert r["model_sparsity_all_params"] == 42 / (54 + 3 + 48 + 4)
    assert r["model_sparsity_weights_only"] == 39 / 102
    assert r["macs_dense"] == 216 + 48
    assert "3 in 1-D parameters" in r["notes"]
    table = format_sparsity_table(r)
    assert "| 0 | 3x2x3x3 | 54 | 27 | 0.5000 |" in table and "denominators" in table


def test_unpruned_vgg_small_sparsity_comes_from_bn_biases():
    r = sparsity_report(VGG(width=0.125))
    assert r["prunable_sparsity"] == 0.0
    n_bias = sum(
        m.bias.numel() for m in VGG(width=0.125).modules() if isinstance(m, nn.BatchNorm2d)
    )  # initialised to exactly 0
    assert r["model_sparsity_all_params"] == n_bias / r["model_params"]
    assert f"{n_bias} in 1-D parameters" in r["notes"]


def test_encoded_size_picks_cheaper_index():
    dense = torch.ones(64)
    assert encoded_nbytes(dense) == (64 * 4 + 8, "bitmask")
    sparse = torch.zeros(200_000)
    sparse[[0, 150_000]] = 1.0  # second gap needs two uint16 filler entries
    assert encoded_nbytes(sparse) == (2 * 4 + 2 * (2 + 2) + 4 * 2, "uint16-relative")


def test_pruner_on_vgg_and_report_no_warnings():
    model = VGG(width=0.125)
    pruner = Pruner(model, 0.8)
    pruner.apply()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = pruner.report()
    assert len(report) == 8 and all(r["matches_target"] for r in report.values())


def test_linear_scope_and_scope_names_in_error():
    net = small_net()
    assert list(prunable_layers(net, "linear")) == ["5"]
    with pytest.raises(PlanError) as e:
        prunable_layers(net, "dense")
    assert "conv, all, linear" in str(e.value) and "ConvTranspose1d/2d/3d" in str(e.value)


@pytest.mark.parametrize(
    ("masks", "expected"),
    [
        ([torch.ones(4, 3, 3, 3, dtype=torch.bool)], "must be a dict"),
        ({"0.weight": [[1, 0]]}, "'0.weight' is a list, expected a bool tensor of shape"),
        ({"0.weight": torch.ones(3, 3)}, "'0.weight' has shape"),
        ({"0.weight": torch.full((4, 3, 3, 3), 0.5)}, "values other than 0 and 1"),
        ({"9.weight": torch.ones(2)}, "'9.weight' names no parameter"),
        ({3: torch.ones(2)}, "mask 3 names no parameter"),
    ],
)
def test_from_masks_refuses_bad_masks_in_one_line(masks, expected):
    with pytest.raises(PlanError) as e:
        Pruner.from_masks(small_net(), masks)
    assert expected in str(e.value) and "\n" not in str(e.value)


def test_from_masks_accepts_numeric_zero_one_masks():
    net = small_net()
    m = (torch.arange(4 * 3 * 3 * 3).reshape(4, 3, 3, 3) % 2).float()
    p = Pruner.from_masks(net, {"0.weight": m})
    p.apply()
    assert p.masks["0.weight"].dtype == torch.bool and int((net[0].weight == 0).sum()) == 54


def test_global_cap_is_a_maximum_even_on_tiny_layers():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(40, 5), nn.Linear(5, 2))  # the second has 10 weights
    with torch.no_grad():
        net[1].weight.mul_(1e-3)  # the threshold would take all of it
    plan = resolve_plan(net, {"global": 0.5, "max_layer_sparsity": 0.95}, scope="linear")
    assert plan["1.weight"] == 0.9  # floor(9.5) = 9 of 10, never all of them
    assert plan["0.weight"] <= 0.95
    capped = resolve_plan(net, {"global": 0.5, "max_layer_sparsity": 0.86}, scope="linear")
    assert capped["1.weight"] == 0.8  # round(8.6) would exceed the cap
