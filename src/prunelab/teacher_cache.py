"""A distillation teacher's logits, saved per epoch so later students need not recompute them.

Why: `prunelab.train.fit` draws data order and augmentation from (seed, epoch) alone, so
every student fine-tuned with the same seed, batch size and data sees the same batches, and
a frozen teacher gives each of them the same logits. The goals recipe distils four pruned
models per seed from one dense model; the teacher's forward was 43-51 % of a distilling
step on a 2-core CPU (full-width VGG teaching the batch-1 plan, fp32), so computing it once
per seed saves that share for the other three. The logits are the very tensors the teacher
returned, so a student trained from them is bit for bit the one trained with the teacher.

The file name is a digest of everything that decides the logits: the teacher's weights, the
training images and labels, the seed, the batch size, the augmentation, the normalisation,
the memory format and the precision. Anything different is a different file; a file whose
shape does not fit is ignored and recomputed.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import CheckpointError
from .fileio import atomic_path
from .safeload import load_tensors


def _tensor_digest(h: Any, t: torch.Tensor) -> None:
    t = t.detach().cpu().contiguous()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.view(-1).view(torch.uint8).numpy())  # no copy of the data set's bytes


class TeacherLogits:
    """Per-epoch teacher logits in `folder`, for one teacher, data set and input pipeline."""

    def __init__(
        self,
        folder: str | os.PathLike,
        teacher: nn.Module,
        train_x: torch.Tensor,
        train_y: torch.Tensor,
        settings: dict[str, Any],
    ) -> None:
        """settings: plain values that decide the teacher's inputs and arithmetic (seed, batch
        size, augmentation, normalisation, memory format, precision)."""
        h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
        for name, t in sorted(teacher.state_dict().items()):
            h.update(name.encode())
            _tensor_digest(h, t)
        _tensor_digest(h, train_x)
        _tensor_digest(h, train_y)
        self.folder = Path(folder)
        self.key = h.hexdigest()[:20]

    def path(self, epoch: int) -> Path:
        return self.folder / f"teacher-{self.key}-epoch{epoch}.pt"

    def load(self, epoch: int, rows: int, device: torch.device) -> torch.Tensor | None:
        """The epoch's logits (`rows` x classes) on `device`, or None when not saved yet."""
        p = self.path(epoch)
        if not p.is_file():
            return None
        try:
            logits = load_tensors(p, "teacher logits")
        except CheckpointError:
            return None  # damaged: recomputed and written again
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or len(logits) != rows:
            return None
        return logits.to(device)

    def save(self, epoch: int, logits: torch.Tensor) -> None:
        with atomic_path(self.path(epoch)) as tmp:
            torch.save(logits.detach().cpu(), tmp)
