"""CIFAR ResNets of He et al. 2016 (ResNet-20/56: 3 stages of 16/32/64 channels).

Where a block changes shape the shortcut is a projection (1x1 conv + BN, the paper's
option B), so every residual add has convolutions on both sides for channel pruning
to tie together.
"""

from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the (identity or projected) input, then ReLU."""

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """Stem conv, three stages of `blocks` BasicBlocks (stride 2 entering stages 2 and 3)."""

    def __init__(
        self, blocks: int, num_classes: int = 10, in_channels: int = 3, width: float = 1.0
    ):
        super().__init__()
        widths = [max(1, round(c * width)) for c in (16, 32, 64)]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        stages, in_ch = [], widths[0]
        for i, out_ch in enumerate(widths):
            layers = []
            for b in range(blocks):
                layers.append(BasicBlock(in_ch, out_ch, 2 if (i > 0 and b == 0) else 1))
                in_ch = out_ch
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(in_ch, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(x.mean(dim=(2, 3)))


def resnet20(num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> CifarResNet:
    """ResNet-20: 3 blocks per stage, 0.27 M parameters at width 1."""
    return CifarResNet(3, num_classes, in_channels, width)


def resnet56(num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> CifarResNet:
    """ResNet-56: 9 blocks per stage, 0.85 M parameters at width 1."""
    return CifarResNet(9, num_classes, in_channels, width)
