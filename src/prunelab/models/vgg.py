"""The study's VGG11-style network; parameter names match the published checkpoint."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

# 'M' is a 2x2 max-pool; numbers are output channels at width 1.0.
VGG_PLAN: list[int | str] = [64, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]


def scaled(channels: int, width: float) -> int:
    """Channels at `width` (at least 1)."""
    return max(1, int(round(channels * width)))


def check_width(width: object) -> float:
    if not (isinstance(width, int | float) and not isinstance(width, bool) and width > 0):
        raise ValueError(f"width must be a number > 0, got {width!r}")
    return float(width)


class VGG(nn.Module):
    """VGG11-style net: 8 conv3x3+BN+ReLU, 4 max-pools, global average pool, Linear.

    `backbone` is an nn.Sequential and `head` maps its output to logits, so tools
    (the sensitivity scan) can run the network from any layer onwards.
    """

    def __init__(self, width: float = 1.0, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.width = check_width(width)
        self.num_classes = int(num_classes)
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        in_ch, conv_i, pool_i = int(in_channels), 0, 0
        for item in VGG_PLAN:
            if item == "M":
                layers[f"pool{pool_i}"] = nn.MaxPool2d(2)
                pool_i += 1
                continue
            out_ch = scaled(int(item), width)
            layers[f"conv{conv_i}"] = nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False)
            layers[f"bn{conv_i}"] = nn.BatchNorm2d(out_ch)
            layers[f"relu{conv_i}"] = nn.ReLU(inplace=True)
            in_ch, conv_i = out_ch, conv_i + 1
        self.backbone = nn.Sequential(layers)
        self.classifier = nn.Linear(in_ch, num_classes)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(features.mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))
