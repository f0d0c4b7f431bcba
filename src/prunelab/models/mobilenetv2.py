"""MobileNetV2 (Sandler et al. 2018) for small images: inverted residuals, depthwise convs.

The stem and the first two stages keep stride 1 (ImageNet's version strides 2 there), so a
32x32 input ends at a 4x4 map instead of 1x1.
"""

from __future__ import annotations

import torch
from torch import nn

# (expansion t, output channels c, blocks n, first stride s) as in the paper, CIFAR strides
STAGES = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
          (6, 160, 3, 2), (6, 320, 1, 1)]  # fmt: skip


def divisible(v: float, by: int = 8) -> int:
    """Round channels to a multiple of `by`, never below 90% of v (the paper's rule)."""
    out = max(by, int(v + by / 2) // by * by)
    return out + by if out < 0.9 * v else out


def conv_bn(in_ch: int, out_ch: int, k: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """1x1 expand, 3x3 depthwise, 1x1 linear projection; residual when shapes match."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand: int):
        super().__init__()
        hidden = in_ch * expand
        layers: list[nn.Module] = [conv_bn(in_ch, hidden, 1)] if expand != 1 else []
        layers += [
            conv_bn(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),
        ]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: float = 1.0):
        super().__init__()
        if not (isinstance(width, int | float) and width > 0):
            raise ValueError(f"width must be a number > 0, got {width!r}")
        in_ch = divisible(32 * width)
        last = divisible(1280 * max(1.0, width))
        features: list[nn.Module] = [conv_bn(in_channels, in_ch, 3)]
        for t, c, n, s in STAGES:
            out_ch = divisible(c * width)
            for i in range(n):
                features.append(InvertedResidual(in_ch, out_ch, s if i == 0 else 1, t))
                in_ch = out_ch
        features.append(conv_bn(in_ch, last, 1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Linear(last, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean(dim=(2, 3)))


def mobilenetv2(num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> MobileNetV2:
    return MobileNetV2(num_classes, in_channels, width)
