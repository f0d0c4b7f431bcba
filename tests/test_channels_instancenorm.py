"""InstanceNorm in a channel group: each channel is normalised alone, so its channels sort and
cut like a BatchNorm's, running statistics included (Torch-Pruning's cut leaves those whole)."""

import torch
from torch import nn

from prunelab.channels import graph_of, prune_channels, sort_channels
from prunelab.models import build_model, load_model, save_checkpoint

SPEC = "test_channels_instancenorm:InstanceNet"


class InstanceNet(nn.Module):
    """An InstanceNorm with weights and running statistics, one with neither, and one over
    two concatenated branches (with statistics)."""

    def __init__(self, num_classes: int = 4, in_channels: int = 3):
        super().__init__()
        self.c0 = nn.Conv2d(in_channels, 12, 3, padding=1)
        self.n0 = nn.InstanceNorm2d(12, affine=True, track_running_stats=True)
        self.c1 = nn.Conv2d(12, 10, 3, padding=1)
        self.n1 = nn.InstanceNorm2d(10)
        self.a = nn.Conv2d(10, 6, 3, padding=1)
        self.b = nn.Conv2d(10, 8, 3, padding=1)
        self.n2 = nn.InstanceNorm2d(14, track_running_stats=True)
        self.fc = nn.Linear(14, num_classes)
        with torch.no_grad():  # statistics and weights that differ per channel
            for n in (self.n0, self.n2):
                n.running_mean.uniform_(-0.5, 0.5)
                n.running_var.uniform_(0.5, 2.0)
            self.n0.weight.uniform_(0.5, 1.5)
            self.n0.bias.uniform_(-0.5, 0.5)

    def forward(self, x):
        x = torch.relu(self.n0(self.c0(x)))
        x = torch.relu(self.n1(self.c1(x)))
        x = torch.relu(self.n2(torch.cat([self.a(x), self.b(x)], dim=1)))
        return self.fc(x.mean(dim=(2, 3)))


def net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(SPEC, {"num_classes": 4}, input_shape=(3, 8, 8)).eval()


def x8() -> torch.Tensor:
    return torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def test_instancenorm_groups_can_be_pruned():
    graph = graph_of(net())
    assert list(graph.groups) == ["c0", "c1", "a", "b"]
    assert graph.unprunable == {}


def test_sorting_instancenorm_channels_leaves_the_outputs():
    m = net()
    with torch.no_grad():
        before = m(x8())
        orders = sort_channels(m)
        after = m(x8())
    assert orders["c0"] != list(range(12)) and orders["b"] != list(range(8))  # it did reorder
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)


def test_a_cut_takes_the_same_channels_from_the_running_statistics():
    m = net()
    with torch.no_grad():  # make the ranking known: c0's channel i by 12 - i, b's by 8 - i
        m.c0.weight.mul_(torch.arange(12, 0, -1).view(12, 1, 1, 1) * 10.0)
        m.b.weight.mul_(torch.arange(8, 0, -1).view(8, 1, 1, 1) * 10.0)
    n0 = {k: v.clone() for k, v in m.n0.state_dict().items()}
    n2 = {k: v.clone() for k, v in m.n2.state_dict().items()}
    kept = prune_channels(m, {"c0": 0.5, "b": 0.5})
    assert kept == {"c0": 6, "c1": 10, "a": 6, "b": 4}
    for key in ("weight", "bias", "running_mean", "running_var"):
        assert torch.equal(getattr(m.n0, key), n0[key][:6]), key
    # n2 sees a's 6 channels, then b's 8: b keeps its first 4, at n2's positions 6-9
    survivors = list(range(6)) + [6, 7, 8, 9]
    for key in ("running_mean", "running_var"):
        assert torch.equal(getattr(m.n2, key), n2[key][survivors]), key
    assert (m.n0.num_features, m.n2.num_features) == (6, 10)
    assert m(x8()).shape == (2, 4)
    m.train()(x8())  # statistics of the new size update without a shape error
    assert m.n2.running_mean.shape == (10,)


def test_pruned_instancenorm_model_reloads(tmp_path):
    m = net()
    kept = prune_channels(m, 0.3)
    assert kept == {"c0": 8, "c1": 7, "a": 4, "b": 6}
    path = save_checkpoint(tmp_path / "in.pth", m)
    again, _ = load_model(path, model=SPEC)
    assert again.n2.running_var.shape == m.n2.running_var.shape
    with torch.no_grad():
        assert torch.equal(again.eval()(x8()), m(x8()))
