"""Speed-up goals: the convex scan curves, the latency cost, the measured-target plan loop,
the Torch-Pruning peer saved as a prunelab checkpoint, the [goals] recipe and its flow."""

import copy
import json
import re

import numpy as np
import pytest
import torch

from prunelab.accounting import count_macs
from prunelab.app.peer import peer_at_macs, torch_pruning_uniform
from prunelab.app.recipes import load_recipe
from prunelab.channels import channel_groups, prune_channels
from prunelab.channels import latency_plan as lp
from prunelab.channels import widen as widen_mod
from prunelab.channels.plans import LatencyCost, _convex, macs_target_plan
from prunelab.channels.surgery import kept_channels
from prunelab.errors import PlanError, RecipeError
from prunelab.models import build_model, load_model, save_checkpoint


def vgg(width: float = 0.125) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("vgg", {"width": width}).eval()


def test_convex_curve_never_flattens_after_a_collapse():
    xs = np.array([0.0, 0.25, 0.5, 0.75])
    ds = np.array([0.0, 0.1, 0.6, 0.65])  # collapsed at 0.5, then flat: not free to go on
    out = _convex(xs, ds)
    assert out[:3].tolist() == pytest.approx([0.0, 0.1, 0.6])
    assert out[3] == pytest.approx(0.6 + 0.25 * 2.0)  # the steepest slope so far carries on
    assert np.all(np.diff(np.diff(out) / np.diff(xs)) >= -1e-12)
    gentle = np.array([0.0, 0.1, 0.3, 0.6])  # already convex: unchanged
    assert _convex(xs, gentle).tolist() == pytest.approx(gentle.tolist())


def test_latency_cost_scales_layer_times_by_kept_fractions():
    m = vgg()
    groups = list(channel_groups(m))
    layer_ms = {n: 1.0 for n in count_macs(m)["per_layer"]}
    cost = LatencyCost(m, layer_ms, total_ms=len(layer_ms) + 2.0)
    assert cost({}) == pytest.approx(cost.dense) and cost.rest == pytest.approx(2.0)
    half = cost({groups[3]: 0.5})  # conv3's outputs and conv4's inputs halved
    assert half == pytest.approx(cost.dense - 0.5 - 0.5)
    with pytest.raises(PlanError, match="total_ms"):
        LatencyCost(m, layer_ms, total_ms=0)


def fake_latency(monkeypatch, slow=1.0):
    """Time = MACs (ms per million) x `slow` for pruned copies: a deterministic clock."""

    def measure(models, input_shape=None, batch_sizes=(1, 64), threads=None, reps=20):
        assert input_shape is None  # the plans time each model on its own input size
        rows = []
        for i, (name, model) in enumerate(models.items()):
            ms = count_macs(model)["total"] / 1e6 * (1.0 if i == 0 else slow)
            rows.append({"model": name, "batch_size": batch_sizes[0], "median_ms": ms})
        return {"rows": rows, "settings": {"threads": 1}}

    def layers(model, input_shape=None, batch_size=1, reps=20, threads=None):
        assert input_shape is None  # as for measure: the model's own input size
        return {n: v / 1e6 for n, v in count_macs(model)["per_layer"].items()}

    monkeypatch.setattr(lp, "measure_latency", measure)
    monkeypatch.setattr(widen_mod, "measure_latency", measure)
    monkeypatch.setattr(lp, "layer_latency", layers)


def flat_scan(m):
    return {
        "dense_accuracy": 0.9,
        "ratios": [0.5],
        "groups": {
            n: {"channels": g["channels"], "accuracy": [0.8]} for n, g in channel_groups(m).items()
        },
    }


def test_latency_plan_corrects_the_target_by_the_measured_miss(monkeypatch):
    m = vgg()
    fake_latency(monkeypatch, slow=1.3)  # pruned models run 30% slower than predicted
    res = lp.latency_target_plan(m, flat_scan(m), 2.0, batch_size=1)
    assert len(res["attempts"]) >= 2  # the first plan missed, the next aimed lower
    assert res["attempts"][0]["measured_speedup"] < 2.0
    assert res["reached"] and res["measured_speedup"] >= 2.0
    assert res["measured_speedup"] == max(
        a["measured_speedup"]
        for a in res["attempts"]
        if a["measured_speedup"] <= res["measured_speedup"]
    )
    pruned = copy.deepcopy(m)
    assert prune_channels(pruned, res["plan"]) == res["channels"]
    assert res["layer_timings"]["batch_size"] == 1 and res["layer_timings"]["layer_ms"]


