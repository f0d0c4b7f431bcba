"""Gradual pruning: the cubic schedule step by step, the final plan reached exactly, and
pruned weights (and their optimizer state) held at zero once the masks freeze."""

import re

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from prunelab.errors import PlanError
from prunelab.gradual import GradualPruner, sparsity_at
from prunelab.models import VGG
from prunelab.train import TrainConfig, fit


def reference(step: int, s_i: float, s_f: float, t0: int, T: int, every: int) -> float:
    """The schedule written out: find the last update at or before `step`, then the formula."""
    if step < t0:
        return 0.0
    updates = [t for t in range(t0, t0 + T + 1, every) if t <= step]
    if step >= t0 + T:
        return s_f
    t = updates[-1]
    return s_f + (s_i - s_f) * (1 - (t - t0) / T) ** 3


@given(
    s_i=st.floats(0, 0.5),
    s_f=st.floats(0.5, 0.99),
    t0=st.integers(0, 20),
    T=st.integers(1, 200),
    every=st.integers(1, 30),
)
def test_schedule_matches_formula_at_every_step(s_i, s_f, t0, T, every):
    prev = 0.0
    for step in range(0, t0 + T + 10):
        s = sparsity_at(step, s_i, s_f, t0, T, every)
        assert s == pytest.approx(reference(step, s_i, s_f, t0, T, every), abs=1e-12)
        assert s >= prev - 1e-12  # never falls
        prev = s
    assert sparsity_at(t0, s_i, s_f, t0, T, every) == pytest.approx(s_i)
    assert sparsity_at(t0 + T, s_i, s_f, t0, T, every) == s_f


def test_schedule_holds_between_updates():
    vals = [sparsity_at(t, 0.0, 0.8, 0, 100, 10) for t in range(100)]
    assert vals[0:10] == [0.0] * 10
    assert len(set(vals[10:20])) == 1 and vals[10] == pytest.approx(0.8 * (1 - 0.9**3))
    assert vals[50] == pytest.approx(0.8 * (1 - 0.5**3))


PLAN = {f"backbone.conv{i}": s for i, s in enumerate([0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.9, 0.6])}


@pytest.fixture(scope="module")
def run():
    """Fine-tune a tiny VGG on random images with gradual pruning, recording every step."""
    torch.manual_seed(0)
    model = VGG(0.125)
    x = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    y = torch.randint(0, 10, (64,))
    gp = GradualPruner(model, PLAN, initial_sparsity=0.1, prune_every=2, prune_steps_fraction=0.5)
    params = dict(model.named_parameters())
    numel = {p: params[p].numel() for p in gp.final}
    records = []

    def hook(step: int, total: int) -> None:
        gp.hook(step, total)
        zeros = {p: numel[p] - int(torch.count_nonzero(params[p])) for p in numel}
        state = gp._optimizer.state
        clean = all(not state[params[p]]["momentum_buffer"][~m].any() for p, m in gp.masks.items())
        records.append(
            {
                "step": step,
                "total": total,
                "zeros": zeros,
                "current": gp.current,
                "masks": {p: m.clone() for p, m in gp.masks.items()},
                "momentum_clean": clean,
            }
        )

    cfg = TrainConfig(epochs=3, batch_size=16, lr=0.05, momentum=0.9, seed=0)
    fit(model, x, y, cfg, pruner=gp, step_hook=hook, progress=False)
    return model, gp, records, numel, gp._optimizer


def test_sparsity_follows_schedule_every_step(run):
    model, gp, records, numel, _ = run
    total = records[0]["total"]
    assert total == 12
    N = sum(numel.values())
    for r in records:
        s = sparsity_at(r["step"], 0.1, gp.final_overall, 0, 6, 2)
        assert r["current"] == s
        # overall: within one weight per layer of the schedule
        assert abs(sum(r["zeros"].values()) - s * N) <= len(numel) + 1e-9, r["step"]
        for p, z in r["zeros"].items():  # each layer: its share of the schedule
            assert z == round(numel[p] * gp.final[p] * s / gp.final_overall), (r["step"], p)


