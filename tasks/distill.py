"""Knowledge distillation: a frozen teacher model's token distributions as an extra training target.

``distill: {teacher: runs/easyvqa/latest/checkpoints/best.ckpt, weight: 1.0, temperature: 2.0}`` on any task adds

    weight * T^2 * KL(teacher_T || student_T)

averaged over the target tokens of the batch (teacher forcing on the same targets), where ``_T`` is the softmax of
the logits divided by the temperature ``T`` (Hinton et al. 2015; ``T^2`` keeps the gradient scale independent of T).
The teacher is an omnifuse checkpoint or export folder, loaded the safe way (no pickled code runs), frozen and in eval
mode; it runs on the same batch, with its own encoders, fusion and decoder, so the student may have fewer experts,
fewer layers or a smaller width. It shares the byte tokenizer, hence the vocabulary. The teacher is loaded when
fitting starts and is never part of the student's state: checkpoints, exports and the optimizer hold the student only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


@dataclass
class DistillConfig:
    """Where the teacher is and how much its distributions count."""

    teacher: str = ""  # a .ckpt written by omnifuse fit, or an omnifuse export folder
    weight: float = 1.0
    temperature: float = 2.0

    def __post_init__(self) -> None:
        if not self.teacher:
            raise ValueError("distill.teacher must name a checkpoint or export folder")
        if self.weight < 0 or self.temperature <= 0:
            raise ValueError(f"distill needs weight >= 0 and temperature > 0, got {self.weight}, {self.temperature}")


def distillation_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, temperature: float
) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, summed over the vocabulary and averaged over the
    positions whose label is not ``IGNORE_INDEX``. Logits ``(B, T, V)``, labels ``(B, T)``."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} differ"
        )
    keep = labels != IGNORE_INDEX  # (B, T)
    if not bool(keep.any()):
        return student_logits.new_zeros((), dtype=torch.float32)
    s = F.log_softmax(student_logits[keep].float() / temperature, dim=-1)  # (M, V)
    t = F.log_softmax(teacher_logits[keep].float() / temperature, dim=-1)
    kl = (t.exp() * (t - s)).sum(dim=-1)  # (M,)
    return kl.mean() * temperature**2