def test_a_plan_that_reaches_the_goal_is_timed_again_and_the_slower_timing_counts(monkeypatch):
    """Every other timing of a pruned model is 20 % faster than the truth (a lucky run): a
    plan that reaches the goal only on the lucky timing must not end the search."""
    m = vgg()
    fake_latency(monkeypatch)
    honest = lp.measure_latency
    calls = []

    def lucky_every_other(models, input_shape=None, batch_sizes=(1, 64), threads=None, reps=20):
        out = honest(models, input_shape, batch_sizes, threads, reps)
        if len(out["rows"]) == 2:  # dense and a pruned model (not the dense-only timing)
            calls.append(1)
            if len(calls) % 2 == 1:
                out["rows"][1]["median_ms"] /= 1.2
        return out

    monkeypatch.setattr(lp, "measure_latency", lucky_every_other)
    monkeypatch.setattr(widen_mod, "measure_latency", lucky_every_other)  # the pair timings
    res = lp.latency_target_plan(m, flat_scan(m), 2.0, batch_size=1, tolerance=0.5)
    first = res["attempts"][0]
    assert len(first["timings"]) == 2 and first["timings"][0] > first["timings"][1]
    assert first["measured_speedup"] == min(first["timings"])
    for a in res["attempts"]:
        assert a["measured_speedup"] == min(a["timings"])
    assert res["measured_speedup"] >= 2.0 or not res["reached"]
    # the honest clock: MACs. What the plan claims, an honest timing confirms
    pruned = copy.deepcopy(m)
    prune_channels(pruned, res["plan"])
    honest_speedup = count_macs(m)["total"] / count_macs(pruned)["total"]
    assert honest_speedup == pytest.approx(res["measured_speedup"], rel=1e-6)
    one = lp.latency_target_plan(m, flat_scan(m), 2.0, batch_size=1, confirm=False)
    assert all(len(a["timings"]) == 1 for a in one["attempts"])


@pytest.mark.parametrize("busy_times", [1, 2])
def test_a_dense_timing_far_above_its_layers_is_timed_again_and_the_lower_counts(
    monkeypatch, busy_times
):
    """A busy moment makes the dense-only timing 1.7x the truth: it must not become the
    plan's baseline (the layers' time would look fixed). Busy twice: the lower still counts."""
    m = vgg()
    fake_latency(monkeypatch)
    honest, dense_calls = lp.measure_latency, []

    def busy_at_first(models, input_shape=None, batch_sizes=(1, 64), threads=None, reps=20):
        out = honest(models, input_shape, batch_sizes, threads, reps)
        if len(out["rows"]) == 1:  # the dense-only timing
            dense_calls.append(1)
            if len(dense_calls) <= busy_times:
                out["rows"][0]["median_ms"] *= 1.7 if len(dense_calls) == 1 else 1.5
        return out

    monkeypatch.setattr(lp, "measure_latency", busy_at_first)
    res = lp.latency_target_plan(m, flat_scan(m), 2.0, batch_size=1)
    truth = count_macs(m)["total"] / 1e6
    want = truth if busy_times == 1 else 1.5 * truth
    assert len(dense_calls) == 2 and res["layer_timings"]["dense_ms"] == pytest.approx(want)


def test_a_plan_far_faster_than_predicted_converges_instead_of_swinging(monkeypatch):
    """Time outside the conv/linear layers (three times theirs) that shrinks with the MACs,
    though the prediction takes it as fixed: the first plan for 1.3x measures some 10x. The
    next target must lie between that plan and no pruning, not at no pruning (which measures
    1.0x, and scaling that miss leads back to the first plan, again and again)."""
    m = vgg()
    dense_macs = count_macs(m)["total"]
    rest = 3 * dense_macs / 1e6

    def measure(models, input_shape=None, batch_sizes=(1, 64), threads=None, reps=20):
        rows = []
        for name, model in models.items():
            macs = count_macs(model)["total"]
            ms = macs / 1e6 + rest * macs / dense_macs
            rows.append({"model": name, "batch_size": batch_sizes[0], "median_ms": ms})
        return {"rows": rows, "settings": {"threads": 1}}

    def layers(model, input_shape=None, batch_size=1, reps=20, threads=None):
        return {n: v / 1e6 for n, v in count_macs(model)["per_layer"].items()}

    monkeypatch.setattr(lp, "measure_latency", measure)
    monkeypatch.setattr(widen_mod, "measure_latency", measure)
    monkeypatch.setattr(lp, "layer_latency", layers)
    res = lp.latency_target_plan(m, flat_scan(m), 1.3, batch_size=1, step=0.01)
    first, second = res["attempts"][:2]
    assert first["measured_speedup"] > 5  # the prediction's miss
    assert first["fraction"] < second["fraction"] < 1.0
    assert res["reached"] and 1.3 <= res["measured_speedup"] <= 1.3 * 1.08


