"""ONNX export: logits equal PyTorch's on registry and odd-channel models, normalisation baked
in the prunelab way, a dynamic batch axis, the TorchScript fallback, onnxruntime latency, and
one-line errors (the missing optional extra included, tested without uninstalling it)."""

from __future__ import annotations

import importlib
import sys

import numpy as np
import pytest
import torch
from torch import nn

import prunelab
from prunelab import onnx_export
from prunelab.errors import PrunelabError
from prunelab.evaluation import predict
from prunelab.latency_report import format_latency_table
from prunelab.models import VGG, make_arch, mobilenetv2, resnet20
from prunelab.onnx_export import MISSING, check_onnx, export_onnx, onnx_latency

SKIP = "the optional 'onnx' extra (onnx, onnxscript, onnxruntime) is not installed"
MEAN, STD = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]


@pytest.fixture(scope="module")
def ort():
    pytest.importorskip("onnx", reason=SKIP)
    pytest.importorskip("onnxscript", reason=SKIP)
    return pytest.importorskip("onnxruntime", reason=SKIP)


class OddChannels(nn.Module):
    """What channel pruning leaves: odd, unequal channel counts, a depthwise conv, BatchNorm."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 7, 3, padding=1, bias=False), nn.BatchNorm2d(7)
        self.c2, self.b2 = nn.Conv2d(7, 13, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(13)
        self.dw = nn.Conv2d(13, 13, 3, padding=1, groups=13)
        self.fc = nn.Linear(13, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.b1(self.c1(x)))
        x = torch.relu(self.b2(self.c2(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.dw(x), 1), 1))


def trained_looking(model: nn.Module, seed: int = 0) -> nn.Module:
    """BatchNorm statistics and affine terms away from (0, 1): folding is then not a no-op."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model


CASES = {
    "vgg": lambda: VGG(width=0.125),
    "resnet20": lambda: resnet20(width=0.5),
    "mobilenetv2": lambda: mobilenetv2(width=0.25),
    "odd_channels": OddChannels,
}


def images(n: int, shape=(3, 32, 32), seed: int = 5) -> torch.Tensor:
    return torch.rand((n, *shape), generator=torch.Generator().manual_seed(seed))


def run_file(ort, path, x: torch.Tensor) -> np.ndarray:
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s.run(None, {"images": x.numpy()})[0]


def torch_logits(model: nn.Module, x: torch.Tensor, normalize=None) -> np.ndarray:
    model.eval()
    if normalize is not None:
        mean = torch.tensor(normalize[0]).view(1, -1, 1, 1)
        std = torch.tensor(normalize[1]).view(1, -1, 1, 1)
        x = (x - mean) / std
    with torch.no_grad():
        return model(x).numpy()


@pytest.fixture(scope="module")
def exported(ort, tmp_path_factory):
    """Each case exported once: (model, export result, folder)."""
    out = {}
    for name, build in CASES.items():
        folder = tmp_path_factory.mktemp(name)
        model = trained_looking(build())
        out[name] = (model, export_onnx(model, folder / "model.onnx"), folder)
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_export_matches_pytorch_at_batch_1_and_3(ort, exported, name):
    model, info, folder = exported[name]
    assert info["exporter"] == "dynamo" and info["fallback_reason"] is None
    assert info["batchnorm_left"] == 0 and info["batch_dynamic"] is True
    assert info["input_shape"] == [3, 32, 32] and info["normalize"] is None
    assert sorted(p.name for p in folder.iterdir()) == ["model.onnx"]  # one file, no leftovers
    check = check_onnx(model, folder / "model.onnx")
    assert check["max_abs_diff"] <= check["tolerance"] and check["argmax_agree"]
    assert check["batch"] == 4
    for batch in (1, 3):
        x = images(batch)
        got = run_file(ort, folder / "model.onnx", x)
        assert got.shape[0] == batch
        np.testing.assert_allclose(got, torch_logits(model, x), rtol=1e-4, atol=1e-4)


def test_check_refuses_a_file_of_another_model(exported):
    _, _, folder = exported["vgg"]
    other = trained_looking(VGG(width=0.125), seed=1)
    with pytest.raises(PrunelabError, match="ONNX logits differ from PyTorch's") as e:
        check_onnx(other, folder / "model.onnx")
    assert "\n" not in str(e.value)


def test_normalisation_is_baked_in(ort, tmp_path):
    model = trained_looking(OddChannels())
    model.prunelab_arch = make_arch("tests:odd", {}, [3, 32, 32], {"mean": MEAN, "std": STD})
    info = export_onnx(model, tmp_path / "n.onnx")
    assert info["normalize"] == {"mean": MEAN, "std": STD}
    x = images(6)
    got = run_file(ort, tmp_path / "n.onnx", x)
    right = np.abs(got - torch_logits(model, x, (MEAN, STD))).max()
    unnormalised = np.abs(got - torch_logits(model, x)).max()
    assert right <= 1e-4 * max(1.0, np.abs(got).max())
    assert unnormalised > 100 * right + 1e-3  # the normalisation is really applied
    as_uint8 = (x * 255).round().to(torch.uint8)  # what prunelab's own evaluation is fed
    expected = predict(model, as_uint8, normalize=(MEAN, STD))
    onnx_pred = run_file(ort, tmp_path / "n.onnx", as_uint8.float() / 255).argmax(1)
    assert torch.equal(torch.from_numpy(onnx_pred), expected)
    assert check_onnx(model, tmp_path / "n.onnx")["normalize"] == {"mean": MEAN, "std": STD}


