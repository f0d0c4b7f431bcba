"""prunelab: prune any PyTorch CNN and measure what it cost (accuracy, size, MACs).

The public API, for use on your own `nn.Module` and images:

    model = prunelab.build_model("resnet20", num_classes=10)   # or your own module
    pruner = prunelab.Pruner(model, 0.5)                       # 50% of every conv's weights
    # or remove channels physically: prunelab.prune_channels(model, 0.3)
    pruner.apply()
    prunelab.fit(model, x, y, prunelab.TrainConfig(epochs=2, lr=0.01), pruner=pruner)
    print(prunelab.evaluate(model, x_test, y_test)["accuracy"])

Names load on first use, so `import prunelab` (and `prunelab --help`) stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"

_PUBLIC = {
    "build_model": "prunelab.models",
    "load_model": "prunelab.models",
    "save_checkpoint": "prunelab.models",
    "load_images": "prunelab.data",
    "Pruner": "prunelab.pruning",
    "sparsity_report": "prunelab.pruning",
    "count_macs": "prunelab.accounting",
    "sensitivity_scan": "prunelab.sensitivity",
    "sensitivity_plan": "prunelab.plan",
    "TrainConfig": "prunelab.train",
    "fit": "prunelab.train",
    "evaluate": "prunelab.train",
    "fold_batchnorm": "prunelab.fold",
    "export_compressed": "prunelab.export",
    "prune_channels": "prunelab.channels",
    "measure_latency": "prunelab.latency",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'prunelab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
