"""The sensitivity scan equals plain re-evaluation (prune one layer alone, evaluate, restore)
exactly on every model: the test matrix, a residual network, a model with a stem before its
`backbone`, in-place ops, and a model torch.fx cannot trace."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from model_matrix import MATRIX
from torch import nn

from prunelab import precision
from prunelab.fold import fold_batchnorm
from prunelab.pruning import _layers_or_raise, fine_grained_mask
from prunelab.sensitivity import sensitivity_scan

SPARSITIES = (0.5, 0.9)
N = 64


def _bn_stats(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics, so folding and pruning move the logits."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.1)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
    return model.eval()


def _some(names: list[str], k: int = 6) -> list[str]:
    """About k layers spread over the network, always the first and the last."""
    step = max(1, len(names) // k)
    return list(dict.fromkeys([*names[::step], names[-1]]))


def _varied(x: torch.Tensor) -> torch.Tensor:
    """Random images plus a random brightness per image and channel: uniform noise alone
    pools to nearly the same features, so an untrained net predicts one class for all."""
    g = torch.Generator().manual_seed(5)
    return x + 2 * torch.randn(len(x), x.shape[1], *([1] * (x.dim() - 2)), generator=g)


@torch.no_grad()
def _labels(model: nn.Module, x: torch.Tensor, k: int) -> torch.Tensor:
    """Random labels, except that every other image is labelled as the dense model predicts:
    accuracy then sits well inside (0, 1) and a changed prediction shows."""
    y = torch.randint(0, k, (len(x),), generator=torch.Generator().manual_seed(1))
    y[::2] = model(x[::2]).argmax(1)
    return y


@torch.no_grad()
def plain_reference(model, x, y, layers, fold_bn, channels_last):
    """The definition: per layer and sparsity, prune that layer alone, run the model, restore."""
    work = fold_batchnorm(model, example=x[:16]) if fold_bn else copy.deepcopy(model).eval()
    if channels_last and x.dim() == 4:
        work.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    ranked = dict(model.named_modules())
    mods = dict(work.named_modules())

    def acc() -> float:
        return int((work(x).argmax(1) == y).sum()) / len(y)

    out = {"dense": acc()}
    for n in layers:
        w = mods[n].weight
        original = w.detach().clone()
        accs = []
        for s in SPARSITIES:
            w.mul_(fine_grained_mask(ranked[n].weight, s))
            accs.append(acc())
            w.copy_(original)
        out[n] = accs
    return out


def _check(model, x, y, layers, fold_bn=True, channels_last=False, **kw):
    got = sensitivity_scan(
        model,
        x,
        y,
        sparsities=SPARSITIES,
        layers=layers,
        scope="all",
        batch_size=len(x),
        fold_bn=fold_bn,
        channels_last=channels_last,
        progress=False,
        **kw,
    )
    want = plain_reference(model, x, y, layers, fold_bn, channels_last)
    assert got["dense_accuracy"] == want["dense"]
    for n in layers:
        assert got["layers"][n]["accuracy"] == want[n], n
    accs = {a for n in layers for a in got["layers"][n]["accuracy"]}
    assert len(accs | {got["dense_accuracy"]}) > 1, "pruning changed nothing: a vacuous check"
    return got


@pytest.mark.parametrize("case", MATRIX, ids=str)
@pytest.mark.parametrize("fold_bn", [True, False], ids=["folded", "as-is"])
def test_scan_equals_plain_reevaluation_on_every_model(case, fold_bn):
    torch.manual_seed(0)
    model = _bn_stats(case.build())
    x = _varied(case.batch(N))
    y = _labels(model, x, case.num_classes)
    layers = _some(list(_layers_or_raise(model, "all")))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    got = _check(model, x, y, layers, fold_bn=fold_bn)
    # every matrix model is traceable: the scan shares dense work instead of re-running all
    assert got["method"] in ("suffix-reuse", "graph-cut reuse"), got["method"]
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_resnet20_all_layers_channels_last_and_bf16(monkeypatch):
    """The issue's case: a residual network, every layer, in the default memory format."""
    monkeypatch.setattr(precision, "onednn_has_bf16", lambda: True)  # bf16 on any CPU
    case = next(c for c in MATRIX if c.name == "resnet20")
    torch.manual_seed(0)
    model = _bn_stats(case.build())
    x = _varied(case.batch(N))
    y = _labels(model, x, 10)
    layers = list(_layers_or_raise(model, "all"))
    got = _check(model, x, y, layers, channels_last=True)
    assert got["method"] == "graph-cut reuse"
    fast = sensitivity_scan(model, x, y, SPARSITIES, scope="all", bf16=True, progress=False)
    slow = sensitivity_scan(
        model, x, y, SPARSITIES, scope="all", bf16=True, reuse=False, progress=False
    )
    assert fast["layers"] == slow["layers"] and fast["dense_accuracy"] == slow["dense_accuracy"]


class StemNet(nn.Module):
    """A stem before `backbone`, a `head` module, pooling in forward: head(backbone(x)) is not
    the model (the old fast path crashed on it)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.backbone = nn.Sequential(
            nn.Conv2d(8, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(inplace=True),
            nn.Conv2d(8, 16, 3, padding=1, stride=2),
            nn.ReLU(inplace=True),
        )
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        x = self.backbone(self.stem(x))
        return self.head(nn.functional.adaptive_avg_pool2d(x, 1).flatten(1))


class InPlaceAdd(nn.Module):
    """Writes one branch into another in place: the graph's edges do not show that `a` changed."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 8, 3, padding=1)
        self.c = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        a = self.a(x)
        a.add_(self.b(x))
        h = self.c(a)
        a.relu_()  # changes the value probes of `c` restart from, after `c` read it
        h = torch.relu_(h) + a
        h += a[:, :1]  # traced as operator.iadd
        return self.fc(h.mean(dim=(2, 3)))


SHIFT = torch.linspace(-1, 1, 3).reshape(1, 3, 1, 1)


class TensorConstant(nn.Module):
    """Reads a tensor that is no attribute of the model: the tracer parks it on the model."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x - SHIFT)).mean(dim=(2, 3)))


class Untraceable(nn.Module):
    """Control flow on tensor values: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        h = self.conv(x)
        if h.mean() > 0:
            h = h * 2
        return self.fc(h.mean(dim=(2, 3)))


@pytest.mark.parametrize(
    "make", [StemNet, InPlaceAdd, TensorConstant], ids=["stem", "inplace", "constant"]
)
@pytest.mark.parametrize("fold_bn", [True, False], ids=["folded", "as-is"])
def test_odd_models_scan_exactly_with_reuse(make, fold_bn):
    torch.manual_seed(0)
    model = _bn_stats(make())
    x = _varied(torch.rand(N, 3, 16, 16))
    y = _labels(model, x, 4)
    layers = list(_layers_or_raise(model, "all"))
    attributes = set(vars(model))
    got = _check(model, x, y, layers, fold_bn=fold_bn, channels_last=True)
    assert got["method"] == "graph-cut reuse"
    assert set(vars(model)) == attributes  # tracing left nothing behind on the caller's model


def test_untraceable_model_falls_back_to_plain_and_says_why():
    torch.manual_seed(0)
    model = Untraceable().eval()
    x = _varied(torch.rand(N, 3, 8, 8))
    y = _labels(model, x, 4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = _check(model, x, y, ["conv", "fc"])
    assert got["method"].startswith("plain re-evaluation: torch.fx cannot trace")
    scan_warnings = [w for w in caught if "sensitivity scan" in str(w.message)]
    assert len(scan_warnings) == 1 and "plain re-evaluation" in str(scan_warnings[0].message)
