"""Sensitivity-guided plans: exact overall sparsity, caps, clear refusals, and the CLI."""

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prunelab.cli import main
from prunelab.errors import PlanError
from prunelab.models import VGG, load_model, save_checkpoint
from prunelab.plan import format_plan_table, global_plan, sensitivity_plan
from prunelab.pruning import prunable_layers

SPS = [0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
# accuracy lost at sparsity 0.9 by each conv layer alone: the first layers are sensitive
LOSS = [0.40, 0.30, 0.20, 0.10, 0.05, 0.02, 0.02, 0.08]


def fake_scan(model: VGG, dense: float = 0.85) -> dict:
    """Curves shaped like a real scan: flat, then falling faster; a little noise."""
    layers = {}
    for i, (name, m) in enumerate(prunable_layers(model, "conv").items()):
        acc = [
            dense - LOSS[i] * (s / 0.9) ** 3 + (0.002 if j == 1 else 0.0) for j, s in enumerate(SPS)
        ]
        layers[name] = {"params": m.weight.numel(), "accuracy": acc, "achieved": SPS}
    return {"dense_accuracy": dense, "sparsities": SPS, "layers": layers}


@pytest.fixture(scope="module")
def model() -> VGG:
    torch.manual_seed(0)
    return VGG(0.125)


@pytest.fixture(scope="module")
def scan(model) -> dict:
    return fake_scan(model)


def counts(plan: dict, model: VGG) -> tuple[int, int]:
    params = dict(model.named_parameters())
    pruned = sum(round(params[p].numel() * s) for p, s in plan["plan"].items())
    return pruned, sum(params[p].numel() for p in plan["plan"])


@settings(max_examples=40, deadline=None)
@given(target=st.floats(0.0, 0.85))
def test_plan_hits_target_within_one_weight_per_layer(model, scan, target):
    plan = sensitivity_plan(scan, model, target)
    pruned, total = counts(plan, model)
    assert abs(pruned - target * total) <= len(plan["plan"])
    assert plan["achieved_overall"] == pruned / total
    assert abs(plan["achieved_overall"] - target) <= len(plan["plan"]) / total


@settings(max_examples=30, deadline=None)
@given(target=st.floats(0.1, 0.8), cap=st.floats(0.3, 0.99))
def test_caps_respected_and_never_full(model, scan, target, cap):
    caps = {"backbone.conv5": cap}
    try:
        plan = sensitivity_plan(scan, model, target, caps=caps)
    except PlanError as e:
        assert "unreachable" in str(e)
        return
    eff = plan["caps"]
    assert eff["backbone.conv5.weight"] == cap
    assert eff["backbone.conv0.weight"] == 0.8 and eff["backbone.conv7.weight"] == 0.8
    assert eff["backbone.conv3.weight"] == 0.95
    for p, s in plan["plan"].items():
        assert s <= eff[p] + 1e-12, (p, s, eff[p])
        assert s < 1.0


def test_sensitive_layers_are_spared(model, scan):
    plan = sensitivity_plan(scan, model, 0.7)["plan"]
    # conv0..2 lose the most accuracy in the scan; the large, tolerant layers take the cut
    assert plan["backbone.conv0.weight"] < plan["backbone.conv5.weight"]
    assert plan["backbone.conv1.weight"] < plan["backbone.conv6.weight"]
    uniform_drop = sum(LOSS[i] * (0.7 / 0.9) ** 3 for i in range(8))
    assert sensitivity_plan(scan, model, 0.7)["summed_scan_drop"] < uniform_drop


def test_unreachable_target_names_the_maximum(model, scan):
    layers = prunable_layers(model, "conv")
    n = {k: m.weight.numel() for k, m in layers.items()}
    caps = {k: 0.8 if k in ("backbone.conv0", "backbone.conv7") else 0.95 for k in n}
    most = sum(math.floor(caps[k] * n[k]) for k in n) / sum(n.values())
    with pytest.raises(PlanError, match=f"at most {most:.4f}"):
        sensitivity_plan(scan, model, 0.97)
    sensitivity_plan(scan, model, most - 0.001)  # just below is fine


def test_unknown_cap_layer_lists_valid_ones(model, scan):
    with pytest.raises(PlanError, match=r"backbone\.conv99.*valid layers: backbone\.conv0"):
        sensitivity_plan(scan, model, 0.5, caps={"backbone.conv99": 0.5})
    with pytest.raises(PlanError, match="must be < 1"):
        sensitivity_plan(scan, model, 0.5, caps={"backbone.conv3": 1.0})


def test_scan_of_another_model_is_refused(scan):
    with pytest.raises(PlanError, match="another model"):
        sensitivity_plan(scan, VGG(0.25), 0.5)
    with pytest.raises(PlanError, match="no curve"):
        sensitivity_plan(scan, VGG(0.125), 0.5, scope="all")


def test_max_drop_bounds_each_layer(model, scan):
    plan = sensitivity_plan(scan, model, 0.5, max_drop=0.02)
    assert all(d <= 0.02 + 1e-9 for d in plan["scan_drop_per_layer"].values())
    with pytest.raises(PlanError, match="max_drop"):
        sensitivity_plan(scan, model, 0.9, max_drop=0.001)


def test_global_plan_reaches_target(model, scan):
    plan = global_plan(model, 0.8, scan=scan)
    assert plan["achieved_overall"] == pytest.approx(0.8, abs=1e-4)
    assert plan["summed_scan_drop"] > 0
    table = format_plan_table(plan, model)
    assert "| **total** |" in table and "global-magnitude" in table


@pytest.fixture(scope="module")
def files(tmp_path_factory, model, scan):
    d = tmp_path_factory.mktemp("plan")
    save_checkpoint(d / "dense.pth", model)
    (d / "scan.json").write_text(json.dumps(scan))
    return d


def run_cli(args, capsys):
    try:
        code = main([str(a) for a in args])
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr()


def test_cli_plan_then_prune(files, capsys):
    d = files
    code, out = run_cli(
        [
            "plan",
            "--scan",
            d / "scan.json",
            "--checkpoint",
            d / "dense.pth",
            "--target",
            "0.7",
            "--cap",
            "backbone.conv4=0.5",
            "--out",
            d / "plan.json",
        ],
        capsys,
    )
    assert code == 0, out.err
    assert "| backbone.conv4 |" in out.out and "sensitivity-greedy" in out.out
    plan = json.loads((d / "plan.json").read_text())
    assert plan["plan"]["backbone.conv4.weight"] <= 0.5
    code, out = run_cli(
        [
            "prune",
            "--checkpoint",
            d / "dense.pth",
            "--plan",
            d / "plan.json",
            "--out",
            d / "pruned.pth",
        ],
        capsys,
    )
    assert code == 0, out.err
    pruned, _ = load_model(d / "pruned.pth")
    params = dict(pruned.named_parameters())
    zeros = sum(params[p].numel() - int(torch.count_nonzero(params[p])) for p in plan["plan"])
    total = sum(params[p].numel() for p in plan["plan"])
    assert zeros / total == pytest.approx(plan["achieved_overall"], abs=1e-9)


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--target", "0.99"], "unreachable"),
        (["--target", "0.5", "--cap", "backbone.conv99=0.5"], "backbone.conv99"),
        (["--target", "0.5", "--cap", "conv0"], "LAYER=CAP"),
        (["--target", "1.5"], "outside [0, 1]"),
        (["--target", "0.5", "--global", "--cap", "backbone.conv1=0.5"], "--global"),
    ],
)
def test_cli_plan_errors_are_one_line(files, capsys, extra, expected):
    d = files
    out_path = d / "bad" / "plan.json"
    code, out = run_cli(
        [
            "plan",
            "--scan",
            d / "scan.json",
            "--checkpoint",
            d / "dense.pth",
            "--out",
            out_path,
            *extra,
        ],
        capsys,
    )
    err = out.err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert expected in err
    assert not out_path.exists()


