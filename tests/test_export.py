"""The compact export: exact reload at fp32, close at fp16, smaller than a state dict,
every index encoding invertible, and damaged files refused by name."""

import gzip
import io

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from prunelab.cli import main
from prunelab.errors import CheckpointError
from prunelab.export import (
    _encode_tensor,
    _positions,
    _relative,
    export_compressed,
    format_size_table,
    load_compressed,
    read_compressed,
    size_table,
)
from prunelab.models import VGG, save_checkpoint
from prunelab.pruning import Pruner


def fitted_vgg(width: float = 0.25) -> tuple[VGG, torch.Tensor]:
    """A random VGG whose BN statistics fit some images, so logits are far from constant."""
    torch.manual_seed(0)
    model = VGG(width)
    x = torch.rand(64, 3, 32, 32)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.1, 0.1)
    with torch.no_grad():
        model.train()(x)
    return model.eval(), x


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    d = tmp_path_factory.mktemp("export")
    model, x = fitted_vgg()
    save_checkpoint(d / "dense.pth", model)
    pruner = Pruner(model, 0.8)
    pruner.apply()
    save_checkpoint(d / "pruned.pth", model, masks=pruner.masks)
    return model, x, d


def test_fp32_export_reproduces_logits_exactly(pruned):
    model, x, d = pruned
    info = export_compressed(model, d / "m.plz")
    loaded = load_compressed(d / "m.plz")
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    encodings = {t["name"]: t["encoding"] for t in info["tensors"]}
    assert encodings["backbone.conv5.weight"] in ("bitmask", "rel8", "rel16")
    assert encodings["backbone.bn5.running_var"] == "raw"


def test_fp16_export_is_close_and_smaller(pruned):
    model, x, d = pruned
    full = export_compressed(model, d / "m32.plz")["bytes"]
    half = export_compressed(model, d / "m16.plz", fp16=True)["bytes"]
    assert half < 0.65 * full
    loaded = load_compressed(d / "m16.plz")
    with torch.no_grad():
        ref, out = model(x), loaded(x)
    assert torch.allclose(ref, out, atol=1e-2 * ref.abs().max().item())
    assert (ref.argmax(1) == out.argmax(1)).float().mean() >= 0.9
    for k, v in loaded.state_dict().items():  # zeros stay exactly where they were
        if k.endswith("conv3.weight"):
            assert torch.equal(v == 0, model.state_dict()[k] == 0)


def test_export_smaller_than_state_dict_at_08(pruned):
    model, _, d = pruned
    size = export_compressed(model, d / "m.plz")["bytes"]
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    plain = buf.getvalue()
    assert size < len(plain) / 3.5
    assert size < len(gzip.compress(plain))
    table = size_table(d / "dense.pth", d / "pruned.pth", d / "m.plz", model)
    rows = {r["key"]: r for r in table["rows"]}
    assert rows["export"]["bytes"] == size
    assert abs(rows["plain"]["bytes"] - len(plain)) < 4096  # (module metadata aside)
    assert rows["export"]["bytes"] > rows["nonzero"]["bytes"]  # the index is not free
    text = format_size_table(table)
    assert "theoretical" in text and f"{size:,}" in text


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 300_000), k=st.integers(0, 60), seed=st.integers(0, 2**31))
def test_relative_encodings_invert(n, k, seed):
    rng = np.random.default_rng(seed)
    pos = np.sort(rng.choice(n, size=min(k, n), replace=False))
    for kind in ("rel8", "rel16"):
        assert np.array_equal(_positions(_relative(pos, kind), kind), pos)


def test_smallest_encoding_is_chosen():
    dense = torch.randn(1000)
    assert _encode_tensor(dense, False)[0] == "raw"
    half = dense * (torch.arange(1000) % 2)
    assert _encode_tensor(half, False)[0] == "bitmask"  # 1 bit/position beats 1 byte/non-zero
    sparse = torch.zeros(200_000)
    sparse[[5, 70_000, 199_999]] = 1.0  # gaps beyond uint16 need escapes
    enc, arrays, _ = _encode_tensor(sparse, False)
    assert enc in ("rel8", "rel16") and sum(a.nbytes for a in arrays) < 1000