def test_a_correction_too_small_to_change_the_plan_moves_on_to_a_new_one(monkeypatch):
    """Pruned models 2 % slower than predicted: the first plan misses the goal by 0.7 %, and
    scaling the target by the miss makes the same plan again. Every attempt must
    time a plan no earlier attempt made, and the search must reach the goal."""
    m = vgg()
    fake_latency(monkeypatch, slow=1.02)
    res = lp.latency_target_plan(m, flat_scan(m), 2.0, batch_size=1, band=0.0, step=0.01)
    macs = [a["macs"] for a in res["attempts"]]  # here every plan has its own MAC count
    assert len(macs) >= 2 and len(set(macs)) == len(macs)
    assert res["attempts"][0]["measured_speedup"] < 2.0 and res["reached"]
    assert res["attempts"][-1]["channels"] == res["channels"]


def test_latency_plan_reports_a_goal_it_cannot_reach(monkeypatch):
    m = vgg()
    fake_latency(monkeypatch, slow=30.0)  # far slower than predicted: corrections run out
    res = lp.latency_target_plan(m, flat_scan(m), 1.5, attempts=3)
    assert not res["reached"] and res["measured_speedup"] < 1.5
    assert res["measured_speedup"] == max(a["measured_speedup"] for a in res["attempts"])
    with pytest.raises(
        PlanError, match=r"a 50.0x speed-up at batch 1: the target.*dense model timed"
    ):
        lp.latency_target_plan(m, flat_scan(m), 50.0, max_ratio=0.5)
    with pytest.raises(PlanError, match="speedup"):
        lp.latency_target_plan(m, flat_scan(m), 1.0)


def noisy_latency(monkeypatch, seed):
    """Time = MACs, each timing off by up to 10 % at random, as on a shared CPU: two searches
    from the same scan can end on different plans."""
    rng = np.random.default_rng(seed)

    def measure(models, input_shape=None, batch_sizes=(1, 64), threads=None, reps=20):
        assert input_shape is None  # the plans time each model on its own input size
        rows = [
            {
                "model": name,
                "batch_size": batch_sizes[0],
                "median_ms": count_macs(m)["total"] / 1e6 * rng.uniform(0.9, 1.1),
            }
            for name, m in models.items()
        ]
        return {"rows": rows, "settings": {"threads": 1}}

    def layers(model, input_shape=None, batch_size=1, reps=20, threads=None):
        assert input_shape is None  # as for measure: the model's own input size
        return {
            n: v / 1e6 * rng.uniform(0.9, 1.1) for n, v in count_macs(model)["per_layer"].items()
        }

    monkeypatch.setattr(lp, "measure_latency", measure)
    monkeypatch.setattr(widen_mod, "measure_latency", measure)
    monkeypatch.setattr(lp, "layer_latency", layers)


def no_clock(monkeypatch):
    def timed(*_a, **_kw):
        raise AssertionError("timed although the log holds this timing")

    for mod, name in (
        (lp, "measure_latency"),
        (widen_mod, "measure_latency"),
        (lp, "layer_latency"),
    ):
        monkeypatch.setattr(mod, name, timed)


def test_a_latency_plan_made_again_from_its_timing_log_times_nothing_and_is_the_same(monkeypatch):
    m = vgg()
    noisy_latency(monkeypatch, seed=1)
    first = lp.latency_target_plan(m, flat_scan(m), 2.0, widen=1)
    log = json.loads(json.dumps(first["timing_log"]))  # as read back from the plan file
    assert log["timed"] >= 4 and log["reused"] == 0
    assert any(k.startswith("crowd ") for k in log["entries"])  # widening's joint timings too
    no_clock(monkeypatch)
    again = lp.latency_target_plan(m, flat_scan(m), 2.0, widen=1, timings=log)
    for key in ("plan", "channels", "macs", "measured_speedup", "attempts", "widened"):
        assert again[key] == first[key], key
    assert again["timing_log"]["timed"] == 0
    assert again["timing_log"]["reused"] == log["timed"]
    assert again["timing_log"]["entries"] == log["entries"]
    assert again["timing_log"]["earlier_settings"] == log["settings"]  # which CPU timed them
    assert log["settings"]["cpu"] and "earlier_settings" not in log


