"""Channel plans: global ranking with caps, the channel scan, and the MACs/latency-target greedy."""

import copy

import pytest
import torch
from torch import nn

from prunelab.accounting import count_macs
from prunelab.channels import (
    MacsCost,
    channel_groups,
    channel_scan,
    global_channel_plan,
    greedy_plan,
    kept_channels,
    macs_target_plan,
    prune_channels,
)
from prunelab.errors import PlanError
from prunelab.evaluation import evaluate
from prunelab.models import build_model


def vgg(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("vgg", {"width": 0.125}).eval()


def resnet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("resnet20", {"width": 0.5}).eval()


def data(n: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g), torch.randint(
        0, 10, (n,), generator=g
    )


# ---- global ranking ----


def test_global_plan_removes_the_ratio_of_all_channels_within_caps():
    m = resnet()
    groups = channel_groups(m)
    plan = global_channel_plan(m, 0.4, caps={"conv1": 0.25}, default_cap=0.6)
    assert list(plan) == list(groups)
    total = sum(g["channels"] for g in groups.values())
    removed = sum(round(groups[n]["channels"] * r) for n, r in plan.items())
    assert removed == round(0.4 * total)
    assert plan["conv1"] <= 0.25 and all(r <= 0.6 for r in plan.values())
    assert len(set(plan.values())) > 1  # not uniform: the ranking decided
    kept = prune_channels(m, plan)
    assert sum(kept.values()) == total - removed


def test_global_ranking_is_normalised_per_group():
    a, b = vgg(), vgg()
    with torch.no_grad():
        b.backbone.conv1.weight.mul_(100)  # raw norms of one group 100x larger
        b.backbone.conv5.weight.mul_(0.01)
    assert global_channel_plan(a, 0.5) == global_channel_plan(b, 0.5)


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"ratio": 0.95}, r"removes .* channels but the caps allow .*raise the caps"),
        ({"ratio": 0.3, "caps": {"classifier": 0.5}}, r"caps: layer 'classifier' produces"),
        ({"ratio": 0.3, "caps": {"nope": 0.5}}, r"caps: unknown channel group 'nope'"),
        ({"ratio": 0.3, "default_cap": 1.0}, r"default_cap: channel pruning ratio must be"),
        ({"ratio": 1.2}, r"global channel ratio: channel pruning ratio must be"),
    ],
)
def test_global_plan_errors(kw, match):
    with pytest.raises(PlanError, match=match):
        global_channel_plan(vgg(), **kw)


# ---- the scan ----


def test_channel_scan_is_plain_re_evaluation_of_each_probe():
    m = vgg()
    x, y = data()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    scan = channel_scan(m, x, y, ratios=(0.5, 0.95), groups=["backbone.conv0", "backbone.conv6"])
    assert {k: v for k, v in m.state_dict().items()}.keys() == before.keys()
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())
    assert scan["ratios"] == [0.5, 0.95] and list(scan["groups"]) == [
        "backbone.conv0",
        "backbone.conv6",
    ]
    assert scan["dense_accuracy"] == evaluate(m, x, y)["accuracy"]
    assert scan["reference_accuracy"] == scan["dense_accuracy"]  # nothing re-estimated
    conv0, conv6 = scan["groups"]["backbone.conv0"], scan["groups"]["backbone.conv6"]
    assert conv0["channels"] == 8 and conv0["kept"] == [4, 0]
    assert conv0["accuracy"][1] is None and conv0["macs"][1] is None  # 0.95 empties it
    assert conv6["kept"] == [32, 3] and all(v < scan["dense_macs"] for v in conv6["macs"])
    probe = copy.deepcopy(m)
    prune_channels(probe, {"backbone.conv6": 0.5})
    assert conv6["accuracy"][0] == evaluate(probe, x, y)["accuracy"]
    assert conv6["macs"][0] == count_macs(probe)["total"]


def test_scan_errors():
    x, y = data(8)
    with pytest.raises(PlanError, match=r"scan: layer 'classifier' produces the model's output"):
        channel_scan(vgg(), x, y, groups=["classifier"])
    with pytest.raises(PlanError, match=r"channel scan: channel pruning ratio must be"):
        channel_scan(vgg(), x, y, ratios=(1.0,))


# ---- the greedy search to a MACs (or latency) target ----


