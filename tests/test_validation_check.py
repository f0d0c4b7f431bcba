"""The check for validation images the dense model trained on (app.validation_check)."""

from types import SimpleNamespace

import torch

from prunelab.app.steps import Splits
from prunelab.app.study import Study
from prunelab.app.validation_check import seen_validation, seen_warning
from prunelab.models import build_model


def _splits(model, shift: int) -> Splits:
    """Test labels the model's own predictions shifted by `shift` classes (0: all right)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8, generator=g)
    model.eval()
    with torch.no_grad():
        pred = model(x.float() / 255).argmax(1)
    y = (pred + shift) % 10
    empty = x[:0]
    return Splits(x, y, empty, y[:0], x, y, [str(i) for i in range(10)], "test", "fp")


def test_validation_far_above_test_is_reported_as_seen():
    model = build_model("vgg", {"width": 0.125})
    check = seen_validation(model, _splits(model, shift=1), 0.95, 40, seed=0)
    assert check["test_accuracy"] == 0.0 and check["images"] == 40 and check["seen"]
    line = seen_warning(check, "channel scan")
    assert "95.00 %" in line and "0.00 %" in line and "val/ folder" in line


def test_validation_level_with_test_is_not_reported():
    model = build_model("vgg", {"width": 0.125})
    check = seen_validation(model, _splits(model, shift=0), 0.99, 40, seed=0)
    assert check["test_accuracy"] == 1.0 and not check["seen"]
    assert seen_warning(check, "channel scan") is None


def test_only_scans_on_validation_images_of_a_checkpoint_are_checked(capsys):
    model = build_model("vgg", {"width": 0.125})
    splits = _splits(model, shift=1)

    def check(checkpoint, split):
        me = SimpleNamespace(model_spec={"checkpoint": checkpoint}, rec={"seed": 0})
        return Study.validation_check(me, model, splits, split, 0.9, 40, "channel scan")

    assert check(None, "val") is None  # a dense model the recipe trained never saw them
    assert check("dense.pth", "test") is None
    assert check("dense.pth", "val")["seen"]
    out = capsys.readouterr().out
    assert (
        "warning: the dense model scores 90.00 % on the validation images the channel scan" in out
    )


def test_reports_say_when_the_scan_ran_on_images_the_dense_model_trained_on():
    from prunelab.app.report import data_and_machine

    r = {
        "data": {"source": "cifar", "test_images": 10000},
        "environment": {"device": "cpu", "torch": "2", "prunelab": "0"},
        "validation_check": {
            "val_accuracy": 0.9545,
            "test_accuracy": 0.895,
            "images": 2000,
            "seen": True,
        },
    }
    text = "\n".join(data_and_machine(r))
    assert "probably trained on: the dense model scores 95.45 % on them and 89.50 %" in text
    r["validation_check"]["seen"] = False
    assert "trained on" not in "\n".join(data_and_machine(r))
    del r["validation_check"]  # results written before the check existed
    assert len(data_and_machine(r)) == 2
