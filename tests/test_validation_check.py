"""The check for validation images a checkpoint trained on (app.validation_check)."""

from types import SimpleNamespace

import torch

from prunelab.app import steps
from prunelab.app.steps import Splits
from prunelab.app.study import Study
from prunelab.app.validation_check import (
    fine_tune_check,
    fine_tune_warning,
    gap_is_seen,
    seen_validation,
    seen_warning,
)
from prunelab.models import build_model, load_model, save_checkpoint
from prunelab.train import FitResult, TrainConfig


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
    splits = _splits(model, shift=1)
    check = seen_validation(model, (splits.test_x, splits.test_y), 10, 0.95, 40, None)
    assert check["test_accuracy"] == 0.0 and check["images"] == 40 and check["seen"]
    line = seen_warning(check, "channel scan")
    assert "95.00 %" in line and "0.00 %" in line and "val/ folder" in line


def test_validation_level_with_test_is_not_reported():
    model = build_model("vgg", {"width": 0.125})
    splits = _splits(model, shift=0)
    check = seen_validation(model, (splits.test_x, splits.test_y), 10, 0.99, 40, None)
    assert check["test_accuracy"] == 1.0 and not check["seen"]
    assert seen_warning(check, "channel scan") is None


def test_only_scans_on_validation_images_of_a_read_checkpoint_are_checked(capsys):
    model = build_model("vgg", {"width": 0.125})
    splits = _splits(model, shift=1)

    def check(checkpoint, split, source):
        # the record Study.dense_model reads back (checkpoint: the recipe's [model] entry)
        me = SimpleNamespace(model_spec={"checkpoint": checkpoint}, rec={"seed": 0},
                             dense_source=source)  # fmt: skip
        return Study.validation_check(me, model, splits, split, 0.9, 40, "channel scan")

    read = "checkpoint dense.pth"
    assert check(None, "val", "trained by prunelab") is None  # it never saw them
    # a checkpoint URL that could not be reached: the recipe trained its own
    assert check("https://x/dense.pth", "val", "trained by prunelab (4 epochs, 9 s)") is None
    assert check("dense.pth", "test", read) is None
    assert check("dense.pth", "val", read)["seen"]
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


def test_a_gap_must_beat_sampling_noise_as_well_as_three_points():
    assert gap_is_seen(0.9545, 2000, 0.895, 2000)  # the shared VGG's measured gap
    assert not gap_is_seen(0.92, 2000, 0.895, 2000)  # 2.5 points: under SEEN_GAP
    # 20 validation images all right beside 95 % on test: 5 points, but 20 images say little
    assert not gap_is_seen(1.0, 20, 0.95, 10000)
    assert gap_is_seen(1.0, 2000, 0.95, 10000)


def _history(*vals):
    return FitResult(
        history=[{"epoch": i + 1, "val_accuracy": v} for i, v in enumerate(vals)],
        best_epoch=1 + max(range(len(vals)), key=lambda i: vals[i]),
    )


def test_a_fine_tune_is_judged_on_the_epoch_it_kept():
    res = _history(0.93, 0.91)
    best = fine_tune_check(res, TrainConfig(keep_best=True), 5000, 0.895, 10000)
    last = fine_tune_check(res, TrainConfig(keep_best=False), 5000, 0.895, 10000)
    assert best["epoch"] == 1 and best["seen"] and best["val_accuracy"] == 0.93
    assert last["epoch"] == 2 and not last["seen"]  # 91 %: 1.5 points above test
    line = fine_tune_warning(best, "finetune")
    assert "finetune scored 93.00 % on its 5,000 validation images and kept its best" in line
    assert "89.50 % on the 10,000 test images" in line
    assert "kept its best" not in fine_tune_warning({**last, "seen": True}, "ft")
    assert fine_tune_warning(last, "finetune") is None
    no_val = FitResult(history=[{"epoch": 1}])
    assert fine_tune_check(no_val, TrainConfig(keep_best=True), 5000, 0.9, 10000) is None


def test_fine_tuning_warns_and_records_when_validation_reads_high(tmp_path, monkeypatch, capsys):
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "dense.pth", build_model("vgg", {"width": 0.125}))
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (10, 3, 32, 32), dtype=torch.uint8, generator=g)
    # every test image once with each label: 10 % right whatever the model predicts
    test_x, test_y = x.repeat_interleave(10, 0), torch.arange(10).repeat(10)
    splits = Splits(x, test_y[:10], test_x, test_y, test_x, test_y, [str(i) for i in range(10)],
                    "test", "fp")  # fmt: skip
    # training is not what is tested here: the fit reports 60 % on validation at epoch 1
    monkeypatch.setattr(steps, "finetune", lambda *a, **k: (_history(0.6, 0.3), {}))
    steps.finetune_checkpoint(tmp_path / "dense.pth", tmp_path / "ft.pth", splits,
                              TrainConfig(keep_best=True), dense=True, desc="ft")  # fmt: skip
    assert (
        "prunelab: warning: ft scored 60.00 % on its 100 validation images"
        in capsys.readouterr().out
    )
    _, ck = load_model(tmp_path / "ft.pth")
    check = ck["meta"]["validation_check"]
    assert check["seen"] and check["test_accuracy"] == 0.1 and check["epoch"] == 1
