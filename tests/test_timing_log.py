"""The timing log's keys: a model's shape names every layer size channel pruning changes."""

import copy

from torch import nn

from prunelab.channels import prune_channels
from prunelab.channels.timing_log import crowd_key, shape_key
from prunelab.models import build_model


def test_shape_key_lists_every_conv_and_linear_output_in_order():
    vgg = build_model("vgg", {"width": 0.25})
    assert shape_key(vgg) == "16/32/64/64/128/128/128/128/10"
    odd = nn.Sequential(nn.Conv1d(3, 5, 3), nn.ReLU(), nn.ConvTranspose2d(5, 7, 2), nn.Linear(4, 2))
    assert shape_key(odd) == "5/7/2"


def test_pruned_models_get_their_own_keys_and_crowds_ignore_order():
    m = build_model("mobilenetv2", {"width": 0.5})
    a, b = copy.deepcopy(m), copy.deepcopy(m)
    prune_channels(a, 0.25)
    prune_channels(b, 0.5)
    keys = {shape_key(x) for x in (m, a, b)}
    assert len(keys) == 3
    assert crowd_key([shape_key(a), shape_key(b)]) == crowd_key([shape_key(b), shape_key(a)])
    assert crowd_key([shape_key(a)]) != crowd_key([shape_key(b)])
