"""Golden values: a small seeded train -> scan -> prune -> fine-tune run on the real images.

The numbers were recorded before the library was rebuilt for any model; a refactor that
moves one of them changed the study's results (data order, augmentation, init, masks,
evaluation) and must say why. Recorded with torch 2.13.0 on each kind of CPU this
project's machines have been: bf16 training runs on different kernels where the CPU has AMX
tiles than where it has only AVX-512 BF16 instructions, and where it has neither (AVX2)
prunelab.precision trains in fp32; 2 epochs of a tiny net land elsewhere on each. Each kind's
values are exact and reproducible run to run. A CPU of a new kind fails with the values it
gave, to be recorded here once checked.
"""

from pathlib import Path

import torch

from prunelab.data import split_validation, subset
from prunelab.models import VGG
from prunelab.pruning import Pruner
from prunelab.sensitivity import sensitivity_scan
from prunelab.train import TrainConfig, evaluate, fit

GOLDEN = {  # per CPU kind (cpu_kind below)
    "avx512_bf16": {  # AMD EPYC (Zen 5): AVX-512 BF16, no AMX
        "fingerprint": "8fb74b4cf90ff2f7",
        "dense": 0.284,
        "weight_abs_sum": 4134.895787015153,
        "scan_0.6": [0.26, 0.282, 0.282, 0.28, 0.296, 0.294, 0.294, 0.292],
        "pruned_0.5": 0.276,
        "finetuned": 0.282,
    },
    "amx_bf16": {  # Intel Xeon (family 6, model 207): AMX-BF16
        "fingerprint": "8fb74b4cf90ff2f7",
        "dense": 0.216,
        "weight_abs_sum": 4134.655562694379,
        "scan_0.6": [0.112, 0.152, 0.222, 0.212, 0.2, 0.198, 0.21, 0.212],
        "pruned_0.5": 0.124,
        "finetuned": 0.292,
    },
    "avx2": {  # AMD EPYC (Zen 3, family 25 model 1): AVX2 only, so bf16 runs as fp32
        "fingerprint": "8fb74b4cf90ff2f7",
        "dense": 0.224,
        "weight_abs_sum": 4130.605418536507,
        "scan_0.6": [0.186, 0.222, 0.188, 0.222, 0.216, 0.224, 0.222, 0.234],
        "pruned_0.5": 0.212,
        "finetuned": 0.226,
    },
}


def cpu_kind() -> str:
    """Which bf16 path the CPU gives oneDNN: AMX tiles, AVX-512 BF16 instructions, or neither
    (then torch's own capability name, e.g. "avx2": bf16 is converted in software)."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        flags = []
    for kind in ("amx_bf16", "avx512_bf16"):
        if kind in flags:
            return kind
    return torch.backends.cpu.get_cpu_capability().lower()


def test_seeded_pipeline_matches_golden_values(cifar):
    tx, ty = subset(cifar.train_x, cifar.train_y, 1224, seed=0)
    tx, ty, vx, vy = split_validation(tx, ty, 200, seed=0)
    sx, sy = subset(cifar.test_x, cifar.test_y, 500, seed=0)
    torch.manual_seed(0)
    model = VGG(width=0.125)
    cfg = TrainConfig(epochs=2, batch_size=64, bf16=True, seed=0)
    fit(model, tx, ty, cfg, val=(vx, vy), progress=False)
    got = {"fingerprint": cifar.fingerprint()[:16]}
    got["dense"] = evaluate(model, sx, sy, 10)["accuracy"]
    with torch.no_grad():
        got["weight_abs_sum"] = float(sum(p.double().abs().sum() for p in model.parameters()))
    scan = sensitivity_scan(model, sx, sy, sparsities=[0.6], progress=False)
    got["scan_0.6"] = [v["accuracy"][0] for v in scan["layers"].values()]
    pruner = Pruner(model, 0.5)
    pruner.apply()
    got["pruned_0.5"] = evaluate(model, sx, sy, 10)["accuracy"]
    ft = TrainConfig(epochs=1, batch_size=64, lr=0.01, schedule="cosine", bf16=True, seed=0)
    fit(model, tx, ty, ft, pruner=pruner, progress=False)
    got["finetuned"] = evaluate(model, sx, sy, 10)["accuracy"]
    kind = cpu_kind()
    assert kind in GOLDEN, f"no golden values for a {kind} CPU yet; this one gives {got}"
    assert got == GOLDEN[kind], f"{kind} CPU: {got}"
