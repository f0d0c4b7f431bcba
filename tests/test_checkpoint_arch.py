"""Checkpoints record their architecture: registry models and old VGG files load with no flags,
user networks load by naming their package.module:factory, and nothing guesses silently."""

import sys
import uuid

import pytest
import torch
from model_matrix import MATRIX
from test_models import pretrained_like_state

from prunelab.errors import CheckpointError, PrunelabError
from prunelab.models import (
    REGISTRY,
    VGG,
    ModelError,
    build_model,
    input_shape_of,
    load_model,
    normalize_of,
    parse_model_args,
    read_checkpoint,
    resnet20,
    save_checkpoint,
)

USER_MODULE = """
import torch
from torch import nn


class Tiny(nn.Module):
    def __init__(self, hidden=4, num_classes=10):
        super().__init__()
        self.conv = nn.Conv2d(1, hidden, 3)
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3)))


def tiny(hidden=4, num_classes=10):
    return Tiny(hidden, num_classes)


def flexible(**kw):
    flexible.seen = dict(kw)
    return Tiny(num_classes=kw.get("num_classes", 10))


def raises(depth=1):
    raise ValueError("depth must be even\\nsecond line")


def returns_int():
    return 42


NOT_CALLABLE = 3
"""


def one_line(excinfo) -> str:
    text = str(excinfo.value)
    assert "\n" not in text
    return text


