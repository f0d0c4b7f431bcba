"""Pruning, plans, gradual pruning, accounting and export on every network of the matrix:
nothing may assume the study's VGG, 3 channels, 32 px or convolutions."""

import pytest
import torch
from model_matrix import MATRIX
from torch.utils.flop_counter import FlopCounterMode

from prunelab.export import export_compressed, load_compressed, read_compressed
from prunelab.gradual import GradualPruner
from prunelab.plan import global_plan, sensitivity_plan, uniform_plan
from prunelab.pruning import Pruner, prunable_layers, prunable_weights, sparsity_report

SCOPES = [(case, scope) for case in MATRIX for scope in ("all", "conv", "linear")]
SCOPES = [(c, s) for c, s in SCOPES if prunable_layers(c.build(), s)]


def scoped(case_scope):
    case, scope = case_scope
    return f"{case}-{scope}"


def built(case):
    torch.manual_seed(0)
    return case.build().eval()


def zeros(p: torch.Tensor) -> int:
    return p.numel() - int(torch.count_nonzero(p))


def fake_scan(model, scope: str) -> dict:
    """A scan-shaped dict: later layers tolerate pruning better (no forward passes needed)."""
    sps = [0.3, 0.6, 0.9]
    layers = prunable_layers(model, scope)
    out = {}
    for i, (name, m) in enumerate(layers.items()):
        loss = 0.3 / (i + 1)
        out[name] = {"params": m.weight.numel(), "accuracy": [0.8 - loss * s**2 for s in sps]}
    return {"dense_accuracy": 0.8, "sparsities": sps, "layers": out}


def conv_linear_macs(model, shape) -> int:
    """The reference: FlopCounterMode's convolution and matmul FLOPs / 2, batch of 1."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(torch.zeros(1, *shape))
    ops = counter.get_flop_counts()["Global"]
    kept = ("convolution", "addmm", "mm", "bmm", "matmul")
    return sum(v for op, v in ops.items() if str(op).split(".")[-1] in kept) // 2


@pytest.mark.parametrize("case_scope", SCOPES, ids=scoped)
def test_uniform_pruner_hits_target_per_weight(case_scope):
    case, scope = case_scope
    model = built(case)
    pruner = Pruner(model, 0.5, scope=scope)
    pruner.apply()
    weights = prunable_weights(model, scope)
    assert set(pruner.masks) == set(weights)
    for name, w in weights.items():
        assert abs(zeros(w.param) - 0.5 * w.numel) <= 1, name
        assert not w.param.detach()[~pruner.masks[name]].any()
    with torch.no_grad():
        out = model(case.batch(2))
    assert out.shape == (2, case.num_classes) and torch.isfinite(out).all()


@pytest.mark.parametrize("case", MATRIX, ids=str)
def test_global_plan_with_cap_respects_it_and_reaches_target(case):
    model = built(case)
    plan = global_plan(model, 0.6, scope="all", cap=0.8)
    assert all(0 <= s <= 0.8 for s in plan["plan"].values())
    Pruner(model, plan["plan"], scope="all").apply()
    weights = prunable_weights(model, "all")
    total = sum(w.numel for w in weights.values())
    assert sum(zeros(w.param) for w in weights.values()) == round(0.6 * total)
    assert plan["achieved_overall"] == pytest.approx(0.6, abs=1 / total)


@pytest.mark.parametrize("case_scope", SCOPES, ids=scoped)
def test_sensitivity_and_uniform_plans_cap_every_layer(case_scope):
    case, scope = case_scope
    model = built(case)
    scan = fake_scan(model, scope)
    weights = prunable_weights(model, scope)
    plan = sensitivity_plan(scan, model, 0.5, scope=scope)
    assert set(plan["plan"]) == set(weights) == set(plan["caps"])
    total = sum(w.numel for w in weights.values())
    pruned = sum(round(weights[p].numel * s) for p, s in plan["plan"].items())
    assert pruned == round(0.5 * total)
    for p, s in plan["plan"].items():
        assert s <= plan["caps"][p] < 1 and round(weights[p].numel * s) < weights[p].numel
    uni = uniform_plan(model, 0.5, scope=scope)
    assert set(uni["plan"]) == set(weights) and uni["achieved_overall"] == pytest.approx(0.5, 0.01)


@pytest.mark.parametrize("case", MATRIX, ids=str)
def test_sparsity_report_counts_distinct_params_and_real_macs(case):
    model = built(case)
    Pruner(model, 0.5, scope="all").apply()
    r = sparsity_report(model, scope="all", input_shape=case.input_shape)
    assert r["model_params"] == sum(p.numel() for p in model.parameters())
    assert r["prunable_params"] == sum(w.numel for w in prunable_weights(model, "all").values())
    assert r["input_size"] == list(case.input_shape)
    assert r["macs_dense"] == conv_linear_macs(model, case.input_shape) > 0
    for row in r["layers"]:
        assert row["macs_sparse"] == row["macs_dense"] * row["nonzeros"] // row["params"]
    assert r["macs_sparse"] < r["macs_dense"]


@pytest.mark.parametrize("fp16", [False, True], ids=["fp32", "fp16"])
@pytest.mark.parametrize("case", MATRIX, ids=str)
def test_export_round_trip(case, fp16, tmp_path):
    model = built(case)
    Pruner(model, 0.7, scope="all").apply()
    export_compressed(model, tmp_path / "m.plz", fp16=fp16)
    torch.manual_seed(1)  # a fresh model with other weights: everything must come from the file
    loaded = load_compressed(tmp_path / "m.plz", case.build())
    x = case.batch(4)
    with torch.no_grad():
        ref, out = model(x), loaded(x)
    if fp16:
        assert torch.allclose(ref, out, atol=2e-2 * max(1.0, ref.abs().max().item()))
    else:
        assert torch.equal(ref, out)
        for k, v in model.state_dict().items():
            assert torch.equal(v, loaded.state_dict()[k]), k
    state, header = read_compressed(tmp_path / "m.plz")
    assert set(state) == set(model.state_dict()) and header["model"] == type(model).__name__


@pytest.mark.parametrize("case_scope", SCOPES, ids=scoped)
def test_gradual_pruner_reaches_target(case_scope):
    case, scope = case_scope
    model = built(case)
    gp = GradualPruner(model, 0.6, scope=scope, initial_sparsity=0.1, prune_every=1, prune_steps=4)
    weights = prunable_weights(model, scope)
    seen = []
    for step in range(6):
        gp.hook(step, 6)
        seen.append(sum(zeros(w.param) for w in weights.values()))
    assert gp.frozen and seen == sorted(seen)  # sparsity only rises
    for name, w in weights.items():
        assert zeros(w.param) == round(w.numel * 0.6), name
    assert all(r["matches_target"] for r in gp.report().values())
    with torch.no_grad():
        assert torch.isfinite(model(case.batch(2))).all()


def test_matrix_covers_linear_only_and_odd_inputs():
    """The matrix must keep the cases these tests exist for (a scope with no conv, 1 channel,
    a non-32 size), or the tests above silently test less."""
    shapes = {c.input_shape for c in MATRIX}
    assert (1, 32, 32) in shapes and any(s[1] != 32 for s in shapes)
    assert any(not prunable_layers(c.build(), "conv") for c in MATRIX)
