"""bf16 requests fall back to fp32 (said once) where bf16 would only be slower."""

import pytest
import torch

from prunelab import precision
from prunelab.models import VGG
from prunelab.train import TrainConfig, evaluate, fit

CPU = torch.device("cpu")


@pytest.fixture()
def cpu_without_bf16(monkeypatch):
    monkeypatch.setattr(precision, "onednn_has_bf16", lambda: False)
    monkeypatch.setattr(precision, "_told", False)


def test_a_cpu_without_bf16_kernels_runs_fp32_and_says_so_once(cpu_without_bf16, capsys):
    assert precision.use_bf16(True, CPU) is False
    assert precision.use_bf16(True, CPU) is False
    err = capsys.readouterr().err
    assert err.count("running in fp32") == 1 and "bf16" in err
    assert precision.use_bf16(False, CPU) is False
    assert precision.use_bf16(True, torch.device("cuda")) is True  # GPUs keep bf16


def test_a_cpu_with_bf16_kernels_keeps_bf16(monkeypatch, capsys):
    monkeypatch.setattr(precision, "onednn_has_bf16", lambda: True)
    assert precision.use_bf16(True, CPU) is True
    assert capsys.readouterr().err == ""


def _trained(bf16: bool) -> VGG:
    torch.manual_seed(0)
    x, y = torch.randint(0, 256, (48, 3, 16, 16), dtype=torch.uint8), torch.arange(48) % 10
    model = VGG(0.125)
    fit(model, x, y, TrainConfig(epochs=1, batch_size=16, lr=0.05, bf16=bf16), progress=False)
    return model


def test_fit_and_evaluate_asked_for_bf16_run_fp32_there(cpu_without_bf16):
    a, b = _trained(True), _trained(False)
    for (n, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), n
    x, y = torch.randint(0, 256, (32, 3, 16, 16), dtype=torch.uint8), torch.arange(32) % 10
    assert torch.equal(
        evaluate(a, x, y, 10, bf16=True)["predictions"], evaluate(a, x, y, 10)["predictions"]
    )


def test_reports_say_when_bf16_ran_as_fp32(cpu_without_bf16, monkeypatch):
    from prunelab.app.steps import environment

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "bf16 requests ran fp32" in environment()["device"]
    monkeypatch.setattr(precision, "onednn_has_bf16", lambda: True)
    assert "bf16" not in environment()["device"]