def test_damaged_files_are_refused_by_name(pruned, tmp_path):
    model, _, d = pruned
    export_compressed(model, tmp_path / "good.plz")
    good = (tmp_path / "good.plz").read_bytes()
    cases = {
        "trunc.plz": good[: len(good) // 2],
        "short.plz": good[:6],
        "flipped.plz": good[:-100] + bytes([good[-100] ^ 1]) + good[-99:],
        "notplz.plz": b"hello world, not a model",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(CheckpointError, match=name):
            load_compressed(tmp_path / name)


def test_cli_export_prints_size_table(pruned, capsys, tmp_path):
    _, _, d = pruned
    code = main(
        [
            "export",
            str(d / "pruned.pth"),
            "--out",
            str(tmp_path / "x.plz"),
            "--dense",
            str(d / "dense.pth"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "| dense checkpoint file |" in out and "x.plz" in out and "theoretical" in out
    assert load_compressed(tmp_path / "x.plz") is not None


def test_arch_record_rebuilds_registry_network(tmp_path):
    build = pytest.importorskip("prunelab.models").build_model
    from prunelab.models import arch_of, input_shape_of

    torch.manual_seed(0)
    model = build("resnet20", {"width": 0.25, "num_classes": 7}, input_shape=[3, 40, 40]).eval()
    Pruner(model, 0.6, scope="all").apply()
    info = export_compressed(model, tmp_path / "r.plz", arch=arch_of(model))
    assert info["arch"] == arch_of(model) and info["model"] == "CifarResNet"
    loaded = load_compressed(tmp_path / "r.plz")
    x = torch.rand(2, 3, 40, 40)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert input_shape_of(loaded) == (3, 40, 40)


def test_files_that_cannot_be_rebuilt_ask_for_a_model(tmp_path):
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(144, 2))
    export_compressed(net, tmp_path / "plain.plz")
    with pytest.raises(CheckpointError, match="without an architecture record: pass the model"):
        load_compressed(tmp_path / "plain.plz")
    arch = {"model": "mypkg.nets:tiny", "kwargs": {}}
    export_compressed(net, tmp_path / "user.plz", arch=arch)
    with pytest.raises(CheckpointError, match="never imports code named inside a file"):
        load_compressed(tmp_path / "user.plz")
    assert read_compressed(tmp_path / "user.plz")[1]["arch"] == arch
    other = nn.Sequential(nn.Conv2d(3, 5, 3), nn.Flatten(), nn.Linear(180, 2))
    with pytest.raises(CheckpointError, match="shape"):
        load_compressed(tmp_path / "plain.plz", other)
    with pytest.raises(CheckpointError, match="plain JSON"):
        export_compressed(net, tmp_path / "bad.plz", arch={"model": torch.ones(1)})


def test_tied_weights_stored_once_and_float64_exact(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(30, 30), nn.ReLU(), nn.Linear(30, 30)).double()
    net[2].weight = net[0].weight
    Pruner(net, 0.5, scope="all").apply()
    info = export_compressed(net, tmp_path / "t.plz")
    assert {"name": "2.weight", "alias": "0.weight"} in info["tensors"]
    fresh = nn.Sequential(nn.Linear(30, 30), nn.ReLU(), nn.Linear(30, 30)).double()
    fresh[2].weight = fresh[0].weight
    loaded = load_compressed(tmp_path / "t.plz", fresh)
    x = torch.rand(3, 30, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(net(x), loaded(x))
    assert loaded[2].weight is loaded[0].weight


def test_gray_vgg_rebuilds_without_arch(tmp_path):
    model = VGG(0.125, in_channels=1).eval()
    export_compressed(model, tmp_path / "g.plz")
    loaded = load_compressed(tmp_path / "g.plz")
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
