"""Latency measurement: result shape, interleaving, ratios, thread restore, errors, layer timing.

No timing thresholds: where exact numbers are checked, a fake clock makes them exact."""

from __future__ import annotations

import pytest
import torch
from model_matrix import MATRIX
from torch import nn

from prunelab import latency
from prunelab.errors import PrunelabError
from prunelab.latency import layer_latency, measure_latency
from prunelab.latency_figure import figure_title
from prunelab.latency_report import (
    format_latency_table,
    p_text,
    paired_rounds,
    settings_line,
)
from prunelab.models import VGG, resnet20

FAST = {"warmup": 0, "reps": 2, "min_seconds": 0}
CALLS: list[tuple[str, int]] = []  # module level: a model's deepcopy still appends here
CLOCK = [0.0]


class Recorder(nn.Module):
    """Appends (tag, batch size) to CALLS on every forward."""

    def __init__(self, tag: str):
        super().__init__()
        self.tag = tag
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        CALLS.append((self.tag, x.shape[0]))
        return self.fc(x)


class Costly(nn.Module):
    """Advances the fake clock by `ms` per forward: a model whose latency is known exactly."""

    def __init__(self, ms: float):
        super().__init__()
        self.ms = ms
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        CLOCK[0] += self.ms / 1000
        return self.fc(x)


@pytest.fixture
def fake_clock(monkeypatch):
    CLOCK[0] = 0.0
    monkeypatch.setattr(latency, "perf_counter", lambda: CLOCK[0])


def test_result_structure_and_settings():
    models = {"dense": VGG(width=0.125), "small": VGG(width=0.0625)}
    r = measure_latency(models, batch_sizes=(1, 3), threads=1, **FAST)
    assert r["baseline"] == "dense" and r["models"] == ["dense", "small"]
    assert [(row["model"], row["batch_size"]) for row in r["rows"]] == [
        ("dense", 1), ("small", 1), ("dense", 3), ("small", 3),
    ]  # fmt: skip
    for row in r["rows"]:
        assert row["reps"] == 2
        assert row["min_ms"] <= row["p25_ms"] <= row["median_ms"] <= row["p75_ms"] <= row["max_ms"]
        assert row["iqr_ms"] == pytest.approx(row["p75_ms"] - row["p25_ms"])
        assert row["ms_per_image"] == pytest.approx(row["median_ms"] / row["batch_size"])
        assert row["images_per_s"] == pytest.approx(1000 * row["batch_size"] / row["median_ms"])
    s = r["settings"]
    assert s["threads"] == 1 and s["batch_sizes"] == [1, 3] and s["dtype"] == "fp32"
    assert s["warmup"] == 0 and s["reps"] == 2 and s["device"] == "cpu" and s["fold_bn"] is True
    assert s["torch"] == str(torch.__version__) and s["cpu"]
    assert s["input_shapes"] == {"dense": [3, 32, 32], "small": [3, 32, 32]}
    # a chart names the processor that timed it (figures differ between CPUs)
    assert figure_title(s).endswith(f", {s['cpu']}") and "1 threads" in figure_title(s)
    assert figure_title({**s, "device": "cuda:0"}).endswith(", cuda:0")


@pytest.mark.parametrize("primed", [False, True])
def test_models_are_interleaved_in_rotated_order(primed):
    CALLS.clear()
    models = {t: Recorder(t) for t in "abc"}
    kw = {"warmup": 1, "reps": 3, "min_seconds": 0, "primed": primed}
    r = measure_latency(models, input_shape=(4,), batch_sizes=(1,), **kw)
    calls = [tag for tag, batch in CALLS if batch == 1]
    warm, rounds = calls[:3], calls[3:]
    assert warm == ["a", "b", "c"]
    order = ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert rounds == ([t for t in order for _ in "xy"] if primed else order)
    assert r["settings"]["primed"] is primed and ("untimed" in r["settings"]["order"]) is primed
    assert (", primed" in settings_line(r["settings"])) is primed


class Cached(nn.Module):
    """4 ms per forward, 1 ms when it was also the last model called: weights left in cache."""

    last: list[int] = []

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        CLOCK[0] += (1.0 if Cached.last == [id(self.fc)] else 4.0) / 1000
        Cached.last[:] = [id(self.fc)]
        return self.fc(x)


@pytest.mark.parametrize("primed, ms", [(True, 1.0), (False, 4.0)])
def test_a_primed_call_finds_its_own_model_in_cache(fake_clock, primed, ms):
    """Timed cold, a model's time depends on what ran before it; primed, only on itself."""
    models = {"a": Cached(), "b": Cached(), "c": Cached()}
    r = measure_latency(
        models, input_shape=(4,), batch_sizes=(1,), warmup=1, reps=4, min_seconds=0,
        primed=primed, fold_bn=False,
    )  # fmt: skip
    assert [row["median_ms"] for row in r["rows"]] == pytest.approx([ms] * 3)


