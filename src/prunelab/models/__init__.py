"""Models: the registry (vgg, resnet20/56, mobilenetv2), user factories, checkpoint read/write."""

from .arch import (
    apply_channel_record,
    arch_of,
    input_shape_of,
    make_arch,
    normalize_of,
)
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
from .factory import ModelError, build_model, parse_model_args, resolve_factory
from .mobilenetv2 import MobileNetV2, mobilenetv2
from .registry import REGISTRY
from .resnet import CifarResNet, resnet20, resnet56
from .vgg import VGG, VGG_PLAN, scaled

__all__ = [
    "KNOWN_SHA256", "PRETRAINED_SHA256", "PRETRAINED_URL", "REGISTRY", "VGG", "VGG_PLAN",
    "CifarResNet", "MobileNetV2", "ModelError", "apply_channel_record", "arch_of",
    "build_model", "check_fits", "infer_width", "input_shape_of", "load_model", "make_arch",
    "mobilenetv2", "normalize_of", "parse_model_args", "read_checkpoint", "resnet20",
    "resnet56", "resolve_factory", "save_checkpoint", "scaled",
]  # fmt: skip