def test_a_changed_search_reuses_the_timings_it_shares_and_times_the_rest(monkeypatch):
    m = vgg()
    noisy_latency(monkeypatch, seed=2)
    log = lp.latency_target_plan(m, flat_scan(m), 2.0)["timing_log"]
    noisy_latency(monkeypatch, seed=3)
    monkeypatch.setattr(lp, "layer_latency", lambda *a, **k: pytest.fail("layers timed again"))
    other = lp.latency_target_plan(m, flat_scan(m), 2.5, timings=log)["timing_log"]
    assert other["timed"] >= 1 and other["reused"] >= 2  # the layer and dense timings
    assert other["entries"]["layers"] == log["entries"]["layers"]
    with pytest.raises(PlanError, match="batch_size 1, this plan uses 8"):
        lp.latency_target_plan(m, flat_scan(m), 2.0, batch_size=8, timings=log)
    wider = vgg(width=0.25)
    with pytest.raises(PlanError, match="measured with model"):
        lp.latency_target_plan(wider, flat_scan(wider), 2.0, timings=log)
    # a log from before timings were primed was timed cold: not a stand-in for primed ones
    cold = {**log, "settings": {k: v for k, v in log["settings"].items() if k != "timing"}}
    assert log["settings"]["timing"] == "primed"
    with pytest.raises(PlanError, match="measured with timing 'cold', this plan uses 'primed'"):
        lp.latency_target_plan(m, flat_scan(m), 2.0, timings=cold)


@pytest.mark.parametrize(
    "edit, needle",
    [
        (lambda log: log.update(entries=[]), "entries are not a mapping"),
        (lambda log: log.update(settings=[]), "settings are not a mapping"),
        (lambda log: log["entries"].update(layers=3.0), "'layers' should be a {layer: ms}"),
        (lambda log: log["entries"].update(dense=-1), "'dense' should be a number of ms"),
        (lambda log: log["entries"].update(dense=True), "'dense' should be a number of ms"),
    ],
)
def test_a_malformed_timing_log_is_refused_before_anything_is_timed(monkeypatch, edit, needle):
    m = vgg()
    fake_latency(monkeypatch)
    log = copy.deepcopy(lp.latency_target_plan(m, flat_scan(m), 2.0)["timing_log"])
    edit(log)
    no_clock(monkeypatch)
    with pytest.raises(PlanError, match=re.escape(needle)):
        lp.latency_target_plan(m, flat_scan(m), 2.0, timings=log)


def test_plan_keeps_the_sensitive_group_whole_before_the_flat_ones():
    m = vgg()
    scan = flat_scan(m)
    scan["ratios"] = [0.25, 0.5]
    for n, row in scan["groups"].items():
        row["accuracy"] = [0.1, 0.1] if n == "backbone.conv4" else [0.89, 0.88]
    plan = macs_target_plan(m, scan, 0.6)["plan"]
    assert plan["backbone.conv4"] == 0.0


@pytest.mark.parametrize("arch", ["vgg", "resnet20"])
def test_peer_is_saved_and_reloaded_as_a_prunelab_checkpoint(tmp_path, arch):
    torch.manual_seed(0)
    m = build_model(arch, {"width": 0.25} if arch == "vgg" else {"width": 0.5}).eval()
    peer = torch_pruning_uniform(m, 0.5)
    assert count_macs(peer)["total"] < 0.4 * count_macs(m)["total"]
    dense_shapes = [
        p.shape
        for p in build_model(
            arch, {"width": 0.25} if arch == "vgg" else {"width": 0.5}
        ).parameters()
    ]
    assert [p.shape for p in m.parameters()] == dense_shapes  # the caller's model is untouched
    save_checkpoint(tmp_path / "p.pth", peer, {})
    back, ck = load_model(tmp_path / "p.pth")
    back.eval()
    assert ck["arch"]["channels"]
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(back(x), peer(x), atol=1e-5)


def test_peer_lands_near_the_macs_asked_for():
    m = vgg(0.25)
    target = count_macs(m)["total"] // 3
    peer, ratio = peer_at_macs(m, target)
    got = count_macs(peer)["total"]
    assert 0 < ratio < 0.95 and abs(got - target) / target < 0.08


GOALS = """
name = "tiny-goals"
seed = 0

[model]
name = "vgg"
width = 0.125

[data]
val_size = 200
train_subset = 512
test_subset = 200
scan_subset = 100

[dense.train]
epochs = 1
batch_size = 128

[goals]
targets = [
    { batch_size = 1, speedup = 1.2, max_drop = 60, widen = 2 },
    { batch_size = 8, speedup = 1.5, max_drop = 60, round_to = 2 },
]
seeds = [0, 1]
reps = 3
band = 0.2
step = 0.1
importance = "group"

[goals.scan]
ratios = [0.5]

[goals.finetune]
epochs = 1
batch_size = 128
bf16 = false
distill = 0.5
"""


