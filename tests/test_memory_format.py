"""Training steers clear of oneDNN issue 6035 (channels-last 1x1 strided weight gradients)."""

import torch
from torch import nn

from prunelab.memory_format import channels_last_training_is_safe, risky_convolutions
from prunelab.models import VGG, build_model
from prunelab.train import TrainConfig, fit

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def strided_shortcut_net() -> nn.Module:
    # the ResNet-20-at-width-0.25 shape that never returned on a 2-core AVX2 CPU
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.Conv2d(4, 8, 1, stride=2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    )


def test_the_affected_convolutions_are_found():
    assert risky_convolutions(strided_shortcut_net()) == ["1"]
    rn = build_model("resnet20", {"width": 0.25}, num_classes=3, input_shape=[3, 40, 40])
    assert "layer2.0.shortcut.0" in risky_convolutions(rn)
    assert risky_convolutions(VGG(0.25)) == []  # no 1x1 convolutions: channels-last stays
    wide = nn.Conv2d(64, 128, 1, stride=2)  # a full channel block: not affected
    assert risky_convolutions(nn.Sequential(wide)) == []


def test_only_cpu_training_gives_up_channels_last():
    net = strided_shortcut_net()
    assert not channels_last_training_is_safe(net, CPU)
    assert channels_last_training_is_safe(net, CUDA)
    assert channels_last_training_is_safe(VGG(0.125), CPU)


def test_fit_trains_an_affected_model_in_the_contiguous_layout():
    torch.manual_seed(0)
    x, y = torch.randint(0, 256, (24, 3, 16, 16), dtype=torch.uint8), torch.arange(24) % 3
    cfg = TrainConfig(epochs=1, batch_size=12, lr=0.01)
    net = strided_shortcut_net()
    fit(net, x, y, cfg, progress=False)  # with channels-last this never returned on AVX2
    w = net[0].weight  # a 3x3 kernel: the two layouts differ (a 1x1 one is both)
    assert w.is_contiguous() and not w.is_contiguous(memory_format=torch.channels_last)
    plain = VGG(0.125)
    fit(plain, x, y, cfg, progress=False)
    assert plain.backbone.conv0.weight.is_contiguous(memory_format=torch.channels_last)
