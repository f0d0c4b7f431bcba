"""Measured latency of models side by side, so a pruned model's speed-up is a number, not a guess.

Pruning's MAC count says what a model could save; the wall clock says what it does save on a
given CPU. Two rules make the numbers comparable:

- Interleaving: every repetition runs each model once, in an order rotated by one each round,
  so a dense and a pruned model share the same machine conditions (a background job or a
  frequency change hits both, not just whichever ran second).
- Warm-up first (WARMUP rounds by default): oneDNN builds and caches its convolution kernels on
  the first call for a shape, and caches and clocks settle over the next few; timing those
  calls would charge set-up cost to whichever model ran first.
- Primed calls (the default): each timed call comes right after an untimed call of the same
  model, so it finds the CPU caches as a model served on its own leaves them. Without it a
  model's time depends on the other models of the run: a pruned VGG whose 13 MB of weights
  fit in cache timed 2.69x against its dense model when timed with two other models and
  2.84x primed (docs/goals/findings.md), and a two-model run, which calls it twice in a row
  at every other round boundary, sat in between. `primed=False` times every call cold.

Results are medians with their spread (min, max, quartiles), per model and batch size, plus the
ratio of each median to the first model's, which is taken as the dense reference. Each row also
keeps every round's time, so `latency_report.paired_rounds` can tell whether two close medians
differ by more than noise. The same result shape comes from
`prunelab.onnx_export.onnx_latency`, so one table prints both.
`layer_latency` times each conv/Linear module for latency-targeted plans.
"""

from __future__ import annotations

import copy
import functools
import os
import platform
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from time import perf_counter  # module-level name: tests drive a fake clock
from typing import Any

import torch
from torch import nn

from .errors import PrunelabError
from .evaluation import autocast, resolve_device
from .fold import fold_batchnorm
from .models import input_shape_of

WARMUP = 5  # rounds per batch size before timing: oneDNN kernel creation + cache/clock settling
REPS = 20  # least timed rounds per batch size
MIN_SECONDS = 1.0  # keep adding rounds until the timed rounds of one batch size took this long
MAX_REPS = 2000  # cap on rounds, for models that take microseconds
LAYER_KINDS = (nn.modules.conv._ConvNd, nn.Linear)
# the timing method steps and plan logs record, so a change of method redoes their timings
TIMING = "primed"

Runner = Callable[[], Any]


@functools.cache  # asked for by every timing; the CPU does not change within a process
def cpu_name() -> str:
    """The CPU as /proc/cpuinfo names it (describe_cpu), else platform.processor()."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    return describe_cpu(text) or platform.processor() or platform.machine()


def describe_cpu(cpuinfo: str) -> str:
    """The first CPU's model name, family/model and widest vector unit. Cloud machines often
    call themselves only "AMD EPYC", and speed-ups differ between its generations (AVX2
    only, or AVX-512 with bf16): a latency figure must say which one it was measured on."""
    info: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            break  # the first processor's block is enough
        key, _, value = line.partition(":")
        info.setdefault(key.strip(), value.strip())
    name = info.get("model name", "")
    if not name:
        return ""
    parts = [name]
    if info.get("cpu family") and info.get("model"):
        parts.append(f"family {info['cpu family']} model {info['model']}")
    flags = set(info.get("flags", "").split())
    for flag, label in (
        ("amx_tile", "AMX"),
        ("avx512_bf16", "AVX-512 BF16"),
        ("avx512f", "AVX-512"),
        ("avx2", "AVX2"),
    ):
        if flag in flags:
            parts.append(label)
            break
    return ", ".join(parts)


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:200]


def _count(value: Any, what: str, low: int) -> int:
    """`value` as an int >= low, or a one-line PrunelabError naming `what`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise PrunelabError(f"{what} must be an integer >= {low}, got {value!r}")
    return value