def test_min_seconds_adds_rounds(fake_clock):
    models = {"a": Costly(15.625)}  # 1/64 s: exact in binary, so the sums are exact
    r = measure_latency(
        models, input_shape=(4,), batch_sizes=(1,), warmup=0, reps=2, min_seconds=0.125
    )
    assert r["rows"][0]["reps"] == 8  # rounds added until the timed ones reach 125 ms


def test_ratios_against_first_model(fake_clock):
    models = {"dense": Costly(4.0), "pruned": Costly(1.0), "wider": Costly(8.0)}
    r = measure_latency(models, input_shape=(4,), batch_sizes=(1, 2), **FAST)
    by = {(row["model"], row["batch_size"]): row for row in r["rows"]}
    for b in (1, 2):
        assert by[("dense", b)]["median_ms"] == pytest.approx(4.0)
        assert by[("dense", b)]["ratio"] == pytest.approx(1.0)
        assert by[("pruned", b)]["ratio"] == pytest.approx(0.25)
        assert by[("pruned", b)]["speedup"] == pytest.approx(4.0)
        assert by[("wider", b)]["ratio"] == pytest.approx(2.0)
    assert by[("pruned", 2)]["ms_per_image"] == pytest.approx(0.5)
    table = format_latency_table(r)
    assert "speed-up vs dense" in table and "| pruned | 1 | 1.00 |" in table
    assert "4.00x" in table and "0.50x" in table
    assert len([ln for ln in table.splitlines() if ln.startswith("| ")]) == 1 + 6


def test_rows_keep_every_round_and_pair_them(fake_clock):
    models = {"dense": Costly(4.0), "pruned": Costly(1.0), "same": Costly(4.0)}
    r = measure_latency(models, input_shape=(4,), batch_sizes=(1,), warmup=0, reps=6, min_seconds=0)
    for row in r["rows"]:
        assert row["times_ms"] == pytest.approx([row["median_ms"]] * 6)
    p = paired_rounds(r, "pruned", "dense", 1)
    assert p["rounds"] == 6 and p["a_faster"] == 6 and p["median_ratio"] == pytest.approx(4.0)
    assert p["p_value"] == pytest.approx(2 / 64) and p["verdict"] == "faster"
    assert paired_rounds(r, "dense", "pruned", 1)["verdict"] == "slower"
    table = format_latency_table(r)
    assert "| faster in (rounds) |" in table and "| 4.00x | 6/6 |" in table
    assert "| 1.00x | 0/6, noise |" in table  # same time every round: nothing to tell apart
    old = {**r, "rows": [{k: v for k, v in x.items() if k != "times_ms"} for x in r["rows"]]}
    assert "faster in" not in format_latency_table(old)  # results written before rows kept rounds


def _pair(a: list[float], b: list[float]) -> dict:
    rows = [{"model": m, "batch_size": 64, "times_ms": t} for m, t in (("a", a), ("b", b))]
    return {"rows": rows}


@pytest.mark.parametrize(
    "wins, p, verdict",
    [(5, 1.0, "tied"), (9, 22 / 1024, "faster"), (1, 22 / 1024, "slower"), (8, 112 / 1024, "tied")],
)
def test_paired_rounds_is_an_exact_sign_test(wins, p, verdict):
    """10 rounds of 100 ms for b; a takes 99 ms in `wins` of them and 101 ms in the rest."""
    a = [99.0] * wins + [101.0] * (10 - wins)
    got = paired_rounds(_pair(a, [100.0] * 10), "a", "b", 64)
    assert got["rounds"] == 10 and got["a_faster"] == wins
    assert got["p_value"] == pytest.approx(p) and got["verdict"] == verdict


def test_p_value_below_float_range_is_not_printed_as_zero():
    """1,200 rounds all won: the exact p (2 / 2**1200) is below the smallest float."""
    got = paired_rounds(_pair([1.0] * 1200, [2.0] * 1200), "a", "b", 64)
    assert got["p_value"] == 0.0 and got["verdict"] == "faster"
    assert p_text(got["p_value"]) == "p < 1e-300"
    assert p_text(22 / 1024) == "p = 0.021"


def test_paired_rounds_needs_both_models_rounds():
    assert paired_rounds(_pair([1.0, 2.0], [1.0]), "a", "b", 64) is None  # not the same rounds
    assert paired_rounds(_pair([1.0], [2.0]), "a", "b", 1) is None  # no such batch size
    old = {"rows": [{"model": "a", "batch_size": 1}, {"model": "b", "batch_size": 1}]}
    assert paired_rounds(old, "a", "b", 1) is None  # written before rows kept their rounds
    tied = paired_rounds(_pair([3.0, 3.0], [3.0, 3.0]), "a", "b", 64)
    assert tied["a_faster"] == 0 and tied["p_value"] == 1.0 and tied["verdict"] == "tied"


