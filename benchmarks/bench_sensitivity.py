"""Time the sensitivity scan the straightforward way (whole network per point, NCHW) against
prunelab's way (dense prefix reused, channels_last, BN folded), and check both give the same
accuracies (folding is exact to fp32 rounding: a near-tie could flip).

    python benchmarks/bench_sensitivity.py [--width 0.25] [--n-images 2000] [--threads 2]
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from prunelab.data import load_cifar10, subset
from prunelab.models import VGG, load_model
from prunelab.sensitivity import sensitivity_scan


def get_model(args: argparse.Namespace) -> nn.Module:
    """The checkpoint's model, or a random VGG with BN statistics fitted to random images."""
    if args.checkpoint:
        return load_model(args.checkpoint)[0]
    torch.manual_seed(0)
    model = VGG(width=args.width)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # running stats = statistics of the calibration batch
    with torch.no_grad():
        model.train()(torch.rand(256, 3, 32, 32))
    return model.eval()


def get_data(args: argparse.Namespace, model: nn.Module) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Real CIFAR-10 test images when --data-dir is given, else random ones."""
    if args.data_dir:
        data = load_cifar10(args.data_dir, download=False)
        # a seeded random subset: the image-folder tree is sorted by class
        x, y = subset(data.test_x, data.test_y, min(args.n_images, len(data.test_y)), seed=0)
        return x, y, "CIFAR-10 test"
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (args.n_images, 3, 32, 32), dtype=torch.uint8, generator=g)
    with torch.no_grad():  # labels: the dense model's predictions, a third of them scrambled
        y = torch.cat([model(xb.float() / 255).argmax(1) for xb in x.split(500)])
    y[::3] = torch.randint(0, 10, (len(y[::3]),), generator=g)
    return x, y, "random"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=float, default=0.25, help="VGG width (not with --checkpoint)")
    p.add_argument("--n-images", type=int, default=2000)
    p.add_argument("--checkpoint", help="a prunelab/study checkpoint (default: random weights)")
    p.add_argument("--data-dir", help="CIFAR-10 folder (default: random images)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--sparsities", type=float, nargs="+", default=[0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = get_model(args)
    x, y, source = get_data(args, model)
    common = {"sparsities": args.sparsities, "batch_size": args.batch_size, "progress": False}
    print(
        f"VGG width {getattr(model, 'width', '?')}, {len(x)} {source} images, "
        f"{len(args.sparsities)} sparsities, {args.threads} threads, fp32, CPU"
    )
    slow = sensitivity_scan(model, x, y, reuse=False, channels_last=False, fold_bn=False, **common)
    fast = sensitivity_scan(model, x, y, reuse=True, channels_last=True, **common)
    diff = max(
        [abs(fast["dense_accuracy"] - slow["dense_accuracy"])]
        + [
            abs(a - b)
            for name, r in fast["layers"].items()
            for a, b in zip(r["accuracy"], slow["layers"][name]["accuracy"], strict=True)
        ]
    )
    print(f"straightforward (reuse=False, NCHW, BN):  {slow['seconds']:7.1f} s")
    print(f"prunelab (reuse, channels_last, folded):  {fast['seconds']:7.1f} s [{fast['method']}]")
    print(f"speed-up:                                 {slow['seconds'] / fast['seconds']:7.2f}x")
    print(f"largest accuracy difference:              {diff:.6g}")
    print(f"dense accuracy {fast['dense_accuracy']:.4f}")


if __name__ == "__main__":
    main()
