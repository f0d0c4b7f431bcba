import pytest
import torch

from prunelab.errors import CheckpointError
from prunelab.models import VGG, check_fits, load_model, read_checkpoint, save_checkpoint

PLAN = [64, 128, 256, 256, 512, 512, 512, 512]


def pretrained_like_state() -> dict[str, torch.Tensor]:
    """A state dict with exactly the published checkpoint's key names and shapes."""
    sd, cin = {}, 3
    for i, c in enumerate(PLAN):
        sd[f"backbone.conv{i}.weight"] = torch.randn(c, cin, 3, 3)
        for k in ("weight", "bias", "running_mean", "running_var"):
            sd[f"backbone.bn{i}.{k}"] = torch.rand(c)
        sd[f"backbone.bn{i}.num_batches_tracked"] = torch.tensor(7)
        cin = c
    sd["classifier.weight"] = torch.randn(10, 512)
    sd["classifier.bias"] = torch.randn(10)
    return sd


def test_strict_load_of_pretrained_key_names(tmp_path):
    sd = pretrained_like_state()
    VGG(1.0).load_state_dict(sd, strict=True)
    for obj in ({"state_dict": sd, "epoch": 3}, sd):  # wrapped and bare
        path = tmp_path / "ck.pth"
        torch.save(obj, path)
        model, ck = load_model(path)
        assert ck["width"] == 1.0
        assert torch.equal(model.backbone.conv5.weight, sd["backbone.conv5.weight"])


def test_width_scales_channels_and_forward():
    m = VGG(0.25)
    assert m.backbone.conv0.out_channels == 16 and m.classifier.in_features == 128
    assert m(torch.rand(3, 3, 32, 32)).shape == (3, 10)
    with pytest.raises(ValueError, match="width"):
        VGG(0)


def test_save_roundtrip_keeps_width_meta_and_masks(tmp_path):
    m = VGG(0.125)
    masks = {"backbone.conv0.weight": torch.rand_like(m.backbone.conv0.weight) > 0.5}
    path = save_checkpoint(tmp_path / "a.pth", m, {"test_accuracy": 0.5}, masks=masks)
    ck = read_checkpoint(path)
    assert ck["width"] == 0.125 and ck["meta"]["test_accuracy"] == 0.5
    assert torch.equal(ck["masks"]["backbone.conv0.weight"], masks["backbone.conv0.weight"])
    plain = VGG(0.125)
    plain.load_state_dict(ck["state_dict"], strict=True)  # no special code needed
    assert not list(tmp_path.glob(".*tmp"))


def test_mismatch_names_key_and_both_shapes(tmp_path):
    sd = VGG(0.5).state_dict()
    with pytest.raises(
        CheckpointError, match=r"backbone.conv0.weight.*\(32, 3, 3, 3\).*\(64, 3, 3, 3\)"
    ):
        check_fits(VGG(1.0), sd)
    sd2 = dict(VGG(1.0).state_dict())
    sd2["classifier.weight"] = torch.zeros(10, 256)
    torch.save({"state_dict": sd2}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=r"classifier.weight.*\(10, 256\).*\(10, 512\)"):
        load_model(tmp_path / "bad.pth")


def test_truncated_and_missing_and_not_a_checkpoint(tmp_path):
    path = save_checkpoint(tmp_path / "t.pth", VGG(0.125))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="t.pth.*truncated or corrupt"):
        load_model(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nope.pth")
    torch.save({"a": 1}, tmp_path / "x.pth")
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_model(tmp_path / "x.pth")
    (tmp_path / "plan.json").write_text('{"plan": {}}')  # a plan given where a model goes
    with pytest.raises(CheckpointError, match=r"plan.json is not a PyTorch file .*b'\{\"pl'"):
        load_model(tmp_path / "plan.json")


def test_url_checkpoint_sha256_checked(tmp_path, monkeypatch):
    import prunelab.models as models

    src = save_checkpoint(tmp_path / "src.pth", VGG(0.125))
    url = src.resolve().as_uri()
    monkeypatch.setitem(models.KNOWN_SHA256, url, "0" * 64)
    with pytest.raises(Exception, match="sha256 mismatch"):
        load_model(url, cache=tmp_path / "cache")
    assert not list((tmp_path / "cache").rglob("*.pth"))
    monkeypatch.delitem(models.KNOWN_SHA256, url)
    model, _ = load_model(url, cache=tmp_path / "cache")
    assert model.width == 0.125