def synthetic_scan(model: nn.Module, sensitive: str) -> dict:
    """Every group loses little accuracy, except `sensitive`, which loses a lot."""
    groups = channel_groups(model)
    rows = {}
    for n, g in groups.items():
        acc = [0.5, 0.2] if n == sensitive else [0.89, 0.85]
        rows[n] = {"channels": g["channels"], "accuracy": acc}
    return {"dense_accuracy": 0.9, "ratios": [0.25, 0.5], "groups": rows}


def test_drops_are_measured_from_the_scans_reference():
    """A scan's probes are compared with the dense model treated like them (BatchNorm
    re-estimated), not with the model as it is; older scans have only dense_accuracy."""
    m = vgg()
    scan = synthetic_scan(m, "backbone.conv4")  # probes at 0.25 score 0.89 (conv4: 0.5)
    for ref, res in (
        (0.90, macs_target_plan(m, scan, 0.5, max_ratio=0.75)),
        (0.92, macs_target_plan(m, {**scan, "reference_accuracy": 0.92}, 0.5, max_ratio=0.75)),
    ):
        pred = res["predicted"]
        assert pred["accuracy"] == pytest.approx(ref - pred["accuracy_drop"])
        small = {n: r for n, r in res["plan"].items() if 0 < r <= 0.25}
        assert small and "backbone.conv4" not in small
        for n, r in small.items():  # below the first probe the drop is linear from (0, 0)
            assert pred["drops"][n] == pytest.approx((ref - 0.89) * r / 0.25)


def test_macs_target_plan_reaches_the_target_sparing_the_sensitive_group():
    m = vgg()
    dense = count_macs(m)["total"]
    res = macs_target_plan(m, synthetic_scan(m, "backbone.conv4"), 0.5, max_ratio=0.75)
    assert res["dense_macs"] == dense and res["cost"] == "macs"
    assert res["macs"] <= 0.5 * dense and res["macs"] == res["predicted"]["macs"]
    plan = res["plan"]
    assert plan["backbone.conv4"] == 0.0 and max(plan.values()) <= 0.75
    assert all(abs(r / 0.05 - round(r / 0.05)) < 1e-9 for r in plan.values())
    pruned = copy.deepcopy(m)
    assert prune_channels(pruned, plan) == res["channels"]
    assert count_macs(pruned)["total"] == res["macs"]
    assert res["predicted"]["accuracy"] == pytest.approx(0.9 - res["predicted"]["accuracy_drop"])


@pytest.mark.parametrize("model", [vgg, resnet])
def test_macs_prediction_is_exact(model):
    m = model()
    cost = MacsCost(m)
    names = list(channel_groups(m))
    for plan in ({n: 0.5 for n in names}, {names[0]: 0.3, names[-1]: 0.6}):
        pruned = copy.deepcopy(m)
        prune_channels(pruned, plan)
        assert cost(plan) == count_macs(pruned)["total"]


def test_latency_table_reuses_the_greedy():
    m = vgg()
    scan = synthetic_scan(m, "backbone.conv4")
    saved = {n: 0.1 for n in scan["groups"]}  # seconds saved per unit of ratio
    saved["backbone.conv1"] = {"ratios": [0.5], "saved": [0.2]}
    res = macs_target_plan(m, scan, 0.8, cost={"dense": 1.0, "groups": saved})
    assert res["cost"] == "table" and res["target"] == pytest.approx(0.8)
    assert res["predicted"]["cost"] <= 0.8 + 1e-9
    assert res["plan"]["backbone.conv4"] == 0.0
    assert res["macs"] < res["dense_macs"]


def test_greedy_with_any_cost_function():
    groups = {"a": 10, "b": 10}

    def drop(g: str, r: float) -> float:
        return r * (10.0 if g == "a" else 1.0)

    def cost(plan: dict) -> float:
        return 100 - sum(10 * (c - kept_channels(c, plan.get(g, 0))) for g, c in groups.items())

    plan = greedy_plan(groups, drop, cost, target=60, max_ratio=0.5, step=0.1)
    assert plan == {"a": 0.0, "b": 0.4}
    plan = greedy_plan(groups, drop, cost, target=20, max_ratio=0.5, step=0.1)
    assert plan == {"a": 0.3, "b": 0.5}