@pytest.mark.parametrize(
    "edit, match",
    [
        (("speedup = 1.2", "speedup = 1.0"), "goals.targets\\[0\\].speedup"),
        (("speedup = 1.2, max_drop = 60,", "speedup = 1.2,"), "batch_size, speedup and max_drop"),
        (("widen = 2", "widen = -1"), "goals.targets\\[0\\].widen"),
        (("batch_size = 8", "batch_size = 1"), "one target per batch size"),
        (("seeds = [0, 1]", "seeds = [0, 0]"), "distinct seeds"),
        (("reps = 3", "repz = 3"), "did you mean 'goals.reps'"),
        (("step = 0.1", "step = 0"), "goals.step"),
        (("round_to = 2", "round_to = 0"), "goals.targets\\[1\\].round_to"),
        (("round_to = 2", "round_to = 2.5"), "goals.targets\\[1\\].round_to"),
        (("step = 0.1", "step = 1"), "goals.step"),
        (("val_size = 200", "val_size = 0"), "data.val_size"),
        (("step = 0.1", "step = 0.1\nrank_energy = 1.0"), "goals.rank_energy"),
        (("[goals]", "[prune]\nsparsities = [0.5]\n[goals]"), "not used by a \\[goals\\]"),
    ],
)
def test_goals_recipe_errors(tmp_path, edit, match):
    (tmp_path / "r.toml").write_text(GOALS.replace(*edit))
    with pytest.raises(RecipeError, match=match):
        load_recipe(tmp_path / "r.toml")


@pytest.fixture(scope="module")
def goals_run(tmp_path_factory, jpeg_root, cifar, cifar_cache):
    from prunelab.app.run import run_recipe

    tmp = tmp_path_factory.mktemp("goals")
    (tmp / "r.toml").write_text(GOALS)
    # The plans are made against the deterministic MACs clock: a tiny model's real latency on
    # a shared CI machine is mostly overhead and noise, and a plan chasing it can land at MACs
    # no uniform ratio reaches, which is not what these tests are about.
    with pytest.MonkeyPatch.context() as mp:
        fake_latency(mp)
        res = run_recipe(
            load_recipe(tmp / "r.toml"),
            jpeg_root,
            out=tmp / "run",
            cache=cifar_cache,
            progress=False,
        )
    return tmp / "run", res


def test_goals_flow_measures_every_model_against_dense_control_and_peer(goals_run):
    run, res = goals_run
    rows = {r["name"]: r for r in res["rows"]}
    assert set(rows) == {"dense", "control", "guided-b1", "peer-b1", "guided-b8", "peer-b8"}
    assert rows["control"]["macs"] == rows["dense"]["macs"]
    assert sorted(rows["control"]["accuracy_after"]) == [0, 1]  # the same seeds as the rest
    assert rows["control"]["accuracy_mean"] == pytest.approx(
        np.mean(list(rows["control"]["accuracy_after"].values()))
    )
    for b in (1, 8):
        ours, peer = rows[f"guided-b{b}"], rows[f"peer-b{b}"]
        assert ours["macs"] < rows["dense"]["macs"]
        assert abs(peer["macs"] - ours["macs"]) / ours["macs"] < 0.15  # same MACs, nearly
        assert sorted(ours["accuracy_after"]) == [0, 1] == sorted(peer["accuracy_after"])
        assert ours["accuracy_mean"] == pytest.approx(
            np.mean(list(ours["accuracy_after"].values()))
        )
        for r in (ours, peer):
            assert r["latency_ms_b1"] > 0 and r["latency_ms_b8"] > 0
            assert 0 < r["file_bytes"] < rows["dense"]["file_bytes"]
            assert (run / "export" / f"{r['name']}.plz").stat().st_size == r["file_bytes"]
    for v in res["verdicts"]:
        ours = rows[f"guided-b{v['batch_size']}"]
        assert v["speedup"] == ours[f"speedup_b{v['batch_size']}"]
        delta = 100 * (ours["accuracy_mean"] - rows["control"]["accuracy_mean"])
        assert v["delta_control_points"] == pytest.approx(delta)
        assert v["met"] == (v["speedup"] >= v["speedup_goal"] and delta >= -60)
        peer = rows[f"peer-b{v['batch_size']}"]
        assert v["peer_macs_ratio"] == pytest.approx(peer["macs"] / ours["macs"])
        timed = {
            x["model"]: x["reps"]
            for x in res["latency"]["rows"]
            if x["batch_size"] == v["batch_size"]
        }
        rounds = v["peer_rounds"]  # the two models paired round by round in the latency step
        assert rounds["rounds"] == timed[ours["name"]] == timed[peer["name"]]
        assert 0 <= rounds["a_faster"] <= rounds["rounds"] and 0 < rounds["p_value"] <= 1
    report = (run / "report.md").read_text()
    for v in res["verdicts"]:
        assert f"timed rounds prunelab was faster in {v['peer_rounds']['a_faster']}:" in report
    assert "## Goals" in report and "Torch-Pruning uniform" in report
    dense_kib = f"| {rows['dense']['file_bytes'] / 1024:.1f} |"
    assert "| export KiB |" in report and dense_kib in report
    assert f"at {res['verdicts'][0]['peer_macs_ratio']:.3f}x prunelab's MACs" in report
    assert (run / "figures" / "goals_accuracy_vs_latency.png").stat().st_size > 10_000


