"""Knowledge distillation while fine-tuning: the loss, the teacher left untouched, the student
pulled towards it, and refusals of half-given settings."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunelab.errors import PrunelabError
from prunelab.train import TrainConfig, distill_loss, fit


def mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 5))


def kl_to(teacher: nn.Module, student: nn.Module, x: torch.Tensor, t: float = 4.0) -> float:
    with torch.no_grad():
        return float(distill_loss(student(x), teacher(x), t))


def test_distill_loss_is_scaled_kl_of_softened_outputs():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
    p, q = F.softmax(t / 3, 1), F.softmax(s / 3, 1)
    want = 9 * (p * (p.log() - q.log())).sum(1).mean()
    assert torch.allclose(distill_loss(s, t, 3.0), want, atol=1e-6)
    assert float(distill_loss(t, t, 3.0)) == pytest.approx(0.0, abs=1e-7)


def test_student_moves_to_the_teacher_which_stays_as_it_was():
    teacher, student = mlp(0), mlp(1)
    x = torch.randn(512, 16, generator=torch.Generator().manual_seed(2))
    y = torch.randint(0, 5, (512,), generator=torch.Generator().manual_seed(3))  # noise labels
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    start = kl_to(teacher, student, x)
    cfg = TrainConfig(epochs=30, batch_size=64, lr=0.05, schedule="constant", distill=1.0)
    fit(student, x, y, cfg, progress=False, teacher=teacher)
    assert kl_to(teacher, student, x) < 0.3 * start
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())
    assert teacher.training  # the caller's teacher keeps its mode (fit uses a frozen copy)


def test_labels_alone_do_not_pull_the_student_to_the_teacher():
    teacher, student = mlp(0), mlp(1)
    x = torch.randn(512, 16, generator=torch.Generator().manual_seed(2))
    y = torch.randint(0, 5, (512,), generator=torch.Generator().manual_seed(3))
    start = kl_to(teacher, student, x)
    fit(student, x, y, TrainConfig(epochs=30, batch_size=64, lr=0.05, schedule="constant"),
        progress=False)  # fmt: skip
    assert kl_to(teacher, student, x) > 0.3 * start  # the pull above came from the teacher


@pytest.mark.parametrize("distill, teacher", [(0.5, None), (0.0, mlp(0))])
def test_half_given_distillation_is_refused(distill, teacher):
    x, y = torch.randn(64, 16), torch.randint(0, 5, (64,))
    with pytest.raises(PrunelabError, match="distillation needs both a teacher"):
        fit(mlp(1), x, y, TrainConfig(epochs=1, batch_size=32, distill=distill),
            progress=False, teacher=teacher)  # fmt: skip


@pytest.mark.parametrize("field, value", [("distill", 1.5), ("distill", -0.1), ("temperature", 0)])
def test_bad_distillation_settings_are_named(field, value):
    with pytest.raises(PrunelabError, match=field):
        TrainConfig(**{field: value}).validate()


class CountingConvNet(nn.Module):
    """A small image model that counts its forward calls (its folded copy counts too)."""

    calls = 0

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(8, 4),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        type(self).calls += 1
        return self.net(x)


def test_cached_teacher_logits_train_the_same_student_without_the_teacher(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (96, 3, 8, 8), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 4, (96,), generator=g)
    cfg = TrainConfig(epochs=2, batch_size=32, lr=0.05, schedule="cosine", distill=0.5)
    teacher, cache = CountingConvNet(0), tmp_path / "logits"

    def student(c: TrainConfig = cfg, t: nn.Module = teacher) -> dict[str, torch.Tensor]:
        s = CountingConvNet(1)
        CountingConvNet.calls = 0
        fit(s, x, y, c, progress=False, teacher=t, teacher_cache=cache)
        return s.state_dict()

    plain = CountingConvNet(1)
    fit(plain, x, y, cfg, progress=False, teacher=teacher)
    first = student()
    assert sorted(p.name.split("-")[-1] for p in cache.iterdir()) == ["epoch0.pt", "epoch1.pt"]
    second = student()
    assert CountingConvNet.calls == 2 * 3  # the student's own 3 steps per epoch, no teacher
    for other in (first, second):
        assert all(torch.equal(v, other[k]) for k, v in plain.state_dict().items())
    student(TrainConfig(**{**cfg.__dict__, "seed": 1}))  # other batches: computed afresh
    assert CountingConvNet.calls > 2 * 3 and len(list(cache.iterdir())) == 4
    student(t=CountingConvNet(5))  # another teacher: computed afresh
    assert CountingConvNet.calls > 2 * 3 and len(list(cache.iterdir())) == 6
