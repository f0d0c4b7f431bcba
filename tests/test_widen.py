"""Measured widening (prunelab.channels.widen): channels that cost no time are given back.

The latency is a fake with a kernel rule like ATen's batch-1 conv choice: conv2 runs 3x
faster once its input has at least 32 channels, so widening conv1 from 16 to 24 costs time
but to 32 saves it. The search must find that point past a slower step."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import prunelab.channels.widen as widen_mod
from prunelab.channels.surgery import prune_in_place
from prunelab.channels.widen import widen_plan
from prunelab.models import VGG

NAMES = [f"backbone.conv{i}" for i in range(8)]


def _fake_ms(model: nn.Module, rule: bool) -> float:
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    cost = [c.in_channels * c.out_channels / 1000 for c in convs]
    if rule and convs[2].in_channels >= 32:
        cost[2] /= 3
    return 1.0 + sum(cost)


def _fake_measure(rule: bool, crowd: float = 1.0):
    """crowd: how much slower every pruned model times among more than two models (colder
    caches), as measured on the dev machine at batch 64."""

    def measure(models, input_shape=None, batch_sizes=(1, 64), **_kw):
        assert input_shape is None  # the search times each model on its own input size
        slow = crowd if len(models) > 2 else 1.0
        rows = [
            {
                "model": n,
                "batch_size": batch_sizes[0],
                "median_ms": _fake_ms(m, rule) * (1.0 if n == "dense" else slow),
            }
            for n, m in models.items()
        ]
        return {"rows": rows}

    return measure


def _speedup(model: nn.Module, plan: dict[str, float], rule: bool) -> float:
    pruned = copy.deepcopy(model)
    prune_in_place(pruned, plan, "l2")
    return _fake_ms(model, rule) / _fake_ms(pruned, rule)


@pytest.fixture
def vgg() -> nn.Module:
    torch.manual_seed(0)
    return VGG(width=0.25).eval()  # 16/32/64/64/128/128/128/128 channels


@pytest.mark.parametrize("rule, crowd", [(True, 1.0), (False, 1.0), (True, 1.2)])
def test_widening_keeps_the_speedup_and_leaves_no_fitting_move(vgg, monkeypatch, rule, crowd):
    monkeypatch.setattr(widen_mod, "measure_latency", _fake_measure(rule, crowd))
    plan = dict.fromkeys(NAMES, 0.5)
    goal = _speedup(vgg, plan, rule) * 0.97
    got = widen_plan(vgg, plan, goal, round_to=8, max_steps=3)
    assert _speedup(vgg, got["plan"], rule) >= goal
    assert all(got["counts"][n] >= vgg.get_submodule(n).out_channels // 2 for n in NAMES)
    for n in NAMES:  # no single further step of up to 3 multiples fits
        for k in (1, 2, 3):
            c = got["counts"][n] + 8 * k
            if c <= vgg.get_submodule(n).out_channels:
                more = {**got["plan"], n: 1 - c / vgg.get_submodule(n).out_channels}
                assert _speedup(vgg, more, rule) < goal
    # the kernel rule: conv1 passes 24 (slower) to reach 32 (faster); without it, it cannot
    assert (got["counts"]["backbone.conv1"] >= 32) == rule
    assert [r["group"] for r in got["rounds"]] and all(
        r["measured_speedup"] >= goal for r in got["rounds"]
    )


def test_a_plan_with_no_room_is_returned_unchanged(vgg, monkeypatch):
    monkeypatch.setattr(widen_mod, "measure_latency", _fake_measure(False))
    plan = dict.fromkeys(NAMES, 0.5)
    got = widen_plan(vgg, plan, _speedup(vgg, plan, False), round_to=8)
    assert got["rounds"] == []
    assert got["stopped"]["reason"] == "no candidate kept the speed-up"
    assert got["stopped"]["estimated_speedup"] < _speedup(vgg, plan, False)
    assert got["counts"] == {n: vgg.get_submodule(n).out_channels // 2 for n in NAMES}