def test_a_changed_plan_refits_and_retimes_its_models_but_not_the_control(
    goals_run, rerun_copy, monkeypatch
):
    """The pruned models keep their file names when the plan changes; their fine-tunes and
    the timing must follow the models, not the names. The control depends on neither."""
    fake_latency(monkeypatch)
    text = rerun_copy(goals_run[0], GOALS.replace("band = 0.2", "band = 0.1"))
    assert "[skip] finetune control seed 0" in text, text
    assert "[plan] batch 1: " in text and "read from the earlier plan" in text, text
    for step in (
        "latency plan batch 1",
        "finetune guided-b1 seed 0",
        "finetune peer-b8 seed 1",
        "latency (interleaved, eager fp32)",
    ):
        assert f"[redo] {step}:" in text, (step, text)


def test_a_plan_remade_the_same_keeps_its_pruned_models_and_their_fine_tunes(
    goals_run, rerun_copy, monkeypatch
):
    """A plan setting that changes nothing the plan says (a looser cap than any group
    reaches) remakes the plans, but the pruned models are keyed by the plans' content: they,
    their fine-tunes and the timing are kept."""
    fake_latency(monkeypatch)
    text = rerun_copy(goals_run[0], GOALS.replace("band = 0.2", "band = 0.2\nmax_ratio = 0.9"))
    for b in (1, 8):
        assert f"[redo] latency plan batch {b}:" in text, text
        assert f"[skip] prune guided batch {b}" in text, text
        # remade from the earlier plan's own timings: the same models, nothing timed again
        assert re.search(rf"\[plan\] batch {b}: [1-9]\d* timings read .*, 0 measured", text), text
    for step in ("finetune guided-b1 seed 0", "finetune peer-b8 seed 1", "latency"):
        assert f"[skip] {step}" in text, (step, text)
    assert text.count("[step]") == 2, text  # the two plans, and nothing else


def test_goals_models_reload_without_flags(goals_run):
    run, _ = goals_run
    for name in ("guided-b1-seed1", "peer-b8-seed0"):
        model, ck = load_model(run / "finetune" / f"{name}.pth")
        assert ck["arch"]["channels"] and "masks" not in ck


def test_pruned_models_distil_from_dense_and_the_control_learns_from_labels(goals_run):
    run, res = goals_run
    for name in ("guided-b1-seed0", "peer-b8-seed1"):
        meta = load_model(run / "finetune" / f"{name}.pth")[1]["meta"]
        assert meta["config"]["distill"] == 0.5 and meta["teacher"].endswith("dense/model.pth")
    control = load_model(run / "finetune" / "control-seed0.pth")[1]["meta"]
    assert control["config"]["distill"] == 0.0 and "teacher" not in control
    # one teacher: its logits saved once per seed and epoch (1 epoch here), then shared
    logits = sorted(p.name.split("-")[-1] for p in (run / "finetune" / "teacher-logits").iterdir())
    assert logits == ["epoch0.pt", "epoch0.pt"]
    assert "its logits computed once per seed" in (run / "report.md").read_text()
    for b in (1, 8):  # the plans kept every group near the uniform ratio, on the recipe's grid
        plan = res["plans"][f"guided-b{b}"]
        u = plan["band"]["uniform_ratio"]
        ratios = plan.get("plan_before_widening", plan["plan"]).values()
        assert all(u - 0.3 - 1e-9 < r < u + 0.3 + 1e-9 for r in ratios)
        assert all(abs(r * 10 - round(r * 10)) < 1e-9 for r in ratios)


