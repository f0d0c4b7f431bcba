"""Whether a bf16 request is worth honouring on this device.

bf16 autocast is a speed choice (recipes and `--bf16` ask for it). oneDNN runs bf16
convolutions only on CPUs with AVX-512 (natively with AVX-512 BF16 or AMX); on an AVX2-only
CPU PyTorch falls back to its reference convolution with a scalar bf16 dot product. On a
2-core AMD EPYC with AVX2 only, a training step of the width-0.25 VGG (batch 128) took
6.5-7.0 s in bf16 against 0.8-1.5 s in fp32, so there training, evaluation and the scan run
in fp32 instead, and say so once. Timing (`prunelab latency --bf16`) keeps what it is asked.
"""

from __future__ import annotations

import sys

import torch

_told = False


def onednn_has_bf16() -> bool:
    """Whether oneDNN runs bf16 convolutions on this CPU (torch's own check)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def bf16_is_slow(device: torch.device) -> bool:
    """True on a CPU where oneDNN has no bf16 convolutions (AVX2 and older)."""
    return device.type == "cpu" and not onednn_has_bf16()


def use_bf16(requested: bool, device: torch.device) -> bool:
    """`requested`, unless bf16 would be slower than fp32 here (then fp32, said once)."""
    global _told
    if not requested or not bf16_is_slow(device):
        return requested
    if not _told:
        _told = True
        cap = torch.backends.cpu.get_cpu_capability()
        print(
            f"prunelab: bf16 asked for, but this CPU ({cap}) has no oneDNN bf16 convolutions "
            "and PyTorch's fallback is several times slower than fp32: running in fp32",
            file=sys.stderr,
        )
    return False
