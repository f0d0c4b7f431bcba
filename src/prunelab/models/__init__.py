"""Models: the registry (vgg, resnet20/56, mobilenetv2) and checkpoint read/write."""

from .checkpoint import (
    KNOWN_SHA256,
    PRETRAINED_SHA256,
    PRETRAINED_URL,
    check_fits,
    infer_width,
    load_model,
    read_checkpoint,
    save_checkpoint,
)
from .mobilenetv2 import MobileNetV2, mobilenetv2
from .registry import REGISTRY
from .resnet import CifarResNet, resnet20, resnet56
from .vgg import VGG, VGG_PLAN, scaled

__all__ = [
    "KNOWN_SHA256", "PRETRAINED_SHA256", "PRETRAINED_URL", "REGISTRY", "VGG", "VGG_PLAN",
    "CifarResNet", "MobileNetV2", "check_fits", "infer_width", "load_model", "mobilenetv2",
    "read_checkpoint", "resnet20", "resnet56", "save_checkpoint", "scaled",
]  # fmt: skip
