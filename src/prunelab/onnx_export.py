"""ONNX export of a (pruned) model, a numerical check against PyTorch, and onnxruntime latency.

onnx, onnxscript and onnxruntime are an optional extra (`pip install 'prunelab[onnx]'`): they
are imported inside the functions, so this module imports without them and every function
says in one line what to install. onnx writes and checks the file, onnxscript is what torch's
default (dynamo) exporter translates with, onnxruntime runs the file for the check and timing.

Exporter: torch.onnx.export(dynamo=True), torch's default and supported exporter since 2.9. On
torch 2.13 it exports the registry VGG, resnet20 and MobileNetV2 and models with odd channel
counts (as channel pruning leaves them) with logits equal to PyTorch's to ~1e-7, with a truly
dynamic batch axis. The TorchScript exporter (dynamo=False) is deprecated and announced for
removal, so it is only the fallback when the dynamo export raises (e.g. a forward torch.export
cannot capture); the result says which one wrote the file and why.

The file holds the model as prunelab evaluates it: eval mode, BatchNorm folded, and the input
normalisation baked in, so it takes float images in [0, 1] (N x C x H x W, input "images")
and returns "logits". Metadata props record prunelab's input shape and normalisation.
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import PrunelabError
from .evaluation import normalizer, to_input
from .fileio import atomic_path
from .fold import fold_batchnorm, remaining_batchnorms
from .latency import (
    MIN_SECONDS,
    REPS,
    WARMUP,
    build_result,
    check_names,
    check_settings,
    checked_input_shape,
    cpu_name,
    interleaved_times,
    order_text,
)
from .models import input_shape_of, normalize_of
from .models.arch import normalize_problem

MISSING = (
    "ONNX export needs the optional packages: pip install 'prunelab[onnx]' "
    "(onnx, onnxscript, onnxruntime)"
)
INPUT, OUTPUT = "images", "logits"
ATOL = 1e-4  # times the logit scale (max |logit|, at least 1): fp32 exporters meet ~1e-6
META_SHAPE, META_NORM = "prunelab.input_shape", "prunelab.normalize"


def _require() -> tuple[Any, Any]:
    """(onnx, onnxruntime), or the one-line install hint when any optional package is missing."""
    try:
        import onnx
        import onnxruntime
        import onnxscript  # noqa: F401  # the dynamo exporter translates through it
    except ImportError:
        raise PrunelabError(MISSING) from None
    return onnx, onnxruntime


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:200]


class Normalized(nn.Module):
    """`model` on (x - mean) / std: the normalisation prunelab applies, inside the graph."""

    def __init__(self, model: nn.Module, norm: tuple[torch.Tensor, torch.Tensor] | None):
        super().__init__()
        self.model = model
        self.normalize = norm is not None
        if norm is not None:
            self.register_buffer("mean", norm[0].clone())
            self.register_buffer("std", norm[1].clone())

    def forward(self, x: torch.Tensor) -> Any:
        if self.normalize:
            x = (x - self.mean) / self.std
        return self.model(x)


def _norm_record(
    model: nn.Module, normalize: Mapping[str, Any] | None, shape: Sequence[int]
) -> dict[str, list[float]] | None:
    record = normalize_of(model) if normalize is None else dict(normalize)
    if record is None:
        return None
    problem = normalize_problem(record, shape[0] if len(shape) >= 2 else None)
    if problem:
        raise PrunelabError(f"normalize: {problem}, got {record!r}")
    return {"mean": [float(v) for v in record["mean"]], "std": [float(v) for v in record["std"]]}


def _norm_tensors(
    record: dict[str, list[float]] | None, shape: Sequence[int], device: Any = "cpu"
) -> tuple[torch.Tensor, torch.Tensor] | None:
    if record is None:
        return None
    return normalizer((record["mean"], record["std"]), (1, *shape), device)


def _device_of(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Hide the exporters' internal chatter (deprecation notes, missing torchvision ops)."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export")
            yield
    finally:
        logger.setLevel(level)


def _export_dynamo(
    model: nn.Module, x: torch.Tensor, tmp: Path, opset: int | None, dynamic: bool
) -> None:
    dims = ({0: torch.export.Dim("batch")},) if dynamic else None
    program = torch.onnx.export(
        model,
        (x,),
        dynamo=True,
        verbose=False,
        input_names=[INPUT],
        output_names=[OUTPUT],
        opset_version=opset,
        dynamic_shapes=dims,
    )
    program.save(str(tmp), external_data=False)  # one self-contained file (< 2 GB)


def _export_torchscript(
    model: nn.Module, x: torch.Tensor, tmp: Path, opset: int | None, dynamic: bool
) -> None:
    axes = {INPUT: {0: "batch"}, OUTPUT: {0: "batch"}} if dynamic else None
    torch.onnx.export(
        model,
        (x,),
        str(tmp),
        dynamo=False,
        input_names=[INPUT],
        output_names=[OUTPUT],
        opset_version=opset,
        dynamic_axes=axes,
    )


def export_onnx(
    model: nn.Module,
    path: str | Path,
    input_shape: Sequence[int] | None = None,
    normalize: Mapping[str, Any] | None = None,
    opset: int | None = None,
    batch_dynamic: bool = True,
) -> dict[str, Any]:
    """Write `model` as an ONNX file that takes float images in [0, 1], written atomically.

    BatchNorm is folded first (eval mode; the caller's model is not changed). The model's input
    normalisation (`normalize_of(model)`, or `normalize` = {"mean": [...], "std": [...]}) is
    baked into the graph as (x - mean) / std, so the file is fed images in [0, 1], N x C x H x W,
    exactly as prunelab feeds the model; input "images", output "logits". batch_dynamic: the
    batch axis is symbolic (any N); else the file is fixed to batch 1. opset: the exporter's
    default when None. Returns where and how it was written (exporter, opset, bytes, ...).
    """
    onnx, _ = _require()
    if not isinstance(model, nn.Module):
        raise PrunelabError(f"model is a {type(model).__name__}, expected an nn.Module")
    if opset is not None and (isinstance(opset, bool) or not isinstance(opset, int) or opset < 7):
        raise PrunelabError(
            f"opset must be an integer >= 7 (or None for the default), got {opset!r}"
        )
    shape = checked_input_shape(model, input_shape)
    record = _norm_record(model, normalize, shape)
    norm = _norm_tensors(record, shape)
    g = torch.Generator().manual_seed(0)
    x = torch.rand((2 if batch_dynamic else 1, *shape), generator=g)
    dev = _device_of(model)
    example = to_input(x.to(dev), False, _norm_tensors(record, shape, dev))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example)
    except Exception as e:
        raise PrunelabError(
            f"the model failed on a random input shaped {tuple(x.shape)}: "
            f"{type(e).__name__}: {_first_line(e)}"
        ) from None
    finally:
        model.train(was_training)
    folded = fold_batchnorm(model, example=example).cpu()  # the file is exported from the CPU
    wrapped = Normalized(folded, norm).eval()
    exporter, fallback = "dynamo", None
    with atomic_path(path) as tmp:
        with _quiet_exporter(), torch.no_grad():
            try:
                _export_dynamo(wrapped, x, tmp, opset, batch_dynamic)
            except Exception as e:
                fallback = f"dynamo exporter failed ({type(e).__name__}: {_first_line(e)})"
                exporter = "torchscript"
                try:
                    _export_torchscript(wrapped, x, tmp, opset, batch_dynamic)
                except Exception as e2:
                    raise PrunelabError(
                        f"ONNX export of the model failed: {fallback}; the TorchScript "
                        f"exporter too ({type(e2).__name__}: {_first_line(e2)})"
                    ) from None
        proto = onnx.load(str(tmp))
        try:
            onnx.checker.check_model(proto)
        except Exception as e:
            raise PrunelabError(
                f"the {exporter} exporter wrote an invalid ONNX model for {path}: {_first_line(e)}"
            ) from None
        meta = {META_SHAPE: json.dumps(list(shape)), META_NORM: json.dumps(record)}
        kept = [p for p in proto.metadata_props if p.key not in meta]
        del proto.metadata_props[:]
        proto.metadata_props.extend(kept)
        for key, value in meta.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(proto, str(tmp))
    if fallback:
        warnings.warn(f"{fallback}; wrote {path} with the TorchScript exporter", stacklevel=2)
    opsets = {o.domain: o.version for o in proto.opset_import}
    return {
        "path": str(path),
        "exporter": exporter,
        "fallback_reason": fallback,
        "opset": opsets.get("", opsets.get("ai.onnx")),
        "input_name": INPUT,
        "output_name": OUTPUT,
        "input_shape": list(shape),
        "batch_dynamic": batch_dynamic,
        "normalize": record,
        "batchnorm_left": remaining_batchnorms(folded),
        "bytes": Path(path).stat().st_size,
    }


def _session(ort: Any, path: str | Path, threads: int | None = None) -> Any:
    """An onnxruntime CPU session of `path`, or a one-line error naming the file."""
    if not Path(path).is_file():
        raise PrunelabError(f"{path}: no such ONNX file")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only: its warnings are about graph rewrites
    if threads is not None:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise PrunelabError(
            f"{path} is not a readable ONNX model: {type(e).__name__}: {_first_line(e)}"
        ) from None


def _file_meta(session: Any) -> dict[str, Any]:
    props = session.get_modelmeta().custom_metadata_map
    out = {}
    for key in (META_SHAPE, META_NORM):
        if key in props:
            with contextlib.suppress(ValueError):
                out[key] = json.loads(props[key])
    return out


def _file_shape(
    session: Any,
    path: str | Path,
    given: Sequence[int] | None,
    fallback: Sequence[int] | None = None,
) -> tuple[int, ...]:
    """The per-image input shape: `given`, else the file's prunelab record, else its fixed
    dims, else `fallback`."""
    if given is not None:
        return tuple(given)
    meta = _file_meta(session)
    if META_SHAPE in meta:
        return tuple(meta[META_SHAPE])
    dims = session.get_inputs()[0].shape[1:]
    if fallback is not None and not all(isinstance(d, int) for d in dims):
        return tuple(fallback)
    if not all(isinstance(d, int) for d in dims):
        raise PrunelabError(f"{path}: input dims {dims} are not fixed; pass input_shape")
    return tuple(dims)


def _fixed_batch(session: Any) -> int | None:
    first = session.get_inputs()[0].shape[0]
    return first if isinstance(first, int) else None


def check_onnx(
    model: nn.Module,
    path: str | Path,
    input_shape: Sequence[int] | None = None,
    batch: int = 4,
    atol: float = ATOL,
) -> dict[str, Any]:
    """Run the file (onnxruntime, CPU) and `model` (PyTorch, eval, normalised the prunelab way)
    on the same random images in [0, 1]; refuse the file when the logits differ by more than
    atol x logit scale (max |logit|, at least 1). Returns the max abs difference, the tolerance
    and whether the argmax agrees on every image (a mismatch within tolerance is a near-tie).

    The normalisation applied to the PyTorch side is the one recorded in the file (what
    export_onnx baked in), else `normalize_of(model)`."""
    _, ort = _require()
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise PrunelabError(f"batch must be an integer >= 1, got {batch!r}")
    if isinstance(atol, bool) or not isinstance(atol, int | float) or not atol > 0:
        raise PrunelabError(f"atol must be a number > 0, got {atol!r}")
    session = _session(ort, path)
    shape = _file_shape(session, path, input_shape, input_shape_of(model))
    meta = _file_meta(session)
    record = meta[META_NORM] if META_NORM in meta else normalize_of(model)
    dev = _device_of(model)
    norm = _norm_tensors(record, shape, dev)
    batch = _fixed_batch(session) or batch
    x = torch.rand((batch, *shape), generator=torch.Generator().manual_seed(1))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            ref = model(to_input(x.to(dev), False, norm))
    finally:
        model.train(was_training)
    if not isinstance(ref, torch.Tensor):
        raise PrunelabError(f"the model returned {type(ref).__name__}; expected a logits tensor")
    ref = ref.float().cpu()
    try:
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    except Exception as e:
        raise PrunelabError(f"{path}: onnxruntime failed: {_first_line(e)}") from None
    got = torch.from_numpy(got)
    if tuple(got.shape) != tuple(ref.shape):
        raise PrunelabError(
            f"{path}: ONNX logits are shaped {tuple(got.shape)}, PyTorch's {tuple(ref.shape)}"
        )
    ref64, got64 = ref.double(), got.double()
    diff = float((ref64 - got64).abs().max()) if ref.numel() else 0.0
    scale = max(float(ref64.abs().max()) if ref.numel() else 0.0, 1.0)
    tol = atol * scale
    same = ref.argmax(1) == got.argmax(1) if ref.dim() == 2 else torch.ones(1, dtype=torch.bool)
    if not diff <= tol:  # also catches NaN
        raise PrunelabError(
            f"{path}: ONNX logits differ from PyTorch's by {diff:.3g} (tolerance {tol:.3g} = "
            f"{atol:g} x logit scale {scale:.3g}); the exported model is not the same"
        )
    return {
        "path": str(path),
        "batch": batch,
        "input_shape": list(shape),
        "normalize": record,
        "max_abs_diff": diff,
        "tolerance": tol,
        "logit_scale": scale,
        "argmax_agree": bool(same.all()),
        "argmax_agreement": float(same.double().mean()),
        "onnxruntime": ort.__version__,
    }


def onnx_latency(
    paths: Mapping[str, str | Path],
    input_shape: Sequence[int] | None = None,
    batch_sizes: Sequence[int] = (1,),
    threads: int | None = None,
    warmup: int = WARMUP,
    reps: int = REPS,
    min_seconds: float = MIN_SECONDS,
) -> dict[str, Any]:
    """onnxruntime (CPU) latency of each file, interleaved and summarised like measure_latency
    (same result shape, so format_latency_table prints it); the first file is the reference.

    Input: random float images in [0, 1] of `input_shape`, else each file's recorded shape.
    threads sets onnxruntime's intra-op threads (None: its default, one per physical core)."""
    _, ort = _require()
    names = check_names(paths, "ONNX files")
    sizes = check_settings(batch_sizes, threads, warmup, reps, min_seconds)
    sessions = {n: _session(ort, paths[n], threads) for n in names}
    shapes = {n: _file_shape(sessions[n], paths[n], input_shape) for n in names}
    per_batch: dict[int, dict[str, list[float]]] = {}
    for b in sizes:
        runners = {}
        for i, n in enumerate(names):
            s = sessions[n]
            fixed = _fixed_batch(s)
            if fixed is not None and fixed != b:
                raise PrunelabError(
                    f"{paths[n]} has a fixed batch of {fixed}; cannot time batch {b}"
                )
            g = torch.Generator().manual_seed(i + 1)
            feed = {s.get_inputs()[0].name: torch.rand((b, *shapes[n]), generator=g).numpy()}
            try:
                s.run(None, feed)
            except Exception as e:
                raise PrunelabError(
                    f"{paths[n]}: onnxruntime failed on input shaped {(b, *shapes[n])}: "
                    f"{_first_line(e)}"
                ) from None
            runners[n] = lambda s=s, feed=feed: s.run(None, feed)
        per_batch[b] = interleaved_times(runners, warmup, reps, min_seconds)
    settings = {
        "runtime": "onnxruntime CPUExecutionProvider",
        "device": "cpu",
        "dtype": "fp32",
        "threads": threads,
        "batch_sizes": sizes,
        "warmup": warmup,
        "reps": reps,
        "min_seconds": min_seconds,
        "input_shapes": {n: list(s) for n, s in shapes.items()},
        "files": {n: str(p) for n, p in paths.items()},
        "order": order_text(True),
        "primed": True,
        "onnxruntime": ort.__version__,
        "cpu": cpu_name(),
    }
    return build_result(names, per_batch, settings)