def check_settings(
    batch_sizes: Sequence[int], threads: int | None, warmup: int, reps: int, min_seconds: float
) -> list[int]:
    """The batch sizes as a list; one-line PrunelabError for any setting out of range."""
    if isinstance(batch_sizes, int):
        batch_sizes = [batch_sizes]
    sizes = [_count(b, "batch size", 1) for b in batch_sizes]
    if not sizes:
        raise PrunelabError("batch sizes must name at least one batch size >= 1, got none")
    if threads is not None:
        _count(threads, "threads", 1)
    _count(warmup, "warmup", 0)
    _count(reps, "reps", 1)
    if isinstance(min_seconds, bool) or not isinstance(min_seconds, int | float) or min_seconds < 0:
        raise PrunelabError(f"min_seconds must be a number >= 0, got {min_seconds!r}")
    return sizes


def check_names(items: Mapping[str, Any], what: str) -> list[str]:
    if not isinstance(items, Mapping) or not items:
        raise PrunelabError(
            f"no {what} to time: pass a dict {{name: {what[:-1]}}} with at least one"
        )
    names = list(items)
    bad = [n for n in names if not isinstance(n, str) or not n]
    if bad:
        raise PrunelabError(f"{what} names must be non-empty text, got {bad[0]!r}")
    return names


@contextmanager
def torch_threads(threads: int | None) -> Iterator[int]:
    """torch.set_num_threads(threads) for the block, restored afterwards; yields the count used."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def interleaved_times(
    runners: Mapping[str, Runner],
    warmup: int,
    reps: int,
    min_seconds: float,
    primed: bool = True,
) -> dict[str, list[float]]:
    """Seconds per call of each runner, run in interleaved rounds with rotated order.

    Round r runs names[r % n:] + names[:r % n]. `warmup` untimed rounds first, then at least
    `reps` timed rounds, more until the timed calls add up to `min_seconds` (at most MAX_REPS).
    primed: each timed call follows an untimed call of the same runner (module docstring).
    """
    names = list(runners)
    times: dict[str, list[float]] = {n: [] for n in names}

    def order(r: int) -> list[str]:
        k = r % len(names)
        return names[k:] + names[:k]

    for r in range(warmup):
        for name in order(r):
            runners[name]()
    spent, r = 0.0, 0
    while r < reps or (spent < min_seconds and r < MAX_REPS):
        for name in order(r):
            if primed:
                runners[name]()
            t0 = perf_counter()
            runners[name]()
            dt = perf_counter() - t0
            times[name].append(dt)
            spent += dt
        r += 1
    return times


def order_text(primed: bool) -> str:
    """How the calls were ordered, as a result's settings state it."""
    text = "interleaved, rotated each round"
    return text + (", each timed call after an untimed one of the same model" if primed else "")


def _quantile(sorted_vals: list[float], q: float) -> float:
    """Linear-interpolated quantile of an already sorted list (q in [0, 1])."""
    pos = q * (len(sorted_vals) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_vals) - 1)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (pos - lo)


def summarize(seconds: list[float], batch_size: int) -> dict[str, Any]:
    """Median and spread of per-batch times, in milliseconds, plus per-image figures."""
    ms = sorted(s * 1000 for s in seconds)
    median = _quantile(ms, 0.5)
    p25, p75 = _quantile(ms, 0.25), _quantile(ms, 0.75)
    return {
        "median_ms": median,
        "ms_per_image": median / batch_size,
        "min_ms": ms[0],
        "max_ms": ms[-1],
        "p25_ms": p25,
        "p75_ms": p75,
        "iqr_ms": p75 - p25,
        "images_per_s": batch_size * 1000 / median if median > 0 else float("inf"),
        "reps": len(ms),
    }


