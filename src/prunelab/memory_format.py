"""When training may use channels-last memory on the CPU.

Channels-last is only a speed choice for training, and one oneDNN kernel gets it wrong:
the weight gradient of a 1x1 convolution with a stride above 1 and fewer input channels
than the kernel's channel block (8 on AVX2 CPUs, 16 with AVX-512), on channels-last
(nhwc) tensors, writes past its workspace (oneDNN issue 6035). With torch 2.13 on a 2-core
AMD EPYC without AVX-512 such a step never returned with 2 threads (a ResNet-20 at width
0.25, whose 4 -> 8 shortcut is that convolution); the issue reports wrong gradients or a
crash with other thread counts. The contiguous layout takes another kernel, so training
such a model on the CPU uses it.
"""

from __future__ import annotations

import torch
from torch import nn

# the widest channel block of oneDNN's 1x1 kernels on x86 (AVX-512); AVX2's is 8
CHANNEL_BLOCK = 16


def risky_convolutions(model: nn.Module) -> list[str]:
    """Names of the convolutions that meet oneDNN issue 6035 in channels-last training."""
    return [
        name
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d)
        and all(k == 1 for k in m.kernel_size)
        and any(s > 1 for s in m.stride)
        and m.in_channels // m.groups < CHANNEL_BLOCK
    ]


def channels_last_training_is_safe(model: nn.Module, device: torch.device) -> bool:
    """False on the CPU for a model with a convolution that oneDNN issue 6035 affects."""
    return device.type != "cpu" or not risky_convolutions(model)