def test_greedy_starts_from_start_and_stops_at_caps():
    groups = {"a": 10, "b": 10}

    def cost(plan: dict) -> float:
        return 100 - sum(10 * (c - kept_channels(c, plan.get(g, 0))) for g, c in groups.items())

    def drop(g: str, r: float) -> float:
        return r * (10.0 if g == "a" else 1.0)

    plan = greedy_plan(
        groups, drop, cost, 40, 0.8, 0.1, start={"a": 0.25, "b": 0.2}, caps={"b": 0.3}
    )
    assert plan == {"a": 0.3, "b": 0.3}  # a starts at 0.2 (rounded down); b may not pass 0.3


@pytest.mark.parametrize("band", [0.0, 0.1])
def test_band_keeps_every_group_near_the_uniform_ratio(band):
    m = vgg()
    dense = count_macs(m)["total"]
    free = macs_target_plan(m, synthetic_scan(m, "backbone.conv4"), 0.5, max_ratio=0.75)
    res = macs_target_plan(m, synthetic_scan(m, "backbone.conv4"), 0.5, max_ratio=0.75, band=band)
    u = res["band"]["uniform_ratio"]
    assert res["band"]["width"] == band and res["macs"] <= 0.5 * dense
    assert all(u - band - 0.05 < r < u + band + 0.05 for r in res["plan"].values())
    assert free["plan"]["backbone.conv4"] == 0.0  # without a band the scan spares it wholly
    if band:  # the scan still tilts the plan inside the band
        assert res["plan"]["backbone.conv4"] == min(res["plan"].values()) > 0
    else:  # a uniform plan, but for one grid step
        assert max(res["plan"].values()) - min(res["plan"].values()) <= 0.05 + 1e-9
    assert MacsCost(m)({n: u for n in res["plan"]}) <= 0.5 * dense  # u reaches the target
    assert MacsCost(m)({n: u / 2 for n in res["plan"]}) > 0.5 * dense


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"macs_fraction": 0.5, "band": 1.5}, r"band must be a number in \[0, 1\)"),
        ({"macs_fraction": 0.01, "band": 0.1}, r"cannot be reached even with every group"),
        ({"macs_fraction": 0.01}, r"cannot be reached with max_ratio 0.8"),
        ({"macs_fraction": 0}, r"macs_fraction must be a number in \(0, 1\]"),
        ({"macs_fraction": 0.5, "step": 0}, r"step must be a number in \(0, 1\)"),
        ({"macs_fraction": 0.5, "cost": {"dense": 1}}, r"cost must be \{'dense'"),
        ({"macs_fraction": 0.5, "cost": {"dense": 1, "groups": {"x": 1}}},
         r"cost: unknown channel group 'x'"),
        ({"macs_fraction": 0.5, "cost": {"dense": 1, "groups": {"backbone.conv1": "x"}}},
         r"cost of group 'backbone.conv1' must be a number"),
    ],
)  # fmt: skip
def test_target_plan_errors(kw, match):
    m = vgg()
    with pytest.raises(PlanError, match=match):
        macs_target_plan(m, synthetic_scan(m, "backbone.conv4"), **kw)


def test_a_scan_of_another_model_is_refused():
    scan = synthetic_scan(vgg(), "backbone.conv4")
    wider = build_model("vgg", {"width": 0.25})
    with pytest.raises(PlanError, match=r"has 8 channels but the model's has 16: .*another model"):
        macs_target_plan(wider, scan, 0.5)
    with pytest.raises(PlanError, match=r"not a channel scan"):
        macs_target_plan(vgg(), {"layers": {}}, 0.5)


def test_scan_then_plan_end_to_end():
    m = vgg()
    x, y = data(16)
    scan = channel_scan(m, x, y, ratios=(0.25, 0.5), importance="lab")
    assert "backbone.conv7" not in scan["groups"]  # lab never prunes the last conv
    res = macs_target_plan(m, scan, 0.7, importance="lab")
    assert res["macs"] <= 0.7 * res["dense_macs"]
    assert "backbone.conv7" not in res["plan"]
    assert prune_channels(m, res["plan"], importance="lab") == res["channels"]


def test_round_to_is_part_of_the_search():
    m = vgg()
    res = macs_target_plan(m, synthetic_scan(m, "backbone.conv4"), 0.6, round_to=8)
    assert all(k % 8 == 0 for k in res["channels"].values())
    assert res["macs"] <= 0.6 * res["dense_macs"] and res["macs"] == res["predicted"]["macs"]
    assert prune_channels(m, res["plan"], round_to=8) == res["channels"]
