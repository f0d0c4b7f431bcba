"""Rank floors: an over-complete layer (more filters than inputs) may be cut to the effective
rank of its filters before a plan touches any other layer."""

import pytest
import torch
from test_goals import flat_scan  # every group scanned alike: the floors alone decide
from torch import nn

from prunelab.accounting import count_macs
from prunelab.channels import graph_of, macs_target_plan
from prunelab.channels.rank import effective_rank, rank_floors
from prunelab.errors import PlanError
from prunelab.models import build_model, make_arch


def test_effective_rank_counts_singular_values_to_the_energy():
    # singular values 3, 2, 1: energy shares 9/14, 13/14, 1
    w = torch.diag(torch.tensor([3.0, 2.0, 1.0]))
    assert [effective_rank(w, e) for e in (0.6, 0.9, 0.95, 0.999)] == [1, 2, 3, 3]
    assert effective_rank(torch.zeros(4, 3), 0.9) == 0


class Stem(nn.Module):
    """A 1x1 conv from 3 channels to 16 (over-complete: 16 filters in 3 dimensions) whose
    filters span 2 dimensions, then a 3x3 conv from 16 to 8 (16 * 9 inputs: not)."""

    def __init__(self):
        super().__init__()
        basis = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
        self.stem = nn.Conv2d(3, 16, 1, bias=False)
        with torch.no_grad():
            self.stem.weight.copy_((torch.randn(16, 2) @ basis).view(16, 3, 1, 1))
        self.body = nn.Conv2d(16, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)
        self.prunelab_arch = make_arch("x:y", {}, (3, 8, 8))

    def forward(self, x):
        x = torch.relu(self.body(torch.relu(self.stem(x))))
        return self.fc(x.mean(dim=(2, 3)))


def test_only_over_complete_groups_get_a_floor_at_their_rank():
    torch.manual_seed(0)
    m = Stem()
    floors = rank_floors(graph_of(m), 0.999)
    assert floors == {"stem": pytest.approx(1 - 2 / 16)}  # body: 8 filters in 144 dimensions
    with pytest.raises(PlanError, match=r"rank energy must be a number in \(0, 1\)"):
        rank_floors(graph_of(m), 1.0)


def test_first_conv_of_the_studys_vgg_is_the_only_over_complete_one():
    m = build_model("vgg", {"width": 0.25})  # conv0: 16 filters in 27 dimensions: not
    assert rank_floors(graph_of(m), 0.9) == {}
    m = build_model("vgg", {"width": 1.0})  # conv0: 64 filters in 27 dimensions
    floors = rank_floors(graph_of(m), 0.9)
    assert list(floors) == ["backbone.conv0"] and 1 - 27 / 64 <= floors["backbone.conv0"] < 1


def test_a_plan_starts_over_complete_groups_at_their_floor_and_keeps_the_target():
    torch.manual_seed(0)
    m = Stem()
    dense = count_macs(m)["total"]
    plain = macs_target_plan(m, flat_scan(m), 0.6, step=0.01, band=0.0)
    floored = macs_target_plan(
        m, flat_scan(m), 0.6, step=0.01, band=0.0, max_ratio=0.9, rank_energy=0.999
    )
    assert plain["rank_floors"] is None and plain["channels"]["stem"] > 2
    assert floored["channels"]["stem"] == 2  # its rank
    assert floored["rank_floors"] == {"energy": 0.999, "stem": pytest.approx(0.875)}
    # the time the stem gave up is left to the other group: it keeps more than uniform did
    assert floored["channels"]["body"] > plain["channels"]["body"]
    assert floored["band"]["uniform_ratio"] < plain["band"]["uniform_ratio"]
    assert floored["macs"] <= 0.6 * dense and plain["macs"] <= 0.6 * dense
    no_band = macs_target_plan(m, flat_scan(m), 0.6, step=0.01, max_ratio=0.9, rank_energy=0.999)
    assert no_band["channels"]["stem"] == 2