class _Tied(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.a = torch.nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.b = torch.nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.b.weight = self.a.weight
        self.head = torch.nn.Conv2d(8, 4, 1, bias=False)

    def forward(self, x):
        return self.head(self.b(self.a(self.stem(x)))).mean(dim=(2, 3))


def test_plans_on_shared_weights_name_each_weight_once():
    torch.manual_seed(0)
    net = _Tied()
    layers = prunable_layers(net, "conv")
    acc = {"stem": [0.5, 0.4], "a": [0.8, 0.7], "b": [0.1, 0.0], "head": [0.7, 0.6]}
    scan = {
        "dense_accuracy": 0.8,
        "sparsities": [0.5, 0.9],
        "layers": {n: {"params": m.weight.numel(), "accuracy": acc[n]} for n, m in layers.items()},
    }
    plan = sensitivity_plan(scan, net, 0.5, caps={"b": 0.9}, first_last_cap=None)
    assert list(plan["plan"]) == ["stem.weight", "a.weight", "head.weight"]
    assert plan["caps"]["a.weight"] == 0.9  # the cap given for the alias lands on the weight
    total = 216 + 576 + 32
    assert plan["achieved_overall"] == round(0.5 * total) / total
    assert plan["plan"]["a.weight"] > plan["plan"]["stem.weight"]  # 'a' is the cheap one
    assert "| a | 576 |" in format_plan_table(plan, net)
    glob = global_plan(net, 0.5, cap=0.8, scan=scan)
    assert set(glob["plan"]) == set(plan["plan"]) == set(glob["scan_drop_per_layer"])
