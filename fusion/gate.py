"""Dynamic modality gate (per-sample weights over the modalities a sample has) and modality dropout."""

from __future__ import annotations

import torch
from torch import nn


class ModalityGate(nn.Module):
    """Pooled summaries (B, M, D) + present (B, M) -> weights (B, M): softmax over the present modalities only.

    Score of modality m: ``MLP(LN(summary_m)) + bias_m`` (the MLP is shared; the summaries come from the
    cross-modal blocks, so each already reflects the other modalities). An absent modality gets weight exactly 0;
    each row sums to 1 when the sample has at least one modality, and is all 0 when it has none.

    ``floor`` guarantees each present modality at least that fraction of a uniform share. Without it the gate can
    collapse early in training: the text alone predicts the answer's vocabulary before the decoder has learned to read
    the image, the gate shrinks the image towards 0, and then the decoder never gets to learn from the image (measured
    on easy-VQA: image weight 0.003 and validation accuracy stuck at 77% after one epoch).
    """

    def __init__(self, d_model: int, n_modalities: int, hidden: int | None = None, floor: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= floor <= 1.0:
            raise ValueError(f"gate floor must be in [0, 1], got {floor}")
        self.floor = floor
        hidden = hidden or d_model
        self.score = nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, hidden), nn.GELU(), nn.Linear(hidden, 1))
        self.bias = nn.Parameter(torch.zeros(n_modalities))

    def forward(self, summaries: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        logits = self.score(summaries).squeeze(-1).float() + self.bias  # (B, M), fp32 for the softmax
        logits = logits.masked_fill(~present, -torch.inf)
        any_present = present.any(dim=-1, keepdim=True)  # (B, 1)
        logits = torch.where(any_present, logits, 0.0)  # a sample with nothing: avoid softmax over all -inf
        weights = torch.softmax(logits, dim=-1)
        if self.floor > 0:
            # Every present modality keeps at least `floor` of a uniform share: w = floor / n + (1 - floor) * softmax.
            n_present = present.sum(dim=-1, keepdim=True).clamp(min=1).to(weights.dtype)  # (B, 1)
            weights = self.floor / n_present + (1.0 - self.floor) * weights
        return torch.where(present, weights, 0.0)  # exactly 0 for absent modalities


def modality_dropout(present: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Drop each present modality with probability ``p``, never all of a sample's modalities.

    ``present`` (B, M) bool -> (B, M) bool, a subset of ``present``. When every present modality of a sample would be
    dropped, one of them (uniformly at random) is kept. Samples with no modality stay empty.
    """
    if p <= 0.0:
        return present
    rand = torch.rand(present.shape, device=present.device, generator=generator)
    kept = present & (rand >= p)  # (B, M)
    emptied = present.any(dim=-1) & ~kept.any(dim=-1)  # (B,)
    pick = torch.rand(present.shape, device=present.device, generator=generator).masked_fill(~present, -1.0)
    rescue = nn.functional.one_hot(pick.argmax(dim=-1), present.shape[-1]).bool() & emptied[:, None]  # (B, M)
    return kept | rescue
