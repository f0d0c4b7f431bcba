"""Which kernel PyTorch runs for each convolution and Linear layer, read from its profiler.

Why: a pruned layer is not always faster. At batch 1 PyTorch sends a convolution whose input
holds at most 20,480 values to ATen's own im2col kernel instead of oneDNN, and on some CPUs
that kernel is much slower for mid-size layers; per-layer timings show that a layer is slow,
this shows why. The names come from torch.profiler, not from re-deriving ATen's rules.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from .latency import LAYER_KINDS, _random_input, checked_input_shape, prepare, torch_threads

# the op that does the work, as the profiler names it -> what a reader knows it as
KERNELS = {
    "aten::mkldnn_convolution": "oneDNN",
    "aten::_slow_conv2d_forward": "ATen im2col",
    "aten::slow_conv3d_forward": "ATen im2col",
    "aten::_nnpack_spatial_convolution": "NNPACK",
    "aten::slow_conv_dilated2d": "ATen dilated",
    "aten::slow_conv_dilated3d": "ATen dilated",
    "aten::cudnn_convolution": "cuDNN",
    "aten::miopen_convolution": "MIOpen",
    "aten::addmm": "BLAS addmm",
    "aten::mm": "BLAS mm",
    "aten::matmul": "BLAS matmul",
}


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """The profiler's C++ side prints start/stop lines to the process's stderr; keep them off
    the user's terminal while one layer is profiled (Python exceptions still propagate)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _kernel_of(events: list[str]) -> str:
    for name in events:
        if name in KERNELS:
            return KERNELS[name]
    return "other"


def layer_kernels(
    model: nn.Module,
    input_shape: Sequence[int] | None = None,
    batch_size: int = 1,
    threads: int | None = None,
    fold_bn: bool = True,
    channels_last: bool = True,
) -> dict[str, str]:
    """{module name: kernel} for every conv and Linear module, in model order, prepared the way
    prunelab times models (eval mode, BatchNorm folded, channels-last). Each layer is run once
    more on the input it saw in a forward pass of `batch_size` random images, under the
    profiler. A module that never ran is "not run"; an unrecognised op is "other"."""
    shape = checked_input_shape(model, input_shape)
    dev = torch.device("cpu")
    with torch_threads(threads):
        work = prepare("the model", model, shape, dev, fold_bn, channels_last, False)
        layers = [(n, m) for n, m in work.named_modules() if isinstance(m, LAYER_KINDS)]
        seen: dict[str, tuple[Any, ...]] = {}
        handles = [
            m.register_forward_pre_hook(lambda _m, inp, n=n: seen.setdefault(n, inp))
            for n, m in layers
        ]
        x = _random_input(shape, batch_size, dev, seed=1)
        if channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        try:
            with torch.inference_mode():
                work(x)
        finally:
            for h in handles:
                h.remove()
        out: dict[str, str] = {}
        for name, module in layers:
            if name not in seen:
                out[name] = "not run"
                continue
            with torch.inference_mode(), _quiet_stderr():
                prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
                with prof:
                    module(*seen[name])
            out[name] = _kernel_of([e.name for e in prof.events()])
    return out


def layer_breakdown(
    models: dict[str, nn.Module],
    batch_sizes: Sequence[int] = (1,),
    input_shape: Sequence[int] | None = None,
    threads: int | None = None,
    reps: int = 20,
    warmup: int = 5,
    fold_bn: bool = True,
) -> dict[str, Any]:
    """Per batch size, per model, per conv/Linear layer: MACs per image, the kernel it runs and
    its median time (hook-timed, so approximate; see latency.layer_latency). The first model is
    the baseline the layers are compared with, by name."""
    from .accounting import count_macs
    from .latency import layer_latency

    out: dict[str, Any] = {"baseline": next(iter(models)), "batch_sizes": list(batch_sizes)}
    shapes = {name: checked_input_shape(m, input_shape) for name, m in models.items()}
    # MACs per image do not depend on the batch size: traced once per model
    per_layer = {name: count_macs(m, shapes[name])["per_layer"] for name, m in models.items()}
    for b in batch_sizes:
        per_model = {}
        for name, model in models.items():
            shape, macs = shapes[name], per_layer[name]
            ms = layer_latency(
                model,
                shape,
                batch_size=b,
                reps=reps,
                warmup=warmup,
                threads=threads,
                fold_bn=fold_bn,
            )
            kern = layer_kernels(model, shape, batch_size=b, threads=threads, fold_bn=fold_bn)
            per_model[name] = {
                layer: {"macs": int(macs.get(layer, 0)), "kernel": kern[layer], "ms": t}
                for layer, t in ms.items()
            }
        out[str(b)] = per_model
    return out