def test_normalize_argument_and_static_batch(ort, tmp_path):
    model = trained_looking(OddChannels())
    norm = {"mean": [0.5], "std": [0.25]}
    info = export_onnx(model, tmp_path / "s.onnx", normalize=norm, batch_dynamic=False)
    assert info["normalize"] == norm and info["batch_dynamic"] is False
    s = ort.InferenceSession(str(tmp_path / "s.onnx"), providers=["CPUExecutionProvider"])
    assert s.get_inputs()[0].shape == [1, 3, 32, 32]
    x = images(1)
    np.testing.assert_allclose(
        run_file(ort, tmp_path / "s.onnx", x),
        torch_logits(model, x, ([0.5] * 3, [0.25] * 3)),
        rtol=1e-4,
        atol=1e-4,
    )
    assert check_onnx(model, tmp_path / "s.onnx")["batch"] == 1
    with pytest.raises(PrunelabError, match="fixed batch of 1; cannot time batch 2"):
        onnx_latency({"s": tmp_path / "s.onnx"}, batch_sizes=(2,), reps=1, warmup=0)


def test_torchscript_fallback_when_dynamo_fails(ort, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("cannot capture this forward")

    monkeypatch.setattr(onnx_export, "_export_dynamo", broken)
    model = trained_looking(OddChannels())
    with pytest.warns(UserWarning, match="dynamo exporter failed"):
        info = export_onnx(model, tmp_path / "t.onnx")
    assert info["exporter"] == "torchscript" and "cannot capture" in info["fallback_reason"]
    assert check_onnx(model, tmp_path / "t.onnx")["argmax_agree"]
    x = images(3)
    np.testing.assert_allclose(
        run_file(ort, tmp_path / "t.onnx", x), torch_logits(model, x), rtol=1e-4, atol=1e-4
    )


def test_onnx_latency_has_the_measure_latency_shape(exported):
    paths = {n: exported[n][2] / "model.onnx" for n in ("vgg", "odd_channels")}
    r = onnx_latency(paths, batch_sizes=(1, 2), threads=1, warmup=1, reps=2, min_seconds=0)
    assert r["baseline"] == "vgg" and r["models"] == ["vgg", "odd_channels"]
    assert [(row["model"], row["batch_size"]) for row in r["rows"]] == [
        ("vgg", 1), ("odd_channels", 1), ("vgg", 2), ("odd_channels", 2),
    ]  # fmt: skip
    assert all(row["reps"] == 2 and row["median_ms"] > 0 for row in r["rows"])
    assert r["rows"][0]["ratio"] == 1.0
    assert r["settings"]["threads"] == 1 and r["settings"]["input_shapes"]["vgg"] == [3, 32, 32]
    assert "| odd_channels | 2 |" in format_latency_table(r)


def test_bad_inputs_are_one_line_errors(exported, tmp_path):
    model, _, folder = exported["vgg"]
    cases = [
        (lambda: onnx_latency({"x": tmp_path / "nope.onnx"}), "no such ONNX file"),
        (lambda: onnx_latency({}), "no ONNX files to time"),
        (lambda: onnx_latency({"v": folder / "model.onnx"}, threads=0), "threads must be"),
        (lambda: check_onnx(model, folder / "model.onnx", batch=0), "batch must be"),
        (lambda: export_onnx(model, tmp_path / "o.onnx", opset=True), "opset must be"),
        (
            lambda: export_onnx(model, tmp_path / "o.onnx", normalize={"mean": [0.5]}),
            "normalize:",
        ),
        (
            lambda: export_onnx(nn.Linear(7, 2), tmp_path / "o.onnx"),
            r"the model failed on a random input shaped \(2, 3, 32, 32\)",
        ),
    ]
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    cases.append((lambda: check_onnx(model, tmp_path / "junk.onnx"), "not a readable ONNX"))
    for call, words in cases:
        with pytest.raises(PrunelabError, match=words) as e:
            call()
        assert "\n" not in str(e.value)
    assert not (tmp_path / "o.onnx").exists()


@pytest.mark.parametrize("missing", ["onnxruntime", "onnxscript", "onnx"])
def test_missing_extra_is_one_line_and_the_module_still_imports(monkeypatch, tmp_path, missing):
    monkeypatch.setitem(sys.modules, missing, None)  # `import missing` now raises ImportError
    calls = [
        lambda: export_onnx(VGG(width=0.0625), tmp_path / "m.onnx"),
        lambda: check_onnx(VGG(width=0.0625), tmp_path / "m.onnx"),
        lambda: onnx_latency({"m": tmp_path / "m.onnx"}),
    ]
    for call in calls:
        with pytest.raises(PrunelabError) as e:
            call()
        assert str(e.value) == MISSING
    assert not (tmp_path / "m.onnx").exists()
    for name in ("onnx", "onnxscript", "onnxruntime"):
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delitem(sys.modules, "prunelab.onnx_export")
    monkeypatch.setattr(prunelab, "onnx_export", onnx_export)  # the import below rebinds it
    fresh = importlib.import_module("prunelab.onnx_export")
    assert fresh.MISSING == MISSING