def same_logits(a, b, shape, n=2) -> bool:
    x = torch.rand(n, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return torch.equal(a.eval()(x), b.eval()(x))


def randomize_bn(model):
    """Non-trivial BN statistics, so a round trip that drops buffers cannot pass."""
    g = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g))
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A user's model file in a fresh working directory, importable only as `python -m` would."""
    name = f"usernet_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(USER_MODULE)
    (tmp_path / f"{name}_broken.py").write_text("import no_such_package_xyz\n")
    (tmp_path / f"{name}_boom.py").write_text("raise RuntimeError('boom at import')\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    yield name
    for mod in (name, f"{name}_broken", f"{name}_boom"):
        sys.modules.pop(mod, None)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_registry_round_trip_needs_no_flags(tmp_path, name):
    model = randomize_bn(build_model(name, {"width": 0.25}, num_classes=7, in_channels=1))
    assert model.prunelab_arch["kwargs"] == {"width": 0.25, "num_classes": 7, "in_channels": 1}
    path = save_checkpoint(tmp_path / "m.pth", model, {"note": "x"})
    loaded, ck = load_model(path)
    assert type(loaded) is type(model) and ck["arch"] == model.prunelab_arch
    assert loaded.prunelab_arch == model.prunelab_arch and ck["meta"] == {"note": "x"}
    state, got = model.state_dict(), loaded.state_dict()
    assert state.keys() == got.keys() and all(torch.equal(state[k], got[k]) for k in state)
    assert same_logits(model, loaded, (1, 32, 32))
    assert ("width" in ck) == (name == "vgg")


@pytest.mark.parametrize("case", MATRIX, ids=str)
def test_every_matrix_model_round_trips(tmp_path, monkeypatch, case):
    monkeypatch.setattr(sys, "path", list(sys.path))
    specs = {
        "vgg": ("vgg", {"width": 0.125}),
        "resnet20": ("resnet20", {"width": 0.5}),
        "mobilenetv2": ("mobilenetv2", {"width": 0.25}),
        "biased_conv": ("model_matrix:BiasedConvNet", {"num_classes": 5}),
        "mlp": ("model_matrix:MLP", {"num_classes": 3, "size": 16}),
        "gray_vgg": ("vgg", {"width": 0.125, "in_channels": 1}),
        "resnet20_40px": ("resnet20", {"width": 0.5, "num_classes": 7}),
    }
    spec, kwargs = specs[case.name]
    model = build_model(spec, kwargs, input_shape=case.input_shape)
    model.load_state_dict(case.build().state_dict())  # the same network as the matrix's
    assert input_shape_of(model) == case.input_shape
    path = save_checkpoint(tmp_path / "m.pth", model)
    loaded, _ = load_model(path, model=spec if ":" in spec else None)
    assert input_shape_of(loaded) == case.input_shape
    assert same_logits(model, loaded, case.input_shape)


def test_user_factory_round_trip_needs_the_name_again(tmp_path, user_module):
    spec = f"{user_module}:tiny"
    norm = {"mean": [0.5], "std": [0.25]}
    model = build_model(spec, {"hidden": 3}, num_classes=5, in_channels=1, input_shape=[1, 8, 8],
                        normalize=norm)  # fmt: skip
    # in_channels is not a parameter of tiny(), so it is not passed (nor recorded)
    assert model.prunelab_arch["kwargs"] == {"hidden": 3, "num_classes": 5}
    assert input_shape_of(model) == (1, 8, 8) and normalize_of(model) == norm
    path = save_checkpoint(tmp_path / "u.pth", model)

    sys.modules.pop(user_module)
    with pytest.raises(CheckpointError) as e:
        load_model(path)
    assert f"was made from {spec}; pass --model {spec}" in one_line(e)
    assert "never imports code named inside a file" in str(e.value)
    assert user_module not in sys.modules  # refusing did not import the named code

    loaded, ck = load_model(path, model=spec)
    assert same_logits(model, loaded, (1, 8, 8))
    assert ck["arch"] == model.prunelab_arch and normalize_of(loaded) == norm


def test_double_star_kwargs_counts_as_accepting(user_module):
    model = build_model(f"{user_module}:flexible", num_classes=3, in_channels=1)
    assert sys.modules[user_module].flexible.seen == {"num_classes": 3, "in_channels": 1}
    assert model.prunelab_arch["input_shape"] == [1, 32, 32]


@pytest.mark.parametrize(
    "suffix, expected",
    [
        ("_missing:tiny", r"module {m}_missing does not import \(ModuleNotFoundError: No module"),
        ("_broken:net", r"module {m}_broken does not import \(ModuleNotFoundError: .*no_such_pa"),
        ("_boom:net", r"module {m}_boom does not import \(RuntimeError: boom at import\)"),
        (":nope", r"{m}:nope: {m} has no attribute 'nope'"),
        (":NOT_CALLABLE", r"{m}.NOT_CALLABLE is a int, expected a callable"),
        (":raises", r"{m}:raises: building it raised ValueError: depth must be even$"),
        (":returns_int", r"{m}:returns_int returned a int \(42\), expected an nn.Module"),
    ],
)
def test_bad_factories_are_one_line_errors(user_module, suffix, expected):
    with pytest.raises(ModelError, match=expected.format(m=user_module)) as e:
        build_model(f"{user_module}{suffix}")
    one_line(e)


@pytest.mark.parametrize(
    "spec, expected",
    [
        (
            "alexnet",
            r"unknown model 'alexnet': expected one of mobilenetv2, resnet20, resnet56, "
            r"vgg, or package.module:factory",
        ),  # fmt: skip
        ("mypkg.mynet", r"unknown model 'mypkg.mynet'.*package.module:factory"),
        ("a:b:c", r"'a:b:c' is malformed: expected package.module:factory"),
        ("", "model must be a name"),
    ],
)
def test_bad_names_are_one_line_errors(spec, expected):
    with pytest.raises(ModelError, match=expected) as e:
        build_model(spec)
    one_line(e)
    assert isinstance(e.value, PrunelabError)


def test_build_model_argument_errors():
    with pytest.raises(ModelError, match=r"vgg has no argument 'depth' \(it takes: width, num"):
        build_model("vgg", {"depth": 3})
    with pytest.raises(ModelError, match="num_classes=10 disagrees with the 7 asked for"):
        build_model("vgg", {"num_classes": 10}, num_classes=7)
    with pytest.raises(ModelError, match=r"vgg: building it raised ValueError: width must be"):
        build_model("vgg", {"width": -1})
    with pytest.raises(ModelError, match="input_shape"):
        build_model("vgg", {"width": 0.125}, in_channels=1, input_shape=[3, 32, 32])
    with pytest.raises(ModelError, match="plain values"):
        build_model("vgg", {"width": object()})
    assert build_model("VGG", {"width": 0.125}).prunelab_arch["model"] == "vgg"


def test_parse_model_args():
    got = parse_model_args(
        ["width=0.5", "depth=3", "flag=true", "off=False", "sizes=[1, 2]", "name=abc", "e="]
    )
    assert got == {"width": 0.5, "depth": 3, "flag": True, "off": False, "sizes": [1, 2],
                   "name": "abc", "e": ""}  # fmt: skip
    assert parse_model_args([]) == {}
    for bad, msg in [("width", "expected key=value"), ("=3", "expected key=value"),
                     ("1x=2", "expected key=value")]:  # fmt: skip
        with pytest.raises(ModelError, match=msg):
            parse_model_args([bad])
    with pytest.raises(ModelError, match="width is given twice"):
        parse_model_args(["width=1", "width=2"])


def test_input_shape_and_normalize_defaults():
    assert input_shape_of(VGG(0.125, in_channels=1)) == (1, 32, 32)  # made without a record
    assert input_shape_of(torch.nn.Linear(2, 2)) == (3, 32, 32)
    assert normalize_of(torch.nn.Linear(2, 2)) is None
    m = build_model("resnet20", {"width": 0.25}, input_shape=(3, 40, 40))
    assert input_shape_of(m) == (3, 40, 40) and normalize_of(m) is None


def test_old_format_vgg_files_load_with_no_flags(tmp_path):
    m = randomize_bn(VGG(0.125, num_classes=7, in_channels=1))
    old = {"state_dict": m.state_dict(), "meta": {"a": 1}, "width": 0.125}  # pre-record writer
    for i, obj in enumerate((old, m.state_dict())):
        torch.save(obj, tmp_path / f"{i}.pth")
        loaded, ck = load_model(tmp_path / f"{i}.pth")
        assert ck["width"] == 0.125 and ck["arch"]["model"] == "vgg"
        assert ck["arch"]["kwargs"] == {"width": 0.125, "num_classes": 7, "in_channels": 1}
        assert ck["arch"]["input_shape"] == [1, 32, 32] and loaded.prunelab_arch == ck["arch"]
        assert same_logits(m, loaded, (1, 32, 32))


def test_published_like_state_loads_with_no_flags(tmp_path):
    torch.save({"state_dict": pretrained_like_state()}, tmp_path / "pub.pth")
    model, ck = load_model(tmp_path / "pub.pth")
    assert isinstance(model, VGG) and model.width == 1.0
    assert ck["arch"] == {"format": 2, "model": "vgg", "input_shape": [3, 32, 32],
                          "kwargs": {"width": 1.0, "num_classes": 10, "in_channels": 3},
                          "normalize": None, "channels": None}  # fmt: skip
    assert read_checkpoint(tmp_path / "pub.pth")["arch"] == ck["arch"]


def test_vgg_guess_that_does_not_fit_says_it_guessed(tmp_path):
    sd = dict(VGG(0.125).state_dict())
    sd["extra.weight"] = torch.zeros(2)
    torch.save(sd, tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match=r"'extra.weight'.*read as a VGG.*pass --model"):
        load_model(tmp_path / "odd.pth")


def test_bare_state_of_another_network_needs_model(tmp_path):
    net = randomize_bn(resnet20(width=0.5))
    torch.save(net.state_dict(), tmp_path / "r.pth")
    with pytest.raises(CheckpointError) as e:
        load_model(tmp_path / "r.pth")
    assert one_line(e).endswith(
        "has no architecture record: pass --model NAME or package.module:factory"
    )
    loaded, ck = load_model(tmp_path / "r.pth", model="resnet20", model_args={"width": 0.5})
    assert same_logits(net, loaded, (3, 32, 32)) and ck["arch"]["model"] == "resnet20"
    with pytest.raises(CheckpointError, match=r"conv1.weight.*\(8, 3, 3, 3\).*\(16, 3, 3, 3\)"):
        load_model(tmp_path / "r.pth", model="resnet20")  # wrong width: named, not half-loaded


def test_model_given_reuses_the_records_arguments_when_names_match(tmp_path):
    m = build_model("resnet20", {"width": 0.25}, num_classes=4)
    path = save_checkpoint(tmp_path / "r.pth", m)
    loaded, _ = load_model(path, model="resnet20")  # kwargs from the record
    assert same_logits(m, loaded, (3, 32, 32))
    # other arguments given: num_classes still comes from the record
    loaded, ck = load_model(path, model="resnet20", model_args={"width": 0.25})
    assert ck["arch"]["kwargs"] == {"width": 0.25, "num_classes": 4}


def test_unknown_format_and_unknown_model_in_record(tmp_path):
    m = VGG(0.125)
    path = save_checkpoint(tmp_path / "a.pth", m, arch={"model": "alexnet"})
    with pytest.raises(CheckpointError, match=r"names unknown model 'alexnet' \(known: mob"):
        load_model(path)
    obj = torch.load(path, weights_only=True)
    obj["arch"]["format"] = 3
    torch.save(obj, tmp_path / "f3.pth")
    with pytest.raises(CheckpointError, match="record format 3 is not supported"):
        load_model(tmp_path / "f3.pth")


def test_saved_files_hold_plain_types_only(tmp_path):
    m = build_model("vgg", {"width": (0.125)}, input_shape=(3, 32, 32))
    path = save_checkpoint(tmp_path / "p.pth", m, masks=None)
    obj = torch.load(path, weights_only=True)  # raises if anything but tensors/plain types
    assert obj["arch"]["input_shape"] == [3, 32, 32] and obj["width"] == 0.125
    plain = torch.load(
        save_checkpoint(tmp_path / "q.pth", torch.nn.Linear(2, 2)), weights_only=True
    )
    assert plain["arch"] is None and "width" not in plain
