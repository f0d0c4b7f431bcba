"""Re-estimating BatchNorm statistics after pruning: the weights stay, the statistics follow.

Used by the channel scan's probes and by `prunelab prune --calibrate`. Training normalises
with each batch's own statistics, so this changes what a model scores before fine-tuning,
never what fine-tuning makes of it.
"""

from __future__ import annotations

import torch
from torch import nn

from .evaluation import Normalize, normalizer, to_input
from .fold import batchnorms


@torch.no_grad()
def recalibrate_bn(
    model: nn.Module, x: torch.Tensor, normalize: Normalize = None, batch_size: int = 256
) -> nn.Module:
    """Re-estimate every BatchNorm's running statistics on images `x` (training images, not
    the ones scored), in place; weights are not touched.

    Pruning (channels or weights) shifts the statistics of every layer after the cut, and
    scoring a model with stale statistics mostly measures that shift, which fine-tuning
    repairs in a few hundred steps: a layer can look ruined that recovers well. With the
    statistics re-estimated a pruned model's accuracy tracks its accuracy after fine-tuning
    far better (Li et al., EagleEye, ECCV 2020: adaptive BatchNorm for evaluating pruned
    candidates).
    """
    bns = batchnorms(model)
    if not bns or len(x) == 0:
        return model
    was_training = model.training
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over every calibration batch
    model.train()
    dev = next(model.parameters()).device
    norm = normalizer(normalize, (1, *x.shape[1:]), dev)
    # batches of (nearly) equal size: the cumulative average weighs every batch alike, so
    # a short last batch would count for as much as a full one
    for chunk in torch.tensor_split(x, -(-len(x) // batch_size)):
        model(to_input(chunk.to(dev), False, norm))
    for m, mom in zip(bns, saved, strict=True):
        m.momentum = mom
    model.train(was_training)
    return model