def test_a_target_can_round_its_channel_counts_its_own_way(goals_run):
    run, res = goals_run
    b1, b8 = res["plans"]["guided-b1"], res["plans"]["guided-b8"]
    assert b1["round_to"] is None and b8["round_to"] == 2
    kept = load_model(run / "pruned" / "guided-b8.pth")[1]["meta"]["kept_channels"]
    assert kept == b8["channels"] and all(c % 2 == 0 for c in kept.values())
    report = (run / "report.md").read_text()
    assert "rounded per batch size: not rounded at batch 1, multiples of 2 at batch 8" in report


def test_a_target_can_widen_its_plan_where_the_measured_speedup_allows(goals_run):
    run, res = goals_run
    b1, b8 = res["plans"]["guided-b1"], res["plans"]["guided-b8"]
    assert "widened" not in b8
    assert b1["widened"], "the MACs clock leaves room: some group must have been widened"
    dense = load_model(run / "dense" / "model.pth")[0]
    full = {n: g["channels"] for n, g in channel_groups(dense).items()}
    before = {n: kept_channels(full[n], r) for n, r in b1["plan_before_widening"].items()}
    after = b1["channels"]
    assert all(after[n] >= before[n] for n in before) and after != before  # only wider
    assert b1["measured_speedup"] >= b1["speedup_target"]
    assert all(r["measured_speedup"] >= b1["speedup_target"] for r in b1["widened"])
    last = b1["widened"][-1]
    assert b1["channels"][last["group"]] == last["channels"]
    kept = load_model(run / "pruned" / "guided-b1.pth")[1]["meta"]["kept_channels"]
    assert kept == b1["channels"]
    assert "then at batch 1 groups widened again" in (run / "report.md").read_text()


def test_recalibrate_bn_sets_running_stats_to_the_calibration_images():
    from prunelab.batchnorm import recalibrate_bn

    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, bias=False), torch.nn.BatchNorm2d(4)).eval()
    m[1].running_mean.fill_(5.0)  # stale statistics
    x = torch.randint(0, 256, (512, 3, 8, 8), dtype=torch.uint8)
    recalibrate_bn(m, x, batch_size=256)
    with torch.no_grad():
        pre = m[0](x.float() / 255)
    assert torch.allclose(m[1].running_mean, pre.mean(dim=(0, 2, 3)), atol=1e-5)
    assert not m.training and m[1].momentum == 0.1  # left as found
    assert m[1].num_batches_tracked == 2


def test_scan_with_calibration_is_recalibrate_then_evaluate():
    from prunelab.batchnorm import recalibrate_bn
    from prunelab.channels import channel_scan
    from prunelab.evaluation import evaluate

    m = vgg()
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (64,), generator=g)
    cal = torch.randint(0, 256, (128, 3, 32, 32), dtype=torch.uint8, generator=g)
    res = channel_scan(m, x, y, ratios=[0.5], groups=["backbone.conv2"], calibrate=cal)
    probe = copy.deepcopy(m)
    prune_channels(probe, {"backbone.conv2": 0.5})
    recalibrate_bn(probe, cal)
    want = evaluate(probe, x, y, num_classes=10)["accuracy"]
    assert res["groups"]["backbone.conv2"]["accuracy"] == [pytest.approx(float(want))]
    assert res["bn_recalibrated_on"] == 128
    # the drops' reference is the dense model re-estimated the same way, not as it is
    ref = recalibrate_bn(copy.deepcopy(m), cal)
    assert res["reference_accuracy"] == pytest.approx(float(evaluate(ref, x, y)["accuracy"]))
    assert res["dense_accuracy"] == pytest.approx(float(evaluate(m, x, y)["accuracy"]))


def test_scan_recovers_each_probe_before_calibrating_and_scoring_it():
    """recover runs once per pruned probe, on the pruned copy, before its BatchNorm
    statistics are re-estimated: a probe scores as recovered. It also runs once on a copy
    of the dense model, first, so the drops' reference gets the same treatment."""
    from prunelab.batchnorm import recalibrate_bn
    from prunelab.channels import channel_scan
    from prunelab.evaluation import evaluate

    m = vgg()
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (64,), generator=g)
    cal = torch.randint(0, 256, (128, 3, 32, 32), dtype=torch.uint8, generator=g)
    seen = []

    def recover(probe):  # a stand-in fine-tune: rescale the classifier, remember the shape
        seen.append(probe.backbone.conv2.out_channels)
        with torch.no_grad():
            probe.classifier.weight.mul_(-1.0)

    res = channel_scan(
        m, x, y, ratios=[0.25, 0.5], groups=["backbone.conv2"], calibrate=cal, recover=recover
    )
    c = m.backbone.conv2.out_channels
    assert seen == [c, c - round(c * 0.25), c - round(c * 0.5)] and res["recovered"] is True
    probe = copy.deepcopy(m)
    prune_channels(probe, {"backbone.conv2": 0.5})
    recover(probe)
    recalibrate_bn(probe, cal)
    want = evaluate(probe, x, y, num_classes=10)["accuracy"]
    assert res["groups"]["backbone.conv2"]["accuracy"][1] == pytest.approx(float(want))
    ref = copy.deepcopy(m)
    recover(ref)
    recalibrate_bn(ref, cal)
    assert res["reference_accuracy"] == pytest.approx(float(evaluate(ref, x, y)["accuracy"]))
    assert m.backbone.conv2.out_channels == c  # the caller's model is untouched


