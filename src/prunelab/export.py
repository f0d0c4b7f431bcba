"""A compact file format for pruned models, and what pruning really saves on disk.

A torch checkpoint stores zeros like any other number, so pruning alone makes no file
smaller. Here each floating-point tensor is stored in whichever encoding is smallest for it:

- ``raw``: every value (dense tensors: BatchNorm, biases, lightly pruned layers);
- ``bitmask``: the non-zero values plus one bit per position (numpy packbits);
- ``rel8`` / ``rel16``: the non-zero values plus the number of zeros before each one as
  uint8 / uint16; a gap too long for one symbol is written as escape symbols (255 / 65535,
  each meaning "skip that many more zeros") before the remainder, so any gap fits.

File layout: b"PLZ1", uint32 header length, uint32 CRC-32 of the header, the header (JSON:
width, num_classes, and per tensor its name, shape, dtype, encoding and byte sections),
then the payload, whose length and CRC-32 the header holds. A truncated or damaged file is
refused by name instead of loading wrong weights.
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

from .errors import CheckpointError
from .fileio import atomic_path
from .models import VGG, check_fits, read_checkpoint
from .pruning import sparsity_report

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
    vdtype = np.float16 if fp16 else np.float32
    flat = t.detach().float().flatten().numpy()
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


def encode(model: nn.Module, fp16: bool = False) -> tuple[bytes, dict[str, Any]]:
    """The exported file's bytes and its header (a VGG with `width` and `num_classes`)."""
    if not hasattr(model, "width") or not hasattr(model, "num_classes"):
        raise CheckpointError(
            f"export needs a prunelab VGG (width, num_classes), got {type(model).__name__}"
        )
    tensors, chunks, offset = [], [], 0
    for name, t in model.state_dict().items():
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
    header = {
        "format": FORMAT,
        "version": 1,
        "model": "VGG",
        "width": float(model.width),
        "num_classes": int(model.num_classes),
        "fp16": fp16,
        "tensors": tensors,
        "payload_bytes": len(payload),
        "payload_crc32": zlib.crc32(payload),
    }
    hb = json.dumps(header, separators=(",", ":")).encode()
    return _PREFIX.pack(MAGIC, len(hb), zlib.crc32(hb)) + hb + payload, header


def export_compressed(
    model: nn.Module, path: str | os.PathLike, fp16: bool = False
) -> dict[str, Any]:
    """Write `model` (pruned weights as zeros) in the compact format, atomically.

    Returns the header plus `bytes`, the file's size. fp16 halves the values (lossy);
    fp32 reproduces the masked model's outputs exactly.
    """
    data, header = encode(model, fp16)
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
        state = {t["name"]: _decode_tensor(t, payload) for t in header["tensors"]}
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
        flat = np.zeros(numel, dtype=np.float32)
        flat[pos] = values
    if flat.size != numel:
        raise ValueError(f"{t['name']}: {flat.size} values for shape {t['shape']}")
    return torch.from_numpy(flat.reshape(t["shape"])).to(dtype)


def load_compressed(path: str | os.PathLike) -> VGG:
    """Rebuild the VGG an exported file holds (pruned weights are exact zeros), in eval mode."""
    state, header = read_compressed(path)
    try:
        model = VGG(width=float(header["width"]), num_classes=int(header["num_classes"]))
    except (KeyError, ValueError, TypeError) as e:
        raise _fail(Path(path), f"bad model description: {e}") from None
    check_fits(model, state, str(path))
    model.load_state_dict(state, strict=True)
    return model.eval()


def _torch_bytes(state: dict[str, torch.Tensor]) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def size_table(
    dense_ckpt_path: str | os.PathLike | None,
    pruned_ckpt_path: str | os.PathLike,
    exported_path: str | os.PathLike,
    model: nn.Module,
) -> dict[str, Any]:
    """Sizes of one pruned model stored different ways, each against the dense checkpoint.

    `model` is the pruned model (the fp16 or fp32 variant the file is not is encoded in
    memory). Without a dense checkpoint, the plain state dict (same size: torch stores
    zeros like any value) is the reference. Also gives MACs dense vs. zero-skipping.
    """
    exported_path = Path(exported_path)
    _, header = read_compressed(exported_path)
    plain = _torch_bytes(read_checkpoint(pruned_ckpt_path)["state_dict"])
    rep = sparsity_report(model)
    nonzero_params = round(rep["model_params"] * (1 - rep["model_sparsity_all_params"]))
    other_fp16 = not header["fp16"]
    other = len(encode(model, fp16=other_fp16)[0])
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
        f"- conv-weight sparsity {table['sparsity']:.4f}; tensor encodings in the export: {enc}",
        f"- MACs per image: {table['macs_dense'] / 1e6:.2f}M dense, "
        f"{table['macs_sparse'] / 1e6:.2f}M if zeros were skipped. The saving in MACs is "
        "theoretical: PyTorch's dense kernels multiply the zeros too; only sparse kernels or "
        "hardware would skip them. The file sizes above are real.",
    ]
    return "\n".join(lines) + "\n"
