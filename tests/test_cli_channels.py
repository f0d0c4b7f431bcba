"""Channel pruning from the command line: the course lab's figures, a reload with no
flags, and bad input answered in one line with nothing written."""

import json

import pytest
import torch
from torch import nn

from prunelab.app.cli import main
from prunelab.errors import PrunelabError
from prunelab.models import build_model, load_model, save_checkpoint


@pytest.fixture(scope="module")
def d(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli-channels")
    torch.manual_seed(0)
    save_checkpoint(d / "vgg.pth", build_model("vgg", {"width": 1.0}))
    save_checkpoint(d / "rn.pth", build_model("resnet20", {"width": 0.5}))
    (d / "unknown.json").write_text(json.dumps({"backbone.conv99": 0.5}))
    (d / "classifier.json").write_text(json.dumps({"classifier": 0.5}))
    torch.save({"state_dict": nn.Linear(3, 2).state_dict()}, d / "bare.pth")
    return d


def test_lab_parity_through_the_cli(d, capsys):
    out = d / "lab.pth"
    assert main(["prune", str(d / "vgg.pth"), "--channels", "0.3", "--importance", "lab",
                 "--out", str(out)]) == 0  # fmt: skip
    model, ck = load_model(out)  # no flags: rebuilt from the kept counts
    convs = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs == [45, 90, 179, 179, 358, 358, 358, 512]
    assert main(["sparsity", str(out), "--json", str(d / "s.json")]) == 0
    rep = json.loads((d / "s.json").read_text())
    assert rep["params"] == 5_013_666 and rep["macs"] == 305_097_920


def test_residual_model_round_to_and_reload(d):
    out = d / "rn-slim.pth"
    assert main(["prune", str(d / "rn.pth"), "--channels", "0.5", "--round-to", "4",
                 "--out", str(out)]) == 0  # fmt: skip
    model, _ = load_model(out)
    convs = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(c % 4 == 0 for c in convs) and model(torch.rand(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--channels", "1.0"], "outside [0, 1)"),
        (["--channels", "-0.1"], "outside [0, 1)"),
        (["--channels", "0.5", "--round-to", "0"], "--round-to"),
        (["--channels", "0.5", "--importance", "taylor"], "invalid choice"),
        (["--channel-plan", "unknown.json"], "backbone.conv99"),
        (["--channel-plan", "classifier.json"], "classifier"),
        (["--channels", "0.5", "--sparsity", "0.5"], "exactly one"),
    ],
)
def test_bad_channel_input_is_one_line(d, capsys, monkeypatch, extra, needle):
    monkeypatch.chdir(d)
    out = d / "never.pth"
    try:
        code = main(["prune", str(d / "vgg.pth"), *extra, "--out", str(out)])
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and needle in err and len(err.splitlines()) == 1, err
    assert not out.exists()


def test_channel_pruned_checkpoint_fine_tunes_without_masks(d, jpeg_root, cifar_cache, capsys):
    slim, out = d / "rn-ft-src.pth", d / "rn-ft.pth"
    assert main(["prune", str(d / "rn.pth"), "--channels", "0.5", "--out", str(slim)]) == 0
    argv = ["finetune", str(slim), "--data-dir", str(jpeg_root), "--cache-dir", str(cifar_cache),
            "--train-subset", "128", "--test-subset", "64", "--val-size", "0", "--epochs", "1",
            "--batch-size", "64", "--no-progress", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert "channel-pruned model" in capsys.readouterr().out
    model, ck = load_model(out)
    assert "masks" not in ck and ck["arch"]["channels"] == load_model(slim)[1]["arch"]["channels"]


def test_finetune_distils_from_the_dense_model(d, jpeg_root, cifar_cache):
    slim, out = d / "rn-kd-src.pth", d / "rn-kd.pth"
    assert main(["prune", str(d / "rn.pth"), "--channels", "0.5", "--out", str(slim)]) == 0
    argv = ["finetune", str(slim), "--data-dir", str(jpeg_root), "--cache-dir", str(cifar_cache),
            "--train-subset", "128", "--test-subset", "64", "--val-size", "0", "--epochs", "1",
            "--batch-size", "64", "--no-progress", "--distill", str(d / "rn.pth"),
            "--distill-weight", "0.7", "--temperature", "2", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    meta = load_model(out)[1]["meta"]
    assert meta["teacher"] == str(d / "rn.pth")
    assert meta["config"]["distill"] == 0.7 and meta["config"]["temperature"] == 2.0


def test_finetune_reuses_saved_teacher_logits_with_the_same_result(d, jpeg_root, cifar_cache):
    slim, logits = d / "rn-kd-src.pth", d / "teacher-logits"
    if not slim.exists():
        assert main(["prune", str(d / "rn.pth"), "--channels", "0.5", "--out", str(slim)]) == 0
    argv = ["finetune", str(slim), "--data-dir", str(jpeg_root), "--cache-dir", str(cifar_cache),
            "--train-subset", "128", "--test-subset", "64", "--val-size", "0", "--epochs", "2",
            "--batch-size", "64", "--no-progress", "--distill", str(d / "rn.pth"),
            "--teacher-logits", str(logits)]  # fmt: skip
    runs = []
    for name in ("first", "second"):
        assert main([*argv, "--out", str(d / f"rn-kd-{name}.pth")]) == 0
        runs.append(load_model(d / f"rn-kd-{name}.pth")[0].state_dict())
        assert sorted(p.name[-9:] for p in logits.iterdir()) == ["epoch0.pt", "epoch1.pt"]
    assert all(torch.equal(v, runs[1][k]) for k, v in runs[0].items())


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--distill-weight", "2"], "weight '2' is outside [0, 1]"),
        (["--temperature", "0"], "--temperature"),
        (["--distill", "missing.pth"], "missing.pth"),
        (["--teacher-logits", "kd-logits"], "--teacher-logits set distillation: give --distill"),
        (["--distill-weight", "0.7"], "--distill-weight set distillation: give --distill"),
        (["--temperature", "2", "--distill-weight", "1"], "--distill-weight, --temperature set"),
    ],
)
def test_bad_distillation_flags_are_one_line(d, capsys, extra, needle):
    out = d / "never-kd.pth"
    try:
        code = main(["finetune", str(d / "rn.pth"), *extra, "--out", str(out)])
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and needle in err and len(err.splitlines()) == 1, err
    assert not out.exists()


def test_teacher_logits_in_a_file_are_refused_before_work(d, capsys):
    out, teacher = d / "never-kd.pth", str(d / "rn.pth")
    argv = ["finetune", teacher, "--distill", teacher, "--teacher-logits", teacher]
    assert main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "rn.pth exists and is a file; expected a folder" in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_a_teacher_with_other_inputs_is_refused(d, tmp_path):
    from prunelab.app.steps import finetune_checkpoint
    from prunelab.train import TrainConfig

    torch.manual_seed(0)
    other = build_model("resnet20", {"width": 0.5})
    other.prunelab_arch = {**other.prunelab_arch, "normalize": {"mean": [0.5] * 3,
                                                                "std": [0.25] * 3}}  # fmt: skip
    save_checkpoint(tmp_path / "other.pth", other)
    with pytest.raises(PrunelabError, match="normalises its inputs"):
        finetune_checkpoint(d / "rn.pth", tmp_path / "o.pth", lambda: None,
                            TrainConfig(distill=0.5), dense=True,
                            teacher=tmp_path / "other.pth")  # fmt: skip
    assert not (tmp_path / "o.pth").exists()


def test_cli_importance_choices_are_the_library_ones():
    from prunelab.app.cli import IMPORTANCES
    from prunelab.channels import IMPORTANCES as LIBRARY

    assert IMPORTANCES == list(LIBRARY)


def test_scan_then_macs_and_latency_plans_then_prune(d, jpeg_root, cifar_cache, capsys):
    torch.manual_seed(0)
    save_checkpoint(d / "small.pth", build_model("vgg", {"width": 0.125}))
    data = ["--data-dir", str(jpeg_root), "--cache-dir", str(cifar_cache), "--no-progress",
            "--train-subset", "256", "--val-size", "64"]  # fmt: skip
    scan_dir = d / "scan"
    assert main(["sensitivity", str(d / "small.pth"), "--channels", "--ratios", "0.5",
                 "--calibrate", "128", "--out", str(scan_dir), *data]) == 0  # fmt: skip
    scan = json.loads((scan_dir / "channel_scan.json").read_text())
    assert scan["bn_recalibrated_on"] == 128 and scan["images"] == 64
    said = capsys.readouterr().out
    assert f"dense accuracy {scan['reference_accuracy']:.4f} with its BatchNorm" in said
    macs_plan, lat_plan = d / "macs.json", d / "lat.json"
    plan = ["plan", str(d / "small.pth"), "--channel-scan", str(scan_dir / "channel_scan.json")]
    assert main([*plan, "--macs", "0.6", "--out", str(macs_plan)]) == 0  # fmt: skip
    assert json.loads(macs_plan.read_text())["macs_fraction"] <= 0.6
    banded = d / "banded.json"
    assert main([*plan, "--macs", "0.6", "--band", "0.1", "--out", str(banded)]) == 0
    got = json.loads(banded.read_text())
    u = got["band"]["uniform_ratio"]
    assert got["macs_fraction"] <= 0.6 and got["band"]["width"] == 0.1
    assert all(u - 0.15 < r < u + 0.15 for r in got["plan"].values())
    assert main([*plan, "--macs", "0.6", "--widen", "1", "--out", str(d / "no.json")]) == 2
    assert not (d / "no.json").exists()
    # --rank-energy reaches the plan (this narrow VGG's conv0, 8 filters in 27 dimensions,
    # is not over-complete: no floor), and a share outside (0, 1) is refused
    ranked = d / "ranked.json"
    assert main([*plan, "--macs", "0.6", "--rank-energy", "0.9", "--out", str(ranked)]) == 0
    assert json.loads(ranked.read_text())["rank_floors"] == {"energy": 0.9}
    with pytest.raises(SystemExit) as bad:  # argparse refuses it, before anything is read
        main([*plan, "--macs", "0.6", "--rank-energy", "1", "--out", str(d / "no.json")])
    assert bad.value.code == 2 and not (d / "no.json").exists()
    assert "--rank-energy: '1' is outside (0, 1)" in capsys.readouterr().err
    assert main([*plan, "--latency", "0.8", "--widen", "1", "--out", str(lat_plan)]) == 0
    lat = json.loads(lat_plan.read_text())
    assert lat["speedup_target"] == pytest.approx(1.25) and lat["attempts"]
    assert isinstance(lat["widened"], list) and lat["widening_stopped"]["reason"]
    assert lat["layer_timings"]["layer_ms"] and lat["layer_timings"]["dense_ms"] > 0
    again = d / "again.json"  # made again from its own timings: the same plan, nothing timed
    replay = [*plan, "--latency", "0.8", "--widen", "1", "--timings", str(lat_plan)]
    assert main([*replay, "--out", str(again)]) == 0
    said = capsys.readouterr().out
    assert f"measured {lat['measured_speedup']:.2f}x faster than dense at batch 1" in said
    assert f"timings: 0 measured, {lat['timing_log']['timed']} read" in said
    same = json.loads(again.read_text())
    assert same["plan"] == lat["plan"] and same["channels"] == lat["channels"]
    assert same["timing_log"]["timed"] == 0
    assert same["timing_log"]["reused"] == lat["timing_log"]["timed"]
    for bad in (
        [*plan, "--macs", "0.6", "--timings", str(lat_plan)],  # --timings needs --latency
        [*plan, "--latency", "0.8", "--timings", str(macs_plan)],  # a plan without timings
        [*replay, "--latency-batch-size", "2"],  # timed at batch 1
    ):
        assert main([*bad, "--out", str(d / "bad.json")]) == 2
        assert not (d / "bad.json").exists()
    assert main(["prune", str(d / "small.pth"), "--channel-plan", str(lat_plan),
                 "--out", str(d / "lat-pruned.pth")]) == 0  # fmt: skip
    model, ck = load_model(d / "lat-pruned.pth")
    assert ck["arch"]["channels"] == lat["channels"]
