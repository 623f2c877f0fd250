"""Question-conditioned vision: FiLM parameters for the image tower's stages, computed from the question's tokens.

Late fusion (the image encoded alone, meeting the question only in cross-attention) leaves easy-VQA's yes/no
questions at their answer prior for thousands of steps; a FiLM network (Perez et al. 2018), where the question scales
and shifts every channel of the visual features from the first block on, binds them in a few hundred. This module is
the question side of that: it reads the question's encoder tokens (text or speech, whichever a sample has) and returns
``FilmParams`` that the image encoder applies to its own stages (``encoder.film_channels``). The image encoder never
sees the question itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from omnifuse.encoders.base import FilmParams, TokenSequence


class QuestionFilm(nn.Module):
    """Question tokens (per modality) -> per-sample ``FilmParams`` for an encoder with ``film_channels``.

    Per sample, each question modality it has (``sources``, e.g. ``("text", "audio")``) is summarised to ``d_hidden``:
    ``pool="attention"`` (default): ``n_queries`` learned attention-pooling heads over its ``LayerNorm``-ed tokens (each
    head scores every valid token and takes the softmax-weighted mean), concatenated, ``Linear``; ``pool="mean"``: the
    masked mean of the tokens, ``LayerNorm`` -> ``Linear``. A sample with several question modalities takes the mean of
    their summaries. Attention pooling is what makes it work: measured on easy-VQA, the mean of a question's byte
    tokens barely told "is there a red shape?" from "is there a blue shape?" (the FiLM parameters of the two differed
    by 7 % of their size), and yes/no questions stayed near their answer prior for 1,000 steps. A head of ``depth``
    hidden layers (0: one linear map) takes the summary to ``gamma, beta`` for every stage; ``scale = 1 + gamma``,
    ``shift = beta``, with the last layer starting at zero, so training starts from the unconditioned tower (or,
    with ``residual_scale=False``, ``scale = gamma`` from a random start).

    A sample with no question (no source modality present, or none with a valid token) gets scale exactly 1 and shift
    exactly 0 (``torch.where``, not arithmetic), i.e. no conditioning at all; a batch where no sample has a question
    gets ``None``, and the image encoder runs unconditioned.

    Args:
        in_dims: ``out_dim`` of each question modality's encoder (modalities not in ``sources`` are ignored).
        channels: the image encoder's ``film_channels``.
        d_hidden: width of the summary and of the MLP.
        sources: the modalities that carry the question, in no particular order.
        pool: ``"attention"`` or ``"mean"`` (see above).
        n_queries: attention-pooling heads per modality.
        depth: hidden ``GELU, Linear`` layers between the summary and the output layer; 0: the FiLM parameters are a
            linear function of the pooled question (the FiLM paper's generator). Measured on easy-VQA (a reference
            FiLM network, docs/question-conditioned-vision.md): the deep, zero-initialised head bound yes/no
            questions ~250-500 steps later than the linear one.
        residual_scale: True: ``scale = 1 + gamma`` from a zero-initialised last layer, so a fresh generator leaves the
            tower exactly as it is unconditioned. False: ``scale = gamma`` from a default-initialised last layer (the
            FiLM paper's form): a fresh generator already gives each question its own scale, near 0, so every
            block's residual branch starts almost shut and opens channel by channel as the question selects them.
            A sample without a question still gets scale exactly 1: the tower as it is unconditioned, which a model
            trained only on questioned images has not seen (with ``residual_scale=True`` that is its starting point).
    """

    def __init__(
        self,
        in_dims: Mapping[str, int],
        channels: Sequence[int],
        d_hidden: int = 256,
        sources: Sequence[str] = ("text", "audio"),
        pool: str = "attention",
        n_queries: int = 4,
        residual_scale: bool = True,
        depth: int = 1,
    ) -> None:
        super().__init__()
        if pool not in ("attention", "mean"):
            raise ValueError(f"pool must be 'attention' or 'mean', got {pool!r}")
        self.pool = pool
        if depth < 0:
            raise ValueError(f"depth must be >= 0, got {depth}")
        self.channels = tuple(int(c) for c in channels)
        if not self.channels:
            raise ValueError("QuestionFilm needs an image encoder with film_channels (stages it can modulate)")
        used = [m for m in sources if m in in_dims]
        if not used:
            raise ValueError(f"QuestionFilm needs a question modality among {tuple(sources)}; have {sorted(in_dims)}")
        self.sources = tuple(used)
        self.norm = nn.ModuleDict({m: nn.LayerNorm(int(in_dims[m])) for m in used})
        q = n_queries if pool == "attention" else 1
        self.scores = nn.ModuleDict({m: nn.Linear(int(in_dims[m]), q) for m in used}) if pool == "attention" else None
        self.summarize = nn.ModuleDict({m: nn.Linear(q * int(in_dims[m]), d_hidden) for m in used})
        layers: list[nn.Module] = []
        for _ in range(depth):
            layers += [nn.GELU(), nn.Linear(d_hidden, d_hidden)]
        if depth:
            layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers, nn.Linear(d_hidden, 2 * sum(self.channels)))
        self.residual_scale = residual_scale
        if residual_scale:
            nn.init.zeros_(self.mlp[-1].weight)
            nn.init.zeros_(self.mlp[-1].bias)

    def _pool(self, m: str, tokens: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Tokens (B, N, D) of modality ``m``, ``valid`` (B, N) -> (B, Q * D): the pooled question (0 without one)."""
        h = self.norm[m](torch.where(valid[..., None], tokens, 0.0))  # (B, N, D); padding cannot leak (where)
        if self.pool == "mean":
            n = valid.sum(dim=1, keepdim=True).clamp(min=1).to(h.dtype)  # (B, 1)
            return torch.where(valid[..., None], h, 0.0).sum(dim=1) / n  # (B, D)
        scores = self.scores[m](h).masked_fill(~valid[..., None], float("-inf"))  # (B, N, Q)
        weights = torch.softmax(scores, dim=1).nan_to_num(0.0)  # (B, N, Q); a row with no valid token -> 0
        return torch.einsum("bnq,bnd->bqd", weights, h).flatten(1)  # (B, Q * D)

    def forward(self, sequences: Mapping[str, TokenSequence], present: Mapping[str, torch.Tensor]) -> FilmParams | None:
        """``sequences``: modality -> TokenSequence (B, N_m, D_m); ``present``: modality -> (B,) bool, whether each
        sample has that modality. Returns ``FilmParams`` (scale, shift: one (B, C_s) pair per stage), or None when no
        sample has a question."""
        total, count = None, None
        for m in self.sources:
            if m not in sequences or m not in present:
                continue
            tokens, mask = sequences[m]
            valid = mask.bool() & present[m].bool()[:, None]  # (B, N)
            has = valid.any(dim=1, keepdim=True)  # (B, 1)
            summary = torch.where(has, self.summarize[m](self._pool(m, tokens, valid)), 0.0)  # (B, d_hidden)
            total = summary if total is None else total + summary
            count = has.to(summary.dtype) if count is None else count + has.to(summary.dtype)
        if total is None:
            return None
        has_question = count > 0  # (B, 1)
        if not bool(has_question.any()):
            return None
        gamma, beta = self.mlp(total / count.clamp(min=1)).chunk(2, dim=-1)  # (B, sum C) each
        scale = torch.where(has_question, 1.0 + gamma if self.residual_scale else gamma, 1.0)  # exactly 1 without one
        shift = torch.where(has_question, beta, 0.0)  # exactly 0 without a question
        return FilmParams(tuple(scale.split(self.channels, dim=-1)), tuple(shift.split(self.channels, dim=-1)))
