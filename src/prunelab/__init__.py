"""prunelab: fine-grained magnitude pruning of PyTorch CNNs, and the VGG/CIFAR-10 study."""

__version__ = "0.1.0"
