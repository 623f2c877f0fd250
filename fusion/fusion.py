"""ModalityFusion: per-modality token sequences -> one FusedMemory for the decoder's cross-attention."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from omnifuse.encoders.base import FilmParams, TokenSequence
from omnifuse.fusion.attention import CrossModalBlock, build_attention_masks
from omnifuse.fusion.embedding import ModalityEmbedding
from omnifuse.fusion.film import QuestionFilm
from omnifuse.fusion.gate import ModalityGate, modality_dropout
from omnifuse.fusion.types import FusedMemory


def _zero_where_not(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x`` (B, N, D) with positions where ``mask`` (B, N) is False set to exactly 0 (NaN-safe)."""
    return torch.where(mask[..., None], x, torch.zeros((), dtype=x.dtype, device=x.device))


class ModalityFusion(nn.Module):
    """Project, cross-attend and gate the modalities of a batch into a ``FusedMemory``.

    Args:
        d_model: width of the fused memory (the decoder's cross-attention input).
        in_dims: encoder ``out_dim`` per modality; a modality missing here can never be passed in.
        modalities: the modality order, i.e. the columns of ``present`` and of ``modality_weights``.
        n_layers, n_heads, ffn_mult, dropout: cross-modal block stack (``n_layers=0``: projection + gate only).
        modality_dropout: training only; drop each present modality of a sample with this probability, never all.
        max_positions: most tokens one modality may bring (size of its learned position table).
        gate_floor: each present modality's weight is at least ``gate_floor / n_present`` (see ``ModalityGate``), so
            no present modality can be silenced entirely; 0 gives the plain masked softmax.
        film: before the cross-modal blocks, modulate each modality's tokens by the others (FiLM, Perez et al. 2018):
            ``x * (1 + gamma) + beta`` with ``(gamma, beta)`` a linear map of the mean of the other present modalities'
            tokens (zero-initialised, so it starts as the identity). Attention can only mix values; FiLM gives a
            direct product between, say, a question's words and every image token.
        vision_film: question-conditioned vision. ``vision_conditioning`` computes, from the question's tokens (text
            or audio, per sample), FiLM parameters for every stage of the image encoder (``QuestionFilm``), which the
            model passes to the image encoder *before* fusion, so the question shapes the visual features from the
            first stage on. A sample without a question gets exactly no conditioning.
        vision_film_hidden: width of the ``QuestionFilm`` summary and MLP.
        vision_film_depth: hidden layers of the ``QuestionFilm`` head (0: linear).
        vision_film_residual: ``QuestionFilm(residual_scale=...)``: True, ``scale = 1 + gamma`` starting at exactly 1;
            False, ``scale = gamma`` from a random start (the FiLM paper's form).
        attention_window: long inputs: a modality's tokens attend to their own modality only within this many
            positions (plus the null token), to the other modalities in full, and no (N, N) mask is built, so memory
            and time grow linearly with one long modality (``CrossModalBlock`` with ``window``). None: full masks.
        raw_modalities: modalities whose tokens are not LayerNormed, neither before their projection nor after the
            cross-modal blocks. A LayerNorm divides a token by its own spread across channels, so a feature that says
            "yes" by how strongly it fires is partly divided away. Measured on the plain FiLM network of issue 29
            (benchmarks/film_reference.py --pooled-norm): a LayerNorm over the pooled image feature held validation
            yes/no near its answer prior for 1,000+ steps on a seed that bound by step 1,000 without it.
        question_memory: with ``vision_film``, whether the question's own tokens (text, audio) are also in the
            decoder's memory for samples that have an image. False: for those samples the memory holds the image
            tokens only, so the answer has to come through the image features the question shaped (the FiLM
            network's design, where the classifier sees only the pooled visual features); a sample without an image
            keeps its question tokens. ``modality_weights`` then give the question modalities 0 for such samples.
        vision_film_channels: the image encoder's ``film_channels`` (given by the model, not by configs).

    Memory layout, along N: ``[null] + [tokens of modalities[0]] + [tokens of modalities[1]] + ...``, where only the
    modalities found in ``sequences`` have a block. The null token is a learned vector, always attendable, so no
    memory row is ever fully masked (a sample with no modality at all still yields finite outputs; the decoder can
    cross-attend without special cases). Tokens that are padding, or of a modality a sample lacks, have mask False
    and are exactly 0. Token values of modality m are scaled by ``weight[b, m] * n_present[b]`` (1 when the gate is
    uniform), so the gate decides how strongly each modality speaks to the decoder; a decoder that LayerNorms the
    memory per token before its K/V projections undoes part of that scaling.

    A modality counts as present for a sample when ``present[b, m]`` is True *and* its sequence has at least one
    valid token for that sample (e.g. a clip too short for a single audio token counts as absent).
    """

    def __init__(
        self,
        d_model: int,
        in_dims: Mapping[str, int],
        modalities: Sequence[str] = ("image", "audio", "text"),
        n_layers: int = 2,
        n_heads: int = 4,
        ffn_mult: int = 4,
        dropout: float = 0.0,
        modality_dropout: float = 0.0,
        max_positions: int = 1024,
        gate_floor: float = 0.5,
        film: bool = False,
        vision_film: bool = False,
        vision_film_hidden: int = 256,
        vision_film_residual: bool = True,
        vision_film_depth: int = 1,
        vision_film_channels: Sequence[int] = (),
        question_memory: bool = True,
        raw_modalities: Sequence[str] = (),
        attention_window: int | None = None,
    ) -> None:
        super().__init__()
        if attention_window is not None and attention_window < 1:
            raise ValueError(f"attention_window must be None or >= 1, got {attention_window}")
        self.attention_window = attention_window
        self.modalities = tuple(modalities)
        unknown = set(in_dims) - set(self.modalities)
        if unknown:
            raise ValueError(f"in_dims has modalities {sorted(unknown)} not in modalities={self.modalities}")
        if not 0.0 <= modality_dropout < 1.0:
            raise ValueError(f"modality_dropout must be in [0, 1), got {modality_dropout}")
        self.d_model = d_model
        self.modality_dropout = modality_dropout
        unknown = set(raw_modalities) - set(self.modalities)
        if unknown:
            raise ValueError(f"raw_modalities has {sorted(unknown)} not in modalities={self.modalities}")
        self.raw_modalities = tuple(raw_modalities)
        self.embed = nn.ModuleDict(
            {
                m: ModalityEmbedding(int(d), d_model, max_positions, input_norm=m not in self.raw_modalities)
                for m, d in in_dims.items()
            }
        )
        self.null_token = nn.Parameter(torch.randn(d_model) * 0.02)
        self.film = nn.ModuleDict({m: nn.Linear(d_model, 2 * d_model) for m in in_dims}) if film else None
        if self.film is not None:
            for layer in self.film.values():
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)
        self.vision_film = (
            QuestionFilm(
                in_dims,
                vision_film_channels,
                vision_film_hidden,
                sources=("text", "audio"),
                residual_scale=vision_film_residual,
                depth=vision_film_depth,
            )
            if vision_film
            else None
        )
        if not question_memory and not vision_film:
            raise ValueError("question_memory=False needs vision_film=True: without it the question reaches nothing")
        self.question_memory = question_memory
        # Per modality column: is it a question source (vision_film), is it raw. Buffers, so a forward on a GPU does not
        # copy (and wait for) a freshly built host tensor; not persistent: derived from the settings, not learned.
        sources = self.vision_film.sources if self.vision_film is not None else ()
        self.register_buffer("_question_cols", torch.tensor([m in sources for m in self.modalities]), persistent=False)
        self.register_buffer(
            "_raw_cols", torch.tensor([m in self.raw_modalities for m in self.modalities]), persistent=False
        )
        self.blocks = nn.ModuleList([CrossModalBlock(d_model, n_heads, ffn_mult, dropout) for _ in range(n_layers)])
        self.norm = nn.LayerNorm(d_model)
        self.gate = ModalityGate(d_model, len(self.modalities), floor=gate_floor)

    def vision_conditioning(self, sequences: Mapping[str, TokenSequence], present: torch.Tensor) -> FilmParams | None:
        """FiLM parameters for the image encoder from the question modalities in ``sequences`` (``present`` (B, M)
        bool, columns in ``modalities``); None without ``vision_film`` or when no sample has a question."""
        if self.vision_film is None:
            return None
        flags = {m: present[:, i].bool() for i, m in enumerate(self.modalities)}
        return self.vision_film(sequences, flags)

    def _film(self, names: list[str], parts: list[torch.Tensor], valids: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each modality's tokens (B, N_m, D) modulated by the mean of the *other* modalities' valid tokens."""
        sums = [_zero_where_not(x, v).sum(dim=1) for x, v in zip(parts, valids)]  # (B, D) each
        counts = [v.sum(dim=1, keepdim=True).to(parts[0].dtype) for v in valids]  # (B, 1) each
        total, n_total = sum(sums), sum(counts)
        out = []
        for name, x, v, s, n in zip(names, parts, valids, sums, counts):
            context = (total - s) / (n_total - n).clamp(min=1)  # (B, D); 0 when no other modality is present
            gamma, beta = self.film[name](context).chunk(2, dim=-1)  # (B, D) each
            out.append(_zero_where_not(x * (1 + gamma[:, None]) + beta[:, None], v))
        return out

    def forward(self, sequences: Mapping[str, TokenSequence], present: torch.Tensor) -> FusedMemory:
        """``sequences``: modality -> TokenSequence (B, N_m, in_dim) (modalities no sample has may be omitted);
        ``present`` (B, M) bool -> FusedMemory(tokens (B, 1 + sum N_m, d_model), mask, modality_weights (B, M))."""
        for name in sequences:
            if name not in self.embed:
                raise ValueError(f"no input projection for modality {name!r}; in_dims has {sorted(self.embed)}")
        present = present.bool()
        B, M = present.shape
        if present.shape[1] != len(self.modalities):
            raise ValueError(f"present has {M} columns, expected {len(self.modalities)} ({self.modalities})")
        names = [m for m in self.modalities if m in sequences]
        cols = [self.modalities.index(m) for m in names]

        # Effective presence: flagged present and at least one valid token; then modality dropout (training).
        has_tokens = torch.zeros_like(present)
        for name, col in zip(names, cols):
            has_tokens[:, col] = sequences[name].mask.bool().any(dim=-1)
        present = present & has_tokens  # (B, M)
        if self.training and self.modality_dropout > 0:
            present = modality_dropout(present, self.modality_dropout)
        if self.vision_film is not None and not self.question_memory and "image" in self.modalities:
            has_image = present[:, self.modalities.index("image"), None]  # (B, 1)
            present = present & ~(has_image & self._question_cols.to(present.device))  # the question reaches the decoder through the image
        # A modality no sample of the batch has (after the rules above) adds only masked tokens: at inference leave it
        # out of the memory altogether (the result is the same; e.g. a 10-minute spoken question that only conditions
        # the image tower is neither embedded nor attended over).
        # In training they stay (zero gradients rather than none, so optimizer states evolve as before).
        if not self.training:
            kept = [(name, col) for name, col in zip(names, cols) if bool(present[:, col].any())]
            names, cols = [n for n, _ in kept], [c for _, c in kept]

        # Embed each modality; padding / absent positions are zeroed first so their content cannot matter.
        device = self.null_token.device
        parts = [self.null_token.to(device).expand(B, 1, -1)]  # (B, 1, D)
        valids = [torch.ones(B, 1, dtype=torch.bool, device=device)]
        segments = [torch.full((1,), -1, dtype=torch.long, device=device)]
        for name, col in zip(names, cols):
            seq = sequences[name]
            valid = seq.mask.bool() & present[:, col, None]  # (B, N_m)
            parts.append(self.embed[name](_zero_where_not(seq.tokens, valid)))  # (B, N_m, D)
            valids.append(valid)
            segments.append(torch.full((valid.shape[1],), col, dtype=torch.long, device=device))
        if self.film is not None:
            parts[1:] = self._film(names, parts[1:], valids[1:])
        x = torch.cat(parts, dim=1)  # (B, N, D), N = 1 + sum N_m
        valid = torch.cat(valids, dim=1)  # (B, N)
        segment = torch.cat(segments)  # (N,)

        if self.attention_window is None:
            cross_mask, self_mask = build_attention_masks(segment, valid)  # (B, 1, N, N) each
            for block in self.blocks:
                x = block(x, cross_mask, self_mask)
        else:  # long inputs: block by block, own modality within the window, no (N, N) mask
            lengths = [v.shape[1] for v in valids[1:]]
            for block in self.blocks:
                x = block(x, lengths=lengths, valid=valid, window=self.attention_window)
        raw = self._raw_cols[segment.clamp(min=0)]
        raw = raw & (segment >= 0)  # (N,): tokens of a raw modality (never the null token)
        x = torch.where(raw[None, :, None], x, self.norm(x)) if self.raw_modalities else self.norm(x)  # (B, N, D)

        # Gate from masked-mean summaries of each modality block.
        summaries = x.new_zeros(B, M, self.d_model)  # (B, M, D), zeros for modalities not in `sequences`
        for col in cols:
            in_block = (segment == col)[None, :] & valid  # (B, N)
            total = _zero_where_not(x, in_block).sum(dim=1)  # (B, D)
            summaries[:, col] = total / in_block.sum(dim=1, keepdim=True).clamp(min=1).to(x.dtype)
        weights = self.gate(summaries, present)  # (B, M) fp32

        # Scale each modality block by weight * number of present modalities; the null token keeps scale 1.
        n_present = present.sum(dim=-1, keepdim=True).to(weights.dtype)  # (B, 1)
        scale_per_modality = torch.cat([torch.ones(B, 1, device=device), weights * n_present], dim=1)  # (B, 1 + M)
        scale = scale_per_modality[:, segment + 1]  # (B, N): column 0 = null, column 1 + m = modality m
        tokens = _zero_where_not(x * scale[..., None].to(x.dtype), valid)
        return FusedMemory(tokens, valid, weights)