def test_recovery_is_a_short_fine_tune_on_seeded_training_images():
    from types import SimpleNamespace

    from prunelab.app.steps import recovery, recovery_config
    from prunelab.train import TrainConfig

    g = torch.Generator().manual_seed(0)
    splits = SimpleNamespace(
        train_x=torch.randint(0, 256, (96, 3, 32, 32), dtype=torch.uint8, generator=g),
        train_y=torch.randint(0, 10, (96,), generator=g),
    )
    ft = TrainConfig(epochs=4, batch_size=32, lr=0.1, schedule="cosine", distill=0.5)
    cfg = recovery_config(ft, 0.05)
    assert (cfg.epochs, cfg.lr, cfg.schedule, cfg.distill) == (1, 0.05, "constant", 0.0)
    assert cfg.batch_size == 32 and ft.epochs == 4  # the table's own settings, not changed
    assert recovery(splits, 0, cfg, None) is None and recovery(splits, 64, None, None) is None
    a, b = vgg(), vgg()
    recover = recovery(splits, 64, cfg, None)
    recover(a)
    recover(b)
    w0 = vgg().backbone.conv1.weight
    assert not torch.equal(a.backbone.conv1.weight, w0)  # it trained
    assert torch.equal(a.backbone.conv1.weight, b.backbone.conv1.weight)  # same for each probe


@pytest.mark.parametrize(
    "acc, speed, words",
    [
        (0.90, 3.0, "prunelab at least as accurate and as fast"),
        (0.90, 2.0, "prunelab at least as accurate, the peer faster"),
        (0.80, 3.0, "the peer more accurate, prunelab faster"),
        (0.80, 2.0, "peer ahead on both"),
    ],
)
def test_peer_verdict_says_which_side_is_ahead(acc, speed, words):
    from prunelab.app.goals_flow import peer_words

    v = {"accuracy_mean": acc, "speedup": speed, "peer_accuracy_mean": 0.85, "peer_speedup": 2.5}
    v["beats_peer"] = acc >= 0.85 and speed >= 2.5
    assert peer_words(v) == words


def test_paired_rounds_in_words_and_absent_from_older_results():
    from prunelab.app.goals_flow import rounds_words

    p = {"rounds": 30, "a_faster": 14, "p_value": 0.8555, "verdict": "tied"}
    assert rounds_words(p) == (
        "; in the same 30 timed rounds prunelab was faster in 14: "
        "a speed difference within noise (sign test p = 0.86)"
    )
    assert "slower beyond noise" in rounds_words({**p, "a_faster": 5, "verdict": "slower"})
    assert rounds_words(None) == ""  # a latency step written before rows kept their rounds


def test_rank_energy_reaches_the_plans_only_when_set(tmp_path):
    from prunelab.app.goals_flow import plan_options

    (tmp_path / "r.toml").write_text(GOALS.replace("step = 0.1", "step = 0.1\nrank_energy = 0.9"))
    g = load_recipe(tmp_path / "r.toml")["goals"]
    assert plan_options(g, g["targets"][0])["rank_energy"] == 0.9
    (tmp_path / "s.toml").write_text(GOALS)
    plain = load_recipe(tmp_path / "s.toml")["goals"]
    assert "rank_energy" not in plan_options(plain, plain["targets"][0])  # old plans stay


def test_rank_energy_plans_cut_the_first_conv_of_the_full_width_vgg_first(monkeypatch):
    m = build_model("vgg", {"width": 1.0})
    fake_latency(monkeypatch)
    kw = {"batch_size": 1, "importance": "group", "round_to": 16, "band": 0.0, "step": 0.01}
    plain = lp.latency_target_plan(m, flat_scan(m), 3.0, **kw)
    floored = lp.latency_target_plan(m, flat_scan(m), 3.0, rank_energy=0.9, **kw)
    assert plain["channels"]["backbone.conv0"] > 16 == floored["channels"]["backbone.conv0"]
    assert floored["rank_floors"]["energy"] == 0.9
    assert floored["reached"] and plain["reached"]
