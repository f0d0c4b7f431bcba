"""Bad input about models and image trees: one line naming the problem, exit status 2, no
traceback, nothing written."""

import pytest
import torch
from PIL import Image
from test_cli_any_model import write_tree
from torch import nn

from prunelab.app.cli import main
from prunelab.models import save_checkpoint


@pytest.fixture(scope="module")
def d(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad-any")
    write_tree(d / "good", train=4, test=2)
    diff = write_tree(d / "differ", train=2, test=2)
    (diff / "test" / "blue").rename(diff / "test" / "purple")
    write_tree(d / "single", classes=("only",), train=2, test=2)
    mixed = write_tree(d / "mixed", train=2, test=2)
    Image.new("RGB", (24, 24)).save(mixed / "train" / "red" / "odd.png")
    torch.save({"state_dict": nn.Linear(3, 2).state_dict()}, d / "bare.pth")
    record = {"format": 2, "model": "resnet99", "kwargs": {}, "input_shape": [3, 32, 32],
              "normalize": None, "channels": None}  # fmt: skip
    save_checkpoint(d / "unknown_arch.pth", nn.Linear(3, 2), arch=record)
    from prunelab.models import VGG

    vgg = VGG(width=0.125).state_dict()
    nan = {**vgg, "backbone.conv2.weight": vgg["backbone.conv2.weight"].clone().fill_(float("nan"))}
    torch.save({"state_dict": nan}, d / "nan.pth")
    torch.save({"state_dict": vgg, "masks": [1, 2]}, d / "mask_list.pth")
    torch.save({"state_dict": vgg, "meta": "not a dict"}, d / "meta_str.pth")
    save_checkpoint(d / "gray.pth", VGG(width=0.125, in_channels=1))  # the trees are RGB
    save_checkpoint(d / "ten.pth", VGG(width=0.125))  # the good tree has 3 classes
    save_checkpoint(d / "three.pth", VGG(width=0.125, num_classes=3))
    return d


def cases(d):
    out = str(d / "out.pth")
    train = ["train", "--epochs", "1", "--batch-size", "2", "--val-size", "0", "--out", out]
    gray, good = d / "gray.pth", ["--data-dir", str(d / "good"), "--val-size", "0"]
    ft = ["--sparsity", "0.5", "--epochs", "1", "--batch-size", "4", *good, "--out", out]
    return [
        (["evaluate", str(d / "bare.pth"), "--data-dir", str(d / "good")], "--model"),
        (["evaluate", str(d / "unknown_arch.pth"), "--data-dir", str(d / "good")], "resnet99"),
        ([*train, "--data-dir", str(d / "differ")], "purple"),
        ([*train, "--data-dir", str(d / "single")], "class"),
        ([*train, "--data-dir", str(d / "mixed")], "--image-size"),
        ([*train, "--data-dir", str(d / "good"), "--image-size", "0"], "image-size"),
        ([*train, "--data-dir", str(d / "good"), "--device", "tpu"], "tpu"),
        ([*train, "--data-dir", str(d / "good"), "--device", "mps"], "mps"),
        ([*train, "--data-dir", str(d / "good"), "--seed", str(2**64)], "seed"),
        ([*train, "--data-dir", str(d / "good"), "--threads", "0"], "threads"),
        ([*train, "--data-dir", str(d / "good"), "--test-subset", "0"], "test-subset"),
        (["evaluate", str(d / "nan.pth"), "--data-dir", str(d / "good")], "backbone.conv2"),
        (["sparsity", str(d / "nan.pth")], "NaN"),
        (["finetune", str(d / "mask_list.pth"), "--out", out], "masks"),
        (["sparsity", str(d / "meta_str.pth")], "meta"),
        (["plan", str(d / "bare.pth"), "--model", "x:y", "--global", "--sparsity", "5"], "5"),
        # a grayscale model given RGB images: said before any work, with the flag that fixes it
        (["evaluate", str(gray), *good], "--image-channels 1"),
        (
            ["sensitivity", str(gray), *good, "--split", "test", "--out", str(d / "sens")],
            "--image-channels 1",
        ),
        (["finetune", str(gray), "--sparsity", "0.5", *good, "--out", out], "--image-channels 1"),
        (
            ["prune", str(gray), "--sparsity", "0.5", "--calibrate", "4", *good, "--out", out],
            "--image-channels 1",
        ),
        # a 10-class model (or teacher) fine-tuned on a 3-class tree: said before training
        (["finetune", str(d / "ten.pth"), *ft], "10 outputs"),
        (
            ["finetune", str(d / "three.pth"), *ft, "--distill", str(d / "ten.pth")],
            "teacher has 10",
        ),
    ]


def test_each_bad_input_is_one_line_exit_2_nothing_written(d, capsys, monkeypatch):
    monkeypatch.setenv("PRUNELAB_CACHE", str(d / "cache"))
    failures = []
    for argv, needle in cases(d):
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
        err = capsys.readouterr().err.strip()
        ok = code == 2 and needle in err and "Traceback" not in err and len(err.splitlines()) == 1
        if not ok or (d / "out.pth").exists():
            failures.append(f"{argv}: exit {code}, stderr {err!r}")
    assert failures == []