def test_final_sparsity_equals_plan(run):
    model, gp, records, numel, _ = run
    assert gp.frozen
    params = dict(model.named_parameters())
    for layer, s in PLAN.items():
        p = f"{layer}.weight"
        assert numel[p] - int(torch.count_nonzero(params[p])) == round(numel[p] * s)


def test_pruned_weights_stay_zero_after_freeze(run):
    model, gp, records, _, opt = run
    frozen_at = next(i for i, r in enumerate(records) if r["step"] >= 6)
    frozen = records[frozen_at]["masks"]
    for r in records[frozen_at:]:
        for p, m in r["masks"].items():
            assert torch.equal(m, frozen[p])  # no update after the pruning phase
    params = dict(model.named_parameters())
    for p, m in frozen.items():
        assert not params[p].detach()[~m].any()
        buf = opt.state[params[p]]["momentum_buffer"]
        assert not buf[~m].any()  # momentum cannot push them back
    # right after every mask update too, not only after the next optimizer step
    assert all(r["momentum_clean"] for r in records)
    # earlier masks are supersets: pruned weights never came back
    for a, b in zip(records, records[1:], strict=False):
        for p in a["masks"]:
            assert not (b["masks"][p] & ~a["masks"][p]).any()


def test_bad_settings_are_refused():
    model = VGG(0.125)
    with pytest.raises(PlanError, match="prune_every"):
        GradualPruner(model, 0.5, prune_every=0)
    with pytest.raises(PlanError, match="initial_sparsity"):
        GradualPruner(model, 0.5, initial_sparsity=0.7)
    with pytest.raises(PlanError, match="backbone.conv99"):
        GradualPruner(model, {"backbone.conv99": 0.5})


def test_cli_finetune_gradual(tmp_path, jpeg_root, cifar, cifar_cache, capsys):
    from prunelab.cli import main
    from prunelab.models import load_model, save_checkpoint

    torch.manual_seed(0)
    save_checkpoint(tmp_path / "dense.pth", VGG(0.125))
    common = [
        "--data-dir",
        str(jpeg_root),
        "--cache-dir",
        str(cifar_cache),
        "--train-subset",
        "256",
        "--val-size",
        "64",
        "--test-subset",
        "64",
        "--batch-size",
        "32",
        "--epochs",
        "1",
        "--no-progress",
        "--prune-schedule",
        "gradual",
    ]
    out = tmp_path / "g.pth"
    code = main(
        [
            "finetune",
            "--checkpoint",
            str(tmp_path / "dense.pth"),
            "--sparsity",
            "0.7",
            "--prune-every",
            "2",
            "--prune-steps-fraction",
            "0.5",
            "--out",
            str(out),
            *common,
        ]
    )
    assert code == 0, capsys.readouterr().err
    model, ck = load_model(out)
    assert ck["meta"]["sparsity"] == pytest.approx(0.7, abs=1e-4)
    assert ck["meta"]["sparsity_before"] == 0.0
    for name, m in ck["masks"].items():
        w = dict(model.named_parameters())[name]
        assert not w.detach()[~m].any()
    for args, expected in [
        ([], "needs the final sparsity"),
        (["--sparsity", "0.5", "--prune-every", "0"], "prune.every"),
    ]:
        argv = ["finetune", "--checkpoint", str(tmp_path / "dense.pth")]
        argv += ["--out", str(tmp_path / "x.pth"), *common, *args]
        try:
            code = main(argv)
        except SystemExit as e:  # refused by the argument parser: same status, one line
            code = e.code
        err = capsys.readouterr().err.strip()
        assert code == 2 and re.search(expected, err) and len(err.splitlines()) == 1, err
    code = main(
        [
            "finetune",
            "--checkpoint",
            str(out),
            "--sparsity",
            "0.8",
            "--out",
            str(tmp_path / "x.pth"),
            *common,
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and "already holds masks" in err
    assert not (tmp_path / "x.pth").exists()


def test_gradual_on_a_shared_weight_reaches_the_plan():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 16))
    net[2].weight = net[0].weight
    gp = GradualPruner(net, {"2": 0.75}, scope="linear", prune_every=1, prune_steps=3)
    assert set(gp.final) == {"0.weight"}
    for step in range(4):
        gp.hook(step, 4)
    assert gp.frozen and int((net[2].weight == 0).sum()) == 192
