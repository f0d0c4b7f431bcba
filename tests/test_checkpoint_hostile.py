"""Damaged or crafted checkpoints are refused with one line naming the entry, never half-loaded."""

import math

import pytest
import torch

from prunelab.errors import CheckpointError
from prunelab.models import (
    VGG,
    apply_channel_record,
    build_model,
    load_model,
    read_checkpoint,
    save_checkpoint,
)


def refused(path, match, **kw) -> str:
    with pytest.raises(CheckpointError, match=match) as e:
        load_model(path, **kw)
    text = str(e.value)
    assert "\n" not in text and str(path) in text
    return text


def saved(tmp_path, **fields):
    """A small VGG checkpoint with some top-level fields replaced."""
    obj = torch.load(save_checkpoint(tmp_path / "ok.pth", VGG(0.125)), weights_only=True)
    obj.update(fields)
    path = tmp_path / "bad.pth"
    torch.save(obj, path)
    return path


def test_nan_and_inf_are_refused_naming_the_first_tensor(tmp_path):
    m = VGG(0.125)
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    sd["backbone.conv1.weight"].view(-1)[:3] = torch.tensor([math.nan, math.inf, -math.inf])
    sd["classifier.bias"][0] = math.nan
    torch.save({"state_dict": sd, "width": 0.125}, tmp_path / "nan.pth")
    refused(tmp_path / "nan.pth", r"tensor 'backbone.conv1.weight' has 3 non-finite value\(s\) "
            r"\(NaN or Inf\) of 1152; refusing it \(--allow-nonfinite")  # fmt: skip
    with pytest.raises(CheckpointError, match="backbone.conv1.weight"):
        read_checkpoint(tmp_path / "nan.pth")
    model, _ = load_model(tmp_path / "nan.pth", allow_nonfinite=True)
    assert torch.isnan(model.classifier.bias[0]) and model.backbone.conv1.weight.isinf().any()


def test_nan_in_a_buffer_is_refused_too(tmp_path):
    sd = {k: v.clone() for k, v in VGG(0.125).state_dict().items()}
    sd["backbone.bn2.running_var"][1] = math.inf
    torch.save(sd, tmp_path / "buf.pth")
    refused(tmp_path / "buf.pth", r"'backbone.bn2.running_var' has 1 non-finite")


@pytest.mark.parametrize(
    "fields, match",
    [
        ({"meta": ["not", "a", "dict"]}, r"'meta' is a list, expected a dict"),
        ({"arch": "vgg"}, r"architecture record is a str, expected a dict"),
        ({"arch": [1, 2]}, r"architecture record is a list, expected a dict"),
        ({"masks": [torch.ones(1)]}, r"'masks' is a list, expected a dict"),
        ({"masks": {"nope.weight": torch.ones(1, dtype=torch.bool)}},
         r"mask 'nope.weight' names no tensor in the state dict"),
        ({"masks": {"backbone.conv0.weight": torch.ones(3, dtype=torch.bool)}},
         r"mask 'backbone.conv0.weight' has shape \(3,\), the tensor has \(8, 3, 3, 3\)"),
        ({"masks": {"backbone.conv0.weight": torch.full((8, 3, 3, 3), 2.0)}},
         r"mask 'backbone.conv0.weight' holds values other than 0 and 1"),
        ({"masks": {"backbone.conv0.weight": "all"}},
         r"mask 'backbone.conv0.weight' is a str, expected a bool or 0/1 tensor"),
        ({"width": "wide"}, r"'width' is 'wide', expected a number > 0"),
        ({"state_dict": {"classifier.bias": 3}},
         r"state_dict entry 'classifier.bias' is a int, expected a tensor"),
    ],
)  # fmt: skip
def test_wrong_types_are_one_line_errors(tmp_path, fields, match):
    refused(saved(tmp_path, **fields), match)


def test_zero_one_float_masks_become_bool(tmp_path):
    mask = (torch.rand(8, 3, 3, 3) > 0.5).float()
    _, ck = load_model(saved(tmp_path, masks={"backbone.conv0.weight": mask}))
    got = ck["masks"]["backbone.conv0.weight"]
    assert got.dtype == torch.bool and torch.equal(got, mask.bool())


def test_pickled_module_is_named(tmp_path):
    torch.save(VGG(0.125), tmp_path / "module.pth")
    refused(tmp_path / "module.pth", r"a pickled nn.Module \(.*VGG\): save model.state_dict\(\)")


def test_channel_record_that_does_not_match_the_weights_is_refused(tmp_path):
    m = build_model("vgg", {"width": 0.125})
    arch = {**m.prunelab_arch, "channels": {"backbone.conv0": 4, "backbone.conv1": 8}}
    path = save_checkpoint(tmp_path / "ch.pth", m, arch=arch)  # weights saved unpruned
    assert torch.load(path, weights_only=True)["arch"]["channels"] == arch["channels"]
    refused(path, r"'backbone.conv0.weight' has shape \(8, 3, 3, 3\), the model expects "
            r"\(4, 3, 3, 3\)")  # fmt: skip
    assert apply_channel_record(m, None) is m  # the hook leaves unpruned models alone
    bad = saved(tmp_path, arch={**m.prunelab_arch, "channels": {"backbone.conv0": -1}})
    refused(bad, r"'channels' must be null or \{layer_name: channels > 0\}")


@pytest.mark.parametrize(
    "arch, match",
    [
        ({"format": 2, "model": "vgg", "kwargs": {"width": 1000.0}, "input_shape": [3, 32, 32],
          "normalize": None, "channels": None},
         r"'backbone.conv0.weight' has shape \(8, 3, 3, 3\), the model expects \(64000, 3, 3, 3\)"),
        ({"format": 2, "model": "vgg", "kwargs": "x", "input_shape": [3, 32, 32]},
         r"'kwargs' must be a dict"),
        ({"format": 2, "model": "vgg", "kwargs": {}, "input_shape": [3, -1]},
         r"'input_shape' is \[3, -1\], expected \[C, H, W\]"),
        ({"format": 2, "model": "vgg", "kwargs": {}, "normalize": {"mean": [0.5]}},
         r"'normalize' must be null or \{'mean'"),
        ({"format": 2, "model": "vgg", "kwargs": {"width": 0.125, "bogus": 1}},
         r"vgg has no argument 'bogus'"),
        ({"model": "vgg"}, r"record format None is not supported \(this prunelab reads format 2\)"),
    ],
)  # fmt: skip
def test_bad_records_are_refused_before_building(tmp_path, arch, match):
    # width 1000 would ask for hundreds of GB; the record is checked on the meta device first
    refused(saved(tmp_path, arch=arch), match)


def test_save_refuses_a_bad_record(tmp_path):
    with pytest.raises(CheckpointError, match="cannot save the arch record.*'input_shape'"):
        save_checkpoint(tmp_path / "x.pth", VGG(0.125), arch={"model": "vgg", "input_shape": [0]})
    assert not (tmp_path / "x.pth").exists()