def build_result(
    names: list[str],
    per_batch: dict[int, dict[str, list[float]]],
    settings: dict[str, Any],
) -> dict[str, Any]:
    """The result both measure_latency and onnx_latency return: settings, baseline, rows.

    ratio = this median / the first model's median at the same batch size (< 1: faster);
    speedup = its inverse."""
    rows = []
    for batch_size, times in per_batch.items():
        base = summarize(times[names[0]], batch_size)["median_ms"]
        for name in names:
            row = {"model": name, "batch_size": batch_size, **summarize(times[name], batch_size)}
            row["times_ms"] = [t * 1000 for t in times[name]]  # round order: pairs across models
            row["ratio"] = row["median_ms"] / base if base > 0 else float("nan")
            row["speedup"] = base / row["median_ms"] if row["median_ms"] > 0 else float("nan")
            rows.append(row)
    return {"baseline": names[0], "models": names, "settings": settings, "rows": rows}


def _random_input(
    shape: Sequence[int], batch: int, device: torch.device, seed: int
) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand((batch, *shape), generator=g).to(device)


def checked_input_shape(model: nn.Module, input_shape: Sequence[int] | None) -> tuple[int, ...]:
    """`input_shape`, else the model's recorded one; positive integers or one clear error."""
    shape = tuple(input_shape) if input_shape is not None else input_shape_of(model)
    if not shape or not all(
        isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape
    ):
        raise PrunelabError(
            f"input_shape must be positive integers such as (3, 32, 32), got {shape}"
        )
    return shape


def prepare(
    label: str,
    model: nn.Module,
    shape: tuple[int, ...],
    device: torch.device,
    fold_bn: bool,
    channels_last: bool,
    bf16: bool,
) -> nn.Module:
    """An eval-mode copy of `model` on `device`, BN folded when asked, checked on one input.

    A model that fails on a random input of its shape is refused here (`label` names it in the
    message, e.g. "model 'dense'"), before any
    timing starts. The caller's model is never changed."""
    if not isinstance(model, nn.Module):
        raise PrunelabError(f"{label} is a {type(model).__name__}, expected an nn.Module")
    work = copy.deepcopy(model).eval().to(device)
    probe = _random_input(shape, 2, device, 0)
    try:
        with torch.inference_mode(), autocast(device, bf16):
            work(probe)
    except Exception as e:
        raise PrunelabError(
            f"{label} failed on a random input shaped {(2, *shape)}: "
            f"{type(e).__name__}: {_first_line(e)}"
        ) from None
    if fold_bn:
        with torch.no_grad():
            work = fold_batchnorm(work, example=probe)
    if channels_last and len(shape) == 3:
        work = work.to(memory_format=torch.channels_last)
    return work.requires_grad_(False)


def _runner(
    model: nn.Module, x: torch.Tensor, device: torch.device, bf16: bool
) -> Callable[[], None]:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def run() -> None:
        with torch.inference_mode(), autocast(device, bf16):
            model(x)
        sync()

    return run


