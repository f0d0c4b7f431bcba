"""Model names a checkpoint or recipe can use without naming any code: the registry."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .mobilenetv2 import mobilenetv2
from .resnet import resnet20, resnet56
from .vgg import VGG

REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "vgg": VGG,
    "resnet20": resnet20,
    "resnet56": resnet56,
    "mobilenetv2": mobilenetv2,
}