def test_first_model_is_the_reference_whatever_it_is(fake_clock):
    r = measure_latency({"pruned": Costly(1.0), "dense": Costly(4.0)}, input_shape=(4,), **FAST)
    assert r["baseline"] == "pruned"
    assert [row["ratio"] for row in r["rows"] if row["model"] == "dense"] == pytest.approx(
        [4.0] * 2
    )


def test_threads_set_and_restored():
    before = torch.get_num_threads()
    want = 1 if before != 1 else 2
    r = measure_latency({"m": VGG(width=0.0625)}, batch_sizes=(1,), threads=want, **FAST)
    assert r["settings"]["threads"] == want
    assert torch.get_num_threads() == before
    with pytest.raises(PrunelabError):
        measure_latency({"bad": nn.Linear(5, 2)}, input_shape=(3,), threads=want, **FAST)
    assert torch.get_num_threads() == before


def test_callers_model_is_not_changed():
    model = resnet20(width=0.5)
    model.train()
    weight = model.conv1.weight.detach().clone()
    measure_latency({"m": model}, batch_sizes=(2,), **FAST)
    assert model.training
    assert isinstance(model.bn1, nn.BatchNorm2d)  # not folded in place
    assert model.conv1.weight.is_contiguous()
    assert torch.equal(model.conv1.weight, weight)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"batch_sizes": (1, 0)}, "batch size must be an integer >= 1, got 0"),
        ({"batch_sizes": ()}, "at least one batch size"),
        ({"threads": 0}, "threads must be an integer >= 1, got 0"),
        ({"reps": 0}, "reps must be an integer >= 1"),
        ({"warmup": -1}, "warmup must be an integer >= 0"),
        ({"device": "tpu"}, "device 'tpu'"),
        ({"input_shape": (3, 0, 32)}, "input_shape must be positive integers"),
    ],
)
def test_bad_settings_are_one_line_errors(kwargs, words):
    with pytest.raises(PrunelabError, match=words) as e:
        measure_latency({"m": VGG(width=0.0625)}, **{**FAST, **kwargs})
    assert "\n" not in str(e.value)


def test_no_models_and_a_failing_model_are_refused():
    with pytest.raises(PrunelabError, match="no models to time"):
        measure_latency({}, **FAST)
    models = {"ok": VGG(width=0.0625), "mlp": nn.Sequential(nn.Flatten(), nn.Linear(10, 2))}
    with pytest.raises(PrunelabError, match=r"model 'mlp' failed on a random input shaped") as e:
        measure_latency(models, **FAST)
    assert "\n" not in str(e.value)
    with pytest.raises(PrunelabError, match="expected an nn.Module"):
        measure_latency({"x": "not a model"}, **FAST)


def test_format_refuses_what_is_not_a_result():
    with pytest.raises(PrunelabError, match="not a latency result"):
        format_latency_table({"models": []})


@pytest.mark.parametrize("case", MATRIX[:4], ids=str)
def test_layer_latency_names_every_conv_and_linear(case):
    model = case.build()
    names = [
        n for n, m in model.named_modules() if isinstance(m, nn.modules.conv._ConvNd | nn.Linear)
    ]
    got = layer_latency(model, input_shape=case.input_shape, reps=2, warmup=1)
    assert list(got) == names
    assert all(isinstance(v, float) and v > 0 for v in got.values())


def test_layer_latency_of_an_unused_layer_is_zero_and_bad_batch_refused():
    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.spare = nn.Linear(4, 2), nn.Linear(4, 2)

        def forward(self, x):
            return self.used(x)

    got = layer_latency(Unused(), input_shape=(4,), reps=2, warmup=0)
    assert got["spare"] == 0.0 and got["used"] > 0
    with pytest.raises(PrunelabError, match="batch size must be an integer >= 1"):
        layer_latency(Unused(), input_shape=(4,), batch_size=0)


ZEN3 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 1
model name\t: AMD EPYC
flags\t\t: fpu sse2 avx fma avx2 bmi2

processor\t: 1
model name\t: another CPU
"""


@pytest.mark.parametrize(
    "flags, vector",
    [
        ("avx2", "AVX2"),
        ("avx2 avx512f avx512_bf16", "AVX-512 BF16"),
        ("avx2 avx512f", "AVX-512"),
        ("avx2 avx512f avx512_bf16 amx_tile amx_bf16", "AMX"),
        ("sse2", None),
    ],
)
def test_a_generic_cpu_name_is_told_apart_by_family_model_and_vector_unit(flags, vector):
    """Two machines that both call themselves "AMD EPYC" ran at 2.8x different batch-1 speeds:
    the name alone cannot say which one a latency figure came from."""
    text = ZEN3.replace("fpu sse2 avx fma avx2 bmi2", flags)
    want = "AMD EPYC, family 25 model 1" + (f", {vector}" if vector else "")
    assert latency.describe_cpu(text) == want
    assert latency.describe_cpu("") == "" and latency.describe_cpu("flags: avx2\n") == ""
