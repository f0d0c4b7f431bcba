"""GroupNorm in a channel group: channels are sorted and cut within its groups, and a group
per channel follows the count, so the slimmer model normalises each survivor as before."""

import pytest
import torch
from torch import nn

from prunelab.accounting import count_macs
from prunelab.channels import graph_of, prune_channels, sort_channels
from prunelab.channels.plans import MacsCost, macs_target_plan
from prunelab.errors import CheckpointError
from prunelab.models import apply_channel_record, build_model, load_model, save_checkpoint

SPEC = "test_channels_groupnorm:NormNet"


class NormNet(nn.Module):
    """Three GroupNorms: 4 groups of 4 channels, one group of 12, one group per channel."""

    def __init__(self, num_classes: int = 4, in_channels: int = 3):
        super().__init__()
        self.c0 = nn.Conv2d(in_channels, 16, 3, padding=1)
        self.g0 = nn.GroupNorm(4, 16)
        self.c1 = nn.Conv2d(16, 12, 3, padding=1)
        self.g1 = nn.GroupNorm(1, 12)
        self.c2 = nn.Conv2d(12, 8, 3, padding=1)
        self.g2 = nn.GroupNorm(8, 8)
        self.fc = nn.Linear(8, num_classes)
        for g in (self.g0, self.g1, self.g2):
            nn.init.uniform_(g.weight, 0.5, 1.5)
            nn.init.uniform_(g.bias, -0.5, 0.5)

    def forward(self, x):
        x = torch.relu(self.g0(self.c0(x)))
        x = torch.relu(self.g1(self.c1(x)))
        x = torch.relu(self.g2(self.c2(x)))
        return self.fc(x.mean(dim=(2, 3)))


class SharedNormNet(nn.Module):
    """A GroupNorm of 4 groups over two concatenated branches: no branch owns its groups."""

    def __init__(self, num_classes: int = 4, in_channels: int = 3, groups: int = 4):
        super().__init__()
        self.a = nn.Conv2d(in_channels, 8, 3, padding=1)
        self.b = nn.Conv2d(in_channels, 8, 3, padding=1)
        self.gn = nn.GroupNorm(groups, 16)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        x = self.gn(torch.cat([self.a(x), self.b(x)], dim=1))
        return self.fc(torch.relu(x).mean(dim=(2, 3)))


def net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(SPEC, {"num_classes": 4}, input_shape=(3, 8, 8)).eval()


def x8() -> torch.Tensor:
    return torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def test_groups_know_their_groupnorm_blocks():
    graph = graph_of(net())
    assert list(graph.groups) == ["c0", "c1", "c2"]
    assert [g.blocks for g in graph.groups.values()] == [4, 1, 1]  # one group, or one each: free


def test_sorting_keeps_every_channel_in_its_groupnorm_group():
    m = net()
    with torch.no_grad():
        before = m(x8())
        orders = sort_channels(m)
        torch.testing.assert_close(m(x8()), before, rtol=0, atol=1e-5)
    assert any(orders["c0"] != list(range(16)) for _ in [0])  # it did reorder
    assert all(i // 4 == p // 4 for p, i in enumerate(orders["c0"]))


def test_a_cut_takes_as_many_channels_from_each_groupnorm_group():
    m = net()
    with torch.no_grad():
        m.c0.weight.mul_(torch.arange(16, 0, -1).view(16, 1, 1, 1) * 10.0)  # channel 0 largest
    w = m.c0.weight.detach().clone()
    kept = prune_channels(m, 0.3)
    # 16 x 0.7 = 11.2 rounds to 12 (a multiple of 4); 12 x 0.7 = 8.4 -> 8; 8 x 0.7 = 5.6 -> 6
    assert kept == {"c0": 12, "c1": 8, "c2": 6}
    # a cut by rank alone would keep channels 0-11 and empty g0's last group
    survivors = [0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14]
    assert torch.equal(m.c0.weight, w[survivors])
    assert (m.g0.num_groups, m.g0.num_channels) == (4, 12)
    assert (m.g1.num_groups, m.g2.num_groups, m.g2.num_channels) == (1, 6, 6)
    assert m(x8()).shape == (2, 4)


def test_predicted_macs_follow_the_groupnorm_rounding():
    m = net()
    plan = {"c0": 0.3, "c1": 0.3, "c2": 0.3}
    predicted = MacsCost(m)(plan)
    prune_channels(m, plan)
    assert predicted == count_macs(m)["total"]


def test_pruned_groupnorm_model_reloads(tmp_path):
    m = net()
    prune_channels(m, 0.3, round_to=2)
    path = save_checkpoint(tmp_path / "gn.pth", m)
    again, _ = load_model(path, model=SPEC)
    assert again.g2.num_groups == 6  # a group per channel, rebuilt from the counts
    with torch.no_grad():
        assert torch.equal(again.eval()(x8()), m(x8()))


def test_a_record_that_splits_a_groupnorm_group_is_refused():
    with pytest.raises(CheckpointError, match="divides them into 4 groups .*multiple of 4"):
        apply_channel_record(net(), {"c0": 10}, "test")


@pytest.mark.parametrize("groups, blocked", [(4, True), (1, False), (16, False)])
def test_a_groupnorm_shared_across_a_concatenation(groups, blocked):
    torch.manual_seed(0)
    spec = "test_channels_groupnorm:SharedNormNet"
    m = build_model(spec, {"num_classes": 4, "groups": groups}, input_shape=(3, 8, 8))
    graph = graph_of(m)
    if blocked:
        assert graph.groups == {}
        assert (
            "GroupNorm 'gn' normalises its channels together with others" in (graph.unprunable["a"])
        )
        return
    assert list(graph.groups) == ["a", "b"]
    prune_channels(m, {"a": 0.5})
    assert m.gn.num_channels == 12 and m.gn.num_groups == (1 if groups == 1 else 12)
    assert m.eval()(x8()).shape == (2, 4)


def test_a_macs_target_plan_moves_groupnorm_groups_a_whole_block_at_a_time():
    m = net()
    scan = {
        "dense_accuracy": 0.9,
        "ratios": [0.5],
        "groups": {"c0": {"channels": 16, "accuracy": [0.89]}},  # only c0 may be cut
    }
    res = macs_target_plan(m, scan, 0.8, step=0.05)
    assert res["channels"]["c0"] % 4 == 0 and res["channels"]["c0"] < 16
    assert res["macs"] <= 0.8 * count_macs(m)["total"]