def measure_latency(
    models: Mapping[str, nn.Module],
    input_shape: Sequence[int] | None = None,
    batch_sizes: Sequence[int] = (1, 64),
    threads: int | None = None,
    warmup: int = WARMUP,
    reps: int = REPS,
    device: str | torch.device = "cpu",
    bf16: bool = False,
    channels_last: bool = True,
    fold_bn: bool = True,
    min_seconds: float = MIN_SECONDS,
    primed: bool = True,
) -> dict[str, Any]:
    """Time each model's forward, interleaved, per batch size; the first model is the reference.

    Eager PyTorch, eval mode, torch.inference_mode, fp32 (bf16=True: bf16 autocast), on a
    random input in [0, 1] of each model's own input shape (`input_shape_of`, or `input_shape`
    for all). BatchNorm is folded (prunelab.fold) because that is how prunelab evaluates;
    fold_bn=False times the model as it is. Each batch size gets `warmup` untimed rounds, then
    at least `reps` timed rounds and more until they took `min_seconds`; each round runs every
    model once in a rotated order, each timed call right after an untimed one of the same model
    unless primed=False. `threads` sets torch.set_num_threads for the run only.

    Returns {"baseline", "models", "settings", "rows"}: one row per model and batch size with
    median_ms, ms_per_image, min/max/p25/p75/iqr (ms), images_per_s, reps, ratio (median over
    the first model's), speedup (its inverse) and times_ms (every timed round, in round order,
    so `latency_report.paired_rounds` can compare two models round by round). Input conversion
    (uint8 -> float, normalisation) is not timed: it is the same for every model.
    """
    names = check_names(models, "models")
    sizes = check_settings(batch_sizes, threads, warmup, reps, min_seconds)
    dev = resolve_device(device)
    shapes = {n: checked_input_shape(models[n], input_shape) for n in names}
    with torch_threads(threads) as used:
        work = {
            n: prepare(f"model {n!r}", models[n], shapes[n], dev, fold_bn, channels_last, bf16)
            for n in names
        }
        per_batch: dict[int, dict[str, list[float]]] = {}
        for b in sizes:
            runners = {}
            for i, n in enumerate(names):
                x = _random_input(shapes[n], b, dev, seed=i + 1)
                if channels_last and x.dim() == 4:
                    x = x.contiguous(memory_format=torch.channels_last)
                runners[n] = _runner(work[n], x, dev, bf16)
            per_batch[b] = interleaved_times(runners, warmup, reps, min_seconds, primed)
    settings = {
        "runtime": "pytorch eager",
        "device": str(dev),
        "dtype": "bf16 autocast" if bf16 else "fp32",
        "threads": used,
        "batch_sizes": sizes,
        "warmup": warmup,
        "reps": reps,
        "min_seconds": min_seconds,
        "fold_bn": fold_bn,
        "channels_last": channels_last,
        "input_shapes": {n: list(s) for n, s in shapes.items()},
        "order": order_text(primed),
        "primed": primed,
        "torch": str(torch.__version__),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
    }
    return build_result(names, per_batch, settings)


def layer_latency(
    model: nn.Module,
    input_shape: Sequence[int] | None = None,
    batch_size: int = 1,
    reps: int = REPS,
    warmup: int = WARMUP,
    threads: int | None = None,
    fold_bn: bool = True,
    channels_last: bool = True,
) -> dict[str, float]:
    """{module name: median ms per forward} of every conv and Linear module, in model order.

    Timed with forward pre-/post-hooks reading time.perf_counter around each module call, so
    the numbers are approximate: they include hook overhead, leave out everything between
    modules (activations, pooling, adds, the folded BatchNorm's slot) and therefore sum to less
    than the whole forward. Good enough to rank layers for a latency-targeted plan, which
    should store this dict (and the settings it was measured with) so the plan is repeatable.
    A module called twice per forward gets the sum; one never called gets 0.0.
    """
    check_settings([batch_size], threads, warmup, reps, 0.0)
    shape = checked_input_shape(model, input_shape)
    dev = torch.device("cpu")
    with torch_threads(threads):
        work = prepare("the model", model, shape, dev, fold_bn, channels_last, False)
        layers = [(n, m) for n, m in work.named_modules() if isinstance(m, LAYER_KINDS)]
        current: dict[str, float] = {}
        started: dict[int, float] = {}

        def pre(module: nn.Module, _inputs: Any) -> None:
            started[id(module)] = perf_counter()

        def post_for(name: str) -> Callable[..., None]:
            def post(module: nn.Module, _inputs: Any, _output: Any) -> None:
                dt = perf_counter() - started.pop(id(module), perf_counter())
                current[name] = current.get(name, 0.0) + dt

            return post

        handles = []
        for name, module in layers:
            handles.append(module.register_forward_pre_hook(pre))
            handles.append(module.register_forward_hook(post_for(name)))
        x = _random_input(shape, batch_size, dev, seed=1)
        if channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        samples: dict[str, list[float]] = {name: [] for name, _ in layers}
        try:
            with torch.inference_mode():
                for r in range(warmup + reps):
                    current.clear()
                    work(x)
                    if r >= warmup:
                        for name in samples:
                            samples[name].append(current.get(name, 0.0))
        finally:
            for h in handles:
                h.remove()
    return {name: _quantile(sorted(v), 0.5) * 1000 for name, v in samples.items()}
