"""`prunelab latency` and `prunelab export --onnx` from the command line."""

import json
import subprocess
import sys

import pytest
import torch

from prunelab.app.cli import main
from prunelab.models import VGG, save_checkpoint


@pytest.fixture(scope="module")
def cks(tmp_path_factory):
    d = tmp_path_factory.mktemp("lat")
    torch.manual_seed(0)
    save_checkpoint(d / "dense.pth", VGG(width=0.25))
    save_checkpoint(d / "narrow.pth", VGG(width=0.125))
    return d


def test_latency_times_dense_and_model_in_one_run(cks, capsys):
    out = cks / "lat.json"
    argv = ["latency", str(cks / "narrow.pth"), "--dense", str(cks / "dense.pth")]
    fig = cks / "lat.png"
    timing = ["--batch-size", "1,4", "--reps", "3", "--warmup", "1"]
    assert main([*argv, *timing, "--json", str(out), "--figure", str(fig)]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    rows = {(r["model"], r["batch_size"]): r for r in result["rows"]}
    assert set(rows) == {("dense", 1), ("dense", 4), ("narrow", 1), ("narrow", 4)}
    assert rows[("dense", 1)]["speedup"] == 1.0
    assert result["baseline"] == "dense" and "median" in printed
    assert png_size(fig)[0] == 2 * 660  # one panel per batch size
    assert result["settings"]["primed"] is True
    assert main([*argv, *timing, "--cold", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["settings"]["primed"] is False


def test_latency_layers_names_each_layers_kernel_beside_the_dense_one(cks, capsys):
    out = cks / "layers.json"
    argv = ["latency", str(cks / "narrow.pth"), "--dense", str(cks / "dense.pth"), "--layers"]
    fig = cks / "layers.png"
    timing = ["--batch-size", "1", "--reps", "3", "--warmup", "1"]
    assert main([*argv, *timing, "--json", str(out), "--figure", str(fig)]) == 0
    width, height = png_size(fig)
    assert width == 660 and height > 120 * 0.45 * 2 * 9  # a bar per model for each of 9 layers
    printed = capsys.readouterr().out
    layers = json.loads(out.read_text())["layers"]
    narrow, dense = layers["1"]["narrow"], layers["1"]["dense"]
    assert list(narrow) == list(dense) and "backbone.conv7" in narrow
    for name, row in narrow.items():
        assert row["kernel"] in ("oneDNN", "ATen im2col", "BLAS addmm"), (name, row)
        assert row["macs"] < dense[name]["macs"] and row["ms"] > 0
        assert f"| {name} | {row['macs']:,} | {row['kernel']} |" in printed
    assert "| dense kernel |" in printed


def test_latency_layers_refuses_bf16(cks, capsys):
    out = cks / "refused.json"
    assert main(["latency", str(cks / "narrow.pth"), "--layers", "--bf16", "--json", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--layers" in err and "Traceback" not in err and not out.exists()


def test_latency_figure_into_a_folder_is_refused_before_timing(cks, capsys):
    out = cks / "not-written.json"
    argv = ["latency", str(cks / "narrow.pth"), "--json", str(out), "--figure", str(cks)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "is a directory" in err and "Traceback" not in err and not out.exists()


def png_size(path):
    """(width, height) in pixels, read from the PNG header."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def test_latency_refuses_bad_batch_sizes(cks, capsys):
    with pytest.raises(SystemExit) as e:
        main(["latency", str(cks / "narrow.pth"), "--batch-size", "0"])
    assert e.value.code == 2 and "must be >= 1" in capsys.readouterr().err


def test_export_onnx_checks_logits_and_times_it(cks, capsys):
    pytest.importorskip("onnxruntime", reason="the optional ONNX packages are not installed")
    onnx = cks / "narrow.onnx"
    argv = [
        "export",
        str(cks / "narrow.pth"),
        "--onnx",
        str(onnx),
        "--dense",
        str(cks / "dense.pth"),
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert onnx.is_file() and "logits match PyTorch" in printed and "dense" in printed


def test_export_onnx_without_the_extra_says_how_to_install(cks, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    monkeypatch.setitem(sys.modules, "onnx", None)
    out = cks / "never.onnx"
    assert main(["export", str(cks / "narrow.pth"), "--onnx", str(out)]) == 2
    err = capsys.readouterr().err
    assert "pip install" in err and len(err.strip().splitlines()) == 1 and not out.exists()


def test_a_reader_that_leaves_early_gets_no_traceback_and_the_files_are_written(cks):
    """`prunelab latency ... | head`: the pipe closes before prunelab prints; it stops quietly,
    and the JSON and figure asked for are written all the same."""
    out, fig = cks / "piped.json", cks / "piped.png"
    argv = ["latency", str(cks / "narrow.pth"), "--batch-size", "1", "--reps", "2"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "prunelab", *argv, "--json", str(out), "--figure", str(fig)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()  # before the child has imported torch, let alone printed
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 1
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    assert json.loads(out.read_text())["rows"] and png_size(fig)[0] == 660
