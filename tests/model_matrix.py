"""The networks every library piece is tested on: registry models and odd shapes users bring."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from prunelab.models import VGG, mobilenetv2, resnet20


class BiasedConvNet(nn.Module):
    """Convolutions with biases and no BatchNorm; pooling done inside forward."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1, stride=2)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class MLP(nn.Module):
    """Linear layers only: flattens the image."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, size: int = 32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_channels * size * size, 64),
            nn.ReLU(),
            nn.Linear(64, 32),
            nn.ReLU(),
            nn.Linear(32, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[], nn.Module]
    input_shape: tuple[int, int, int]
    num_classes: int = 10

    def batch(self, n: int = 4, seed: int = 0) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return torch.rand((n, *self.input_shape), generator=g)

    def __str__(self) -> str:
        return self.name


MATRIX = [
    Case("vgg", lambda: VGG(width=0.125), (3, 32, 32)),
    Case("resnet20", lambda: resnet20(width=0.5), (3, 32, 32)),
    Case("mobilenetv2", lambda: mobilenetv2(width=0.25), (3, 32, 32)),
    Case("biased_conv", lambda: BiasedConvNet(num_classes=5), (3, 32, 32), 5),
    Case("mlp", lambda: MLP(num_classes=3, size=16), (3, 16, 16), 3),
    Case("gray_vgg", lambda: VGG(width=0.125, in_channels=1), (1, 32, 32)),
    Case("resnet20_40px", lambda: resnet20(width=0.5, num_classes=7), (3, 40, 40), 7),
]
