"""Which kernel each layer runs, read from torch.profiler (prunelab.kernels)."""

import torch
from torch import nn

from prunelab.kernels import layer_breakdown, layer_kernels


class TwoPaths(nn.Module):
    """A 3x3 conv on a 256x8x8 input (16,384 values), a Linear, and a layer never called."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(256, 64, 3, padding=1, bias=False)
        self.fc = nn.Linear(64, 10)
        self.unused = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        return self.fc(self.conv(x).mean(dim=(2, 3)))


def test_small_batch_one_convs_run_on_atens_im2col_and_batches_on_onednn(capfd):
    torch.manual_seed(0)
    m = TwoPaths()
    one = layer_kernels(m, input_shape=(256, 8, 8), batch_size=1, threads=2)
    two = layer_kernels(m, input_shape=(256, 8, 8), batch_size=2, threads=2)
    # PyTorch's rule for a 3x3, ungrouped, batch-1 CPU convolution with <= 20,480 input values
    assert one == {"conv": "ATen im2col", "fc": "BLAS addmm", "unused": "not run"}
    assert two["conv"] == "oneDNN"
    assert "profiler" not in capfd.readouterr().err  # the profiler's own lines kept quiet


def test_breakdown_pairs_each_layer_with_its_macs_kernel_and_time():
    torch.manual_seed(0)
    wide, slim = TwoPaths(), TwoPaths()
    slim.conv = nn.Conv2d(256, 32, 3, padding=1, bias=False)
    slim.fc = nn.Linear(32, 10)
    view = layer_breakdown(
        {"dense": wide, "slim": slim}, [1], input_shape=(256, 8, 8), reps=3, warmup=1
    )
    assert view["baseline"] == "dense" and view["batch_sizes"] == [1]
    d, s = view["1"]["dense"], view["1"]["slim"]
    assert d["conv"]["macs"] == 256 * 64 * 9 * 64 and s["conv"]["macs"] == d["conv"]["macs"] // 2
    assert s["conv"]["kernel"] == "ATen im2col" and s["conv"]["ms"] > 0
    assert list(s) == ["conv", "fc", "unused"]
