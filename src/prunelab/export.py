"""A compact file format for pruned models, and what pruning really saves on disk.

A torch checkpoint stores zeros like any other number, so pruning alone makes no file
smaller. Here each floating-point tensor is stored in whichever encoding is smallest for it:

- ``raw``: every value (dense tensors: BatchNorm, biases, lightly pruned layers);
- ``bitmask``: the non-zero values plus one bit per position (numpy packbits);
- ``rel8`` / ``rel16``: the non-zero values plus the number of zeros before each one as
  uint8 / uint16; a gap too long for one symbol is written as escape symbols (255 / 65535,
  each meaning "skip that many more zeros") before the remainder, so any gap fits.

File layout: b"PLZ1", uint32 header length, uint32 CRC-32 of the header, the header (JSON:
the model's class name, for the study's VGG its width and num_classes, optionally the
caller's architecture record `arch`, and per tensor its name, shape, dtype, encoding and
byte sections, or the earlier name it shares storage with), then the payload, whose length
and CRC-32 the header holds. A truncated or damaged file is refused by name instead of
loading wrong weights.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import models
from .accounting import sparsity_report
from .errors import CheckpointError, PrunelabError
from .fileio import atomic_path
from .models import VGG, check_fits, read_checkpoint

MAGIC = b"PLZ1"
FORMAT = "prunelab-compressed"
_PREFIX = struct.Struct("<4sII")  # magic, header length, header CRC-32
_ESCAPE = {"rel8": (np.uint8, 255), "rel16": (np.uint16, 65535)}


def _relative(positions: np.ndarray, kind: str) -> np.ndarray:
    """Gaps (zeros before each non-zero) as symbols of `kind`, long gaps split by escapes."""
    dtype, esc = _ESCAPE[kind]
    gaps = np.diff(positions, prepend=-1) - 1
    q, r = np.divmod(gaps, esc)
    out = np.full(int((q + 1).sum()), esc, dtype=dtype)
    out[np.cumsum(q + 1) - 1] = r
    return out


def _positions(symbols: np.ndarray, kind: str) -> np.ndarray:
    """Inverse of `_relative`: flat positions of the non-zeros."""
    _, esc = _ESCAPE[kind]
    sym = symbols.astype(np.int64)
    is_esc = sym == esc
    escapes = np.cumsum(is_esc)
    idx = np.flatnonzero(~is_esc)
    gaps = sym[idx] + esc * np.diff(escapes[idx], prepend=0)
    return np.cumsum(gaps + 1) - 1


def _encode_tensor(t: torch.Tensor, fp16: bool) -> tuple[str, list[np.ndarray], str]:
    """(encoding, arrays, value dtype) of the smallest encoding of one tensor."""
    if not t.is_floating_point():
        return "raw", [t.numpy()], str(t.numpy().dtype)
    vdtype = np.float16 if fp16 else np.float64 if t.dtype == torch.float64 else np.float32
    flat = t.detach().to(torch.float64 if vdtype == np.float64 else torch.float32)
    flat = flat.flatten().numpy()
    options: list[tuple[str, list[np.ndarray]]] = [("raw", [flat.astype(vdtype)])]
    nonzero = flat != 0  # -0.0 counts as zero: it is what masking a negative weight leaves
    if not nonzero.all():
        pos = np.flatnonzero(nonzero)
        values = flat[pos].astype(vdtype)
        options.append(("bitmask", [values, np.packbits(nonzero)]))
        for kind in _ESCAPE:
            options.append((kind, [values, _relative(pos, kind)]))
    enc, arrays = min(options, key=lambda o: sum(a.nbytes for a in o[1]))
    return enc, arrays, np.dtype(vdtype).name


def _plain_arch(arch: Any) -> Any:
    """`arch` as it will read back from the header's JSON, or CheckpointError."""
    try:
        return json.loads(json.dumps(arch, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise CheckpointError(
            f"arch must hold only plain JSON values (dicts, lists, text, finite numbers): {e}"
        ) from None


def _storage_key(t: torch.Tensor) -> tuple[Any, ...] | None:
    """Identity of the values a state-dict entry holds (shared weights give the same key)."""
    if t.numel() == 0:
        return None
    return (t.device, t.data_ptr(), t.dtype, tuple(t.shape), t.stride())


def encode(model: nn.Module, fp16: bool = False, arch: Any = None) -> tuple[bytes, dict[str, Any]]:
    """The exported file's bytes and its header, for any nn.Module.

    The study's VGG also records width and num_classes (and in_channels when not 3) so the
    file rebuilds without an `arch`; `arch` (any plain-JSON value, stored as given) is the
    caller's architecture record. A state-dict entry sharing storage with an earlier one (a
    tied weight) is stored once and recorded as an alias.
    """
    plain_arch = None if arch is None else _plain_arch(arch)
    tensors, chunks, offset = [], [], 0
    seen: dict[tuple[Any, ...], str] = {}
    for name, t in model.state_dict().items():
        key = _storage_key(t)
        if key is not None and key in seen:
            tensors.append({"name": name, "alias": seen[key]})
            continue
        if key is not None:
            seen[key] = name
        t = t.detach().cpu().contiguous()
        enc, arrays, vdtype = _encode_tensor(t, fp16)
        sections = []
        for a in arrays:
            b = np.ascontiguousarray(a).tobytes()
            sections.append([offset, len(b), a.dtype.name])
            chunks.append(b)
            offset += len(b)
        tensors.append(
            {
                "name": name,
                "shape": list(t.shape),
                "dtype": str(t.dtype).removeprefix("torch."),
                "encoding": enc,
                "values": vdtype,
                "numel": t.numel(),
                "nonzeros": int(torch.count_nonzero(t)),
                "sections": sections,
            }
        )
    payload = b"".join(chunks)
    header: dict[str, Any] = {"format": FORMAT, "version": 1}
    if isinstance(model, VGG):
        header |= {"model": "VGG", "width": float(model.width)}
        header["num_classes"] = int(model.num_classes)
        in_channels = model.backbone.conv0.in_channels
        if in_channels != 3:
            header["in_channels"] = int(in_channels)
    else:
        header["model"] = type(model).__name__
    if plain_arch is not None:
        header["arch"] = plain_arch
    header |= {
        "fp16": fp16,
        "tensors": tensors,
        "payload_bytes": len(payload),
        "payload_crc32": zlib.crc32(payload),
    }
    hb = json.dumps(header, separators=(",", ":")).encode()
    return _PREFIX.pack(MAGIC, len(hb), zlib.crc32(hb)) + hb + payload, header


def export_compressed(
    model: nn.Module, path: str | os.PathLike, fp16: bool = False, arch: Any = None
) -> dict[str, Any]:
    """Write `model` (pruned weights as zeros) in the compact format, atomically.

    Returns the header plus `bytes`, the file's size. fp16 halves the values (lossy);
    fp32 reproduces the masked model's outputs exactly. `arch`: the model's architecture
    record (plain JSON, e.g. `prunelab.models.arch_of(model)`), stored so `load_compressed`
    can rebuild the network without being handed one.
    """
    data, header = encode(model, fp16, arch)
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return {**header, "path": str(path), "bytes": len(data)}


def _fail(path: Path, why: str) -> CheckpointError:
    return CheckpointError(f"compressed model {path} is truncated or corrupt ({why})")


def read_compressed(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict, header) of an exported file, every length and checksum verified."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"compressed model {path} does not exist or is not a file")
    data = path.read_bytes()
    if len(data) < _PREFIX.size:
        raise _fail(path, f"{len(data)} bytes, shorter than the file prefix")
    magic, hlen, hcrc = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise CheckpointError(f"{path} is not a prunelab compressed model (no {MAGIC!r} magic)")
    hb = data[_PREFIX.size : _PREFIX.size + hlen]
    if len(hb) != hlen or zlib.crc32(hb) != hcrc:
        raise _fail(path, "header cut short or damaged")
    try:
        header = json.loads(hb)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _fail(path, f"header is not JSON: {e}") from None
    payload = data[_PREFIX.size + hlen :]
    if len(payload) != header.get("payload_bytes"):
        raise _fail(
            path, f"payload has {len(payload)} bytes, the header says {header.get('payload_bytes')}"
        )
    if zlib.crc32(payload) != header.get("payload_crc32"):
        raise _fail(path, "payload checksum mismatch")
    if header.get("format") != FORMAT:
        raise CheckpointError(f"{path}: unknown format {header.get('format')!r}")
    try:
        state: dict[str, torch.Tensor] = {}
        for t in header["tensors"]:
            state[t["name"]] = state[t["alias"]] if "alias" in t else _decode_tensor(t, payload)
    except (KeyError, ValueError, TypeError, IndexError) as e:
        raise _fail(path, f"{type(e).__name__}: {e}") from None
    return state, header


def _decode_tensor(t: dict[str, Any], payload: bytes) -> torch.Tensor:
    arrays = []
    for off, n, dtype in t["sections"]:
        if off < 0 or off + n > len(payload):
            raise ValueError(f"{t['name']}: section outside the payload")
        arrays.append(
            np.frombuffer(
                payload, dtype=np.dtype(dtype), count=n // np.dtype(dtype).itemsize, offset=off
            ).copy()
        )
    dtype = getattr(torch, t["dtype"])
    numel = int(np.prod(t["shape"], dtype=np.int64))
    if t["encoding"] == "raw":
        flat = arrays[0]
    else:
        values, index = arrays
        if t["encoding"] == "bitmask":
            pos = np.flatnonzero(np.unpackbits(index, count=numel))
        elif t["encoding"] in _ESCAPE:
            pos = _positions(index, t["encoding"])
        else:
            raise ValueError(f"{t['name']}: unknown encoding {t['encoding']!r}")
        if len(pos) != len(values) or (len(pos) and pos[-1] >= numel):
            raise ValueError(f"{t['name']}: index and values disagree")
        flat = np.zeros(numel, dtype=np.result_type(values.dtype, np.float32))
        flat[pos] = values
    if flat.size != numel:
        raise ValueError(f"{t['name']}: {flat.size} values for shape {t['shape']}")
    return torch.from_numpy(flat.reshape(t["shape"])).to(dtype)


def _from_arch(path: Path, arch: Any) -> nn.Module:
    """Rebuild a registry network from the file's arch record; never imports code it names."""
    build = getattr(models, "build_model", None)
    spec = arch.get("model") if isinstance(arch, dict) else None
    kwargs = arch.get("kwargs", {}) if isinstance(arch, dict) else None
    if build is None:
        raise CheckpointError(
            f"compressed model {path} holds a {spec or 'custom'} network that this prunelab "
            "cannot rebuild: pass the model to load it into (load_compressed(path, model))"
        )
    if not isinstance(spec, str) or not isinstance(kwargs, dict):
        raise _fail(path, "its arch record has no 'model' name and 'kwargs' dict")
    if ":" in spec:
        raise CheckpointError(
            f"compressed model {path} was made from {spec}; build that model and pass it "
            "(prunelab never imports code named inside a file)"
        )
    try:
        model = build(spec, kwargs)
    except PrunelabError as e:  # models.ModelError: unknown name, bad kwargs
        raise CheckpointError(f"compressed model {path}: {e}") from None
    if hasattr(model, "prunelab_arch"):
        model.prunelab_arch = arch  # the file's record: input shape, normalization
    apply = getattr(models, "apply_channel_record", None)
    if apply is not None and arch.get("channels") is not None:
        model = apply(model, arch["channels"], f"compressed model {path}")
    return model


def _from_header(path: Path, header: dict[str, Any]) -> nn.Module:
    """The network a file without a model describes: its arch record, else the study VGG."""
    if header.get("arch") is not None:
        return _from_arch(path, header["arch"])
    if header.get("model") != "VGG":
        raise CheckpointError(
            f"compressed model {path} holds a {header.get('model')} without an architecture "
            "record: pass the model to load it into (load_compressed(path, model))"
        )
    try:
        return VGG(
            width=float(header["width"]),
            num_classes=int(header["num_classes"]),
            in_channels=int(header.get("in_channels", 3)),
        )
    except (KeyError, ValueError, TypeError) as e:
        raise _fail(path, f"bad model description: {e}") from None


def load_compressed(path: str | os.PathLike, model: nn.Module | None = None) -> nn.Module:
    """Load an exported file into `model` (pruned weights are exact zeros), in eval mode.

    Without `model`: a file with an arch record is rebuilt through
    `prunelab.models.build_model` (registry networks only; user code is never imported from
    a file's say-so), a file without one as the study's VGG.
    """
    state, header = read_compressed(path)
    net = _from_header(Path(path), header) if model is None else model
    check_fits(net, state, f"compressed model {path}")
    net.load_state_dict(state, strict=True)
    return net.eval()


def _torch_bytes(state: dict[str, torch.Tensor]) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def size_table(
    dense_ckpt_path: str | os.PathLike | None,
    pruned_ckpt_path: str | os.PathLike,
    exported_path: str | os.PathLike,
    model: nn.Module,
    scope: str = "conv",
    input_shape: Any = None,
) -> dict[str, Any]:
    """Sizes of one pruned model stored different ways, each against the dense checkpoint.

    `model` is the pruned model (the fp16 or fp32 variant the file is not is encoded in
    memory). Without a dense checkpoint, the plain state dict (same size: torch stores
    zeros like any value) is the reference. Also gives MACs dense vs. zero-skipping (per
    input of `input_shape`, default the model's own) and the sparsity of `scope`.
    """
    exported_path = Path(exported_path)
    _, header = read_compressed(exported_path)
    plain = _torch_bytes(read_checkpoint(pruned_ckpt_path)["state_dict"])
    rep = sparsity_report(model, scope=scope, input_shape=input_shape)
    nonzero_params = round(rep["model_params"] * (1 - rep["model_sparsity_all_params"]))
    other_fp16 = not header["fp16"]
    other = len(encode(model, fp16=other_fp16, arch=header.get("arch"))[0])
    rows = [
        (
            "dense",
            "dense checkpoint file" if dense_ckpt_path else "dense reference (plain state dict)",
            os.path.getsize(dense_ckpt_path) if dense_ckpt_path else len(plain),
        ),
        (
            "pruned_checkpoint",
            "pruned checkpoint file (state dict + masks + metadata)",
            os.path.getsize(pruned_ckpt_path),
        ),
        ("plain", "pruned model as plain state dict (torch.save)", len(plain)),
        ("gzip", "plain state dict, gzip -9", len(gzip.compress(plain, compresslevel=9))),
        (
            "nonzero",
            "non-zero parameters x 4 bytes (the study's figure, no index)",
            nonzero_params * 4,
        ),
        (
            "export",
            f"exported {exported_path.name} ({'fp16' if header['fp16'] else 'fp32'}, real file)",
            exported_path.stat().st_size,
        ),
        (
            "export_other",
            f"export at {'fp16' if other_fp16 else 'fp32'} (encoded in memory)",
            other,
        ),
    ]
    dense = rows[0][2]
    encodings: dict[str, int] = {}
    for t in header["tensors"]:
        encodings[t["encoding"]] = encodings.get(t["encoding"], 0) + 1
    return {
        "rows": [
            {
                "key": k,
                "what": w,
                "bytes": b,
                "fraction_of_dense": b / dense,
                "times_smaller": dense / b if b else float("inf"),
            }
            for k, w, b in rows
        ],
        "sparsity": rep["prunable_sparsity"],
        "scope": scope,
        "macs_dense": rep["macs_dense"],
        "macs_sparse": rep["macs_sparse"],
        "encodings": encodings,
    }


def format_size_table(table: dict[str, Any]) -> str:
    """Markdown table of `size_table`, with the caveat about MACs."""
    lines = ["| stored as | bytes | KiB | % of dense | x smaller |", "|---|---:|---:|---:|---:|"]
    for r in table["rows"]:
        lines.append(
            f"| {r['what']} | {r['bytes']:,} | {r['bytes'] / 1024:.1f} | "
            f"{100 * r['fraction_of_dense']:.1f} | {r['times_smaller']:.2f} |"
        )
    enc = ", ".join(f"{k}: {v}" for k, v in sorted(table["encodings"].items()))
    lines += [
        "",
        f"- {table.get('scope', 'conv')}-weight sparsity {table['sparsity']:.4f}; tensor "
        f"encodings in the export: {enc}",
    ]
    if table["macs_dense"] is not None:
        lines.append(
            f"- MACs per image: {table['macs_dense'] / 1e6:.2f}M dense, "
            f"{table['macs_sparse'] / 1e6:.2f}M if zeros were skipped. The saving in MACs is "
            "theoretical: PyTorch's dense kernels multiply the zeros too; only sparse kernels "
            "or hardware would skip them. The file sizes above are real."
        )
    return "\n".join(lines) + "\n"
