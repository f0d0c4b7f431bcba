"""The registry's networks build at any class count, channel count and input size."""

import pytest
import torch
from model_matrix import MATRIX
from torch import nn

from prunelab.models import REGISTRY, resnet20, resnet56


@pytest.mark.parametrize("case", MATRIX, ids=str)
def test_matrix_forward_shapes(case):
    model = case.build().eval()
    assert model(case.batch(2)).shape == (2, case.num_classes)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_registry_takes_num_classes_and_in_channels(name):
    model = REGISTRY[name](num_classes=4, in_channels=1).eval()
    assert model(torch.rand(2, 1, 32, 32)).shape == (2, 4)


def test_resnet_depths_and_projection_shortcuts():
    convs20 = [m for m in resnet20().modules() if isinstance(m, nn.Conv2d)]
    convs56 = [m for m in resnet56().modules() if isinstance(m, nn.Conv2d)]
    # 1 stem + 2 per block + 2 projections (entering stages 2 and 3)
    assert len(convs20) == 1 + 2 * 9 + 2 and len(convs56) == 1 + 2 * 27 + 2
    projections = [m for m in convs20 if m.kernel_size == (1, 1)]
    assert [(m.in_channels, m.out_channels, m.stride) for m in projections] == [
        (16, 32, (2, 2)),
        (32, 64, (2, 2)),
    ]


def test_mobilenetv2_keeps_a_4x4_map_and_has_depthwise_convs():
    model = REGISTRY["mobilenetv2"]().eval()
    assert model.features(torch.rand(1, 3, 32, 32)).shape[-2:] == (4, 4)
    depthwise = [
        m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups == m.in_channels > 1
    ]
    assert len(depthwise) == 17
