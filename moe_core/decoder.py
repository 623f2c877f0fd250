"""The MoE decoder: pre-norm blocks (causal self-attention with RoPE, cross-attention to the encoder memory,
dense or MoE SwiGLU FFN), tied input/output embeddings, optional DeepSeek-V3 multi-token prediction (MTP).

Token conventions: ``attention_mask`` (B, T) marks real tokens (True); right padding (training) and left
padding (generation with prompts of different lengths) both work: positions count real tokens only,
``position = cumsum(mask) - 1``, so a left-padded row sees exactly what it would see unpadded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from omnifuse.moe_core.attention import (
    CrossAttention,
    KVCache,
    RotaryEmbedding,
    SelfAttention,
    memory_masks,
    self_attention_mask,
)
from omnifuse.moe_core.config import MoEDecoderConfig
from omnifuse.moe_core.experts import RoutedExperts, SwiGLU
from omnifuse.moe_core.generation import GenerationOutput, generate
from omnifuse.moe_core.moe import MoEAux, MoELayer
from omnifuse.moe_core.router import Router, RouterStats, update_router_biases


@dataclass
class DecoderOutput:
    """Result of :meth:`MoEDecoder.forward`."""

    logits: Tensor  # (B, T, V): position t predicts token t+1
    router_loss: Tensor  # () weighted aux + seq_aux + z losses of all MoE layers (0 if none)
    router_stats: list[RouterStats]  # one per MoE layer
    mtp_logits: Tensor | None = None  # (B, T, V): position t predicts token t+2 (mtp_depth=1), else None
    expert_idx: list[Tensor] | None = None  # one (B, T, k) per MoE layer: the experts each token was routed to
    exit_logits: list[Tensor] | None = None  # one (B, T, V) per exit layer (early exit), else None


@dataclass
class MemoryState:
    """The encoder memory prepared once: per-layer cross-attention K/V and the masks."""

    kv: list[tuple[Tensor, Tensor]]  # per decoder layer: k, v (B, H, N, hs)
    mask: Tensor  # (B, 1, 1, N) bool
    has_memory: Tensor  # (B, 1, 1) bool

    def repeat_interleave(self, n: int) -> MemoryState:
        """Each row ``n`` times (beam search: rows sample-major)."""
        return MemoryState(
            kv=[(k.repeat_interleave(n, 0), v.repeat_interleave(n, 0)) for k, v in self.kv],
            mask=self.mask.repeat_interleave(n, 0),
            has_memory=self.has_memory.repeat_interleave(n, 0),
        )


class DecoderBlock(nn.Module):
    """``x + SelfAttn(norm(x))``, ``+ CrossAttn(norm(x), memory)``, ``+ FFN(norm(x))`` (FFN dense or MoE)."""

    def __init__(self, cfg: MoEDecoderConfig, layer_idx: int, moe: bool) -> None:
        super().__init__()
        d = cfg.d_model
        self.norm1 = nn.RMSNorm(d, eps=cfg.norm_eps)
        self.self_attn = SelfAttention(d, cfg.n_heads, layer_idx, cfg.dropout)
        self.norm2 = nn.RMSNorm(d, eps=cfg.norm_eps)
        self.cross_attn = CrossAttention(d, cfg.memory_dim, cfg.n_heads, cfg.dropout)
        self.norm3 = nn.RMSNorm(d, eps=cfg.norm_eps)
        self.ffn: nn.Module = MoELayer.from_config(cfg) if moe else SwiGLU(d, cfg.d_ff_dense)
        self.drop = nn.Dropout(cfg.dropout)

    @property
    def is_moe(self) -> bool:
        return isinstance(self.ffn, MoELayer)

    def forward(
        self,
        x: Tensor,
        rope: tuple[Tensor, Tensor],
        self_mask: Tensor | None,
        cross_kv: tuple[Tensor, Tensor],
        memory: MemoryState,
        valid: Tensor | None,
        cache: KVCache | None = None,
        rows: Tensor | None = None,
    ) -> tuple[Tensor, MoEAux | None]:
        """``rows``: the cache rows ``x`` holds when only some of the batch runs this block (early exit)."""
        x = x + self.drop(self.self_attn(self.norm1(x), rope, self_mask, cache, rows))  # (B, T, d)
        x = x + self.drop(self.cross_attn(self.norm2(x), cross_kv, memory.mask, memory.has_memory))
        h = self.norm3(x)
        if self.is_moe:
            y, aux = self.ffn(h, valid)
        else:
            y, aux = self.ffn(h), None
        return x + self.drop(y), aux


class MTPModule(nn.Module):
    """DeepSeek-V3 multi-token prediction, depth 1: ``h'_t = W [norm(h_t); norm(emb(x_{t+1}))]`` -> one block
    (dense FFN) -> own final norm -> the shared (tied) output head, predicting token ``t+2``."""

    def __init__(self, cfg: MoEDecoderConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.norm_h = nn.RMSNorm(d, eps=cfg.norm_eps)
        self.norm_e = nn.RMSNorm(d, eps=cfg.norm_eps)
        self.proj = nn.Linear(2 * d, d, bias=False)
        self.block = DecoderBlock(cfg, layer_idx=cfg.n_layers, moe=False)
        self.norm_f = nn.RMSNorm(d, eps=cfg.norm_eps)

    def forward(self, h: Tensor, next_emb: Tensor, rope, self_mask, cross_kv, memory: MemoryState) -> Tensor:
        x = self.proj(torch.cat((self.norm_h(h), self.norm_e(next_emb)), dim=-1))  # (B, T, d)
        x, _ = self.block(x, rope, self_mask, cross_kv, memory, None)
        return self.norm_f(x)


class MoEDecoder(nn.Module):
    """DeepSeek-V3-style MoE decoder over an encoder memory. See :class:`MoEDecoderConfig`."""

    # Decoding steps run the blocks only for the rows still generating once some have finished (see ``step``).
    # False runs every row through every block, as before: the reference that benchmarks/finished_rows.py times.
    skip_finished_rows: bool = True

    def __init__(self, config: MoEDecoderConfig) -> None:
        super().__init__()
        self.config = cfg = config
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.rope = RotaryEmbedding(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
        self.blocks = nn.ModuleList(DecoderBlock(cfg, i, moe=i >= cfg.n_dense_layers) for i in range(cfg.n_layers))
        self.norm_f = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mtp = MTPModule(cfg) if cfg.mtp_depth == 1 else None
        self.reset_parameters()

    # ------------------------------------------------------------------------------------------ setup
    def reset_parameters(self) -> None:
        """Normal(0, init_std) everywhere (default ``d_model ** -0.5``); residual output projections scaled by
        ``1/sqrt(2 * n_layers)``."""
        std = self.config.init_std if self.config.init_std is not None else self.config.d_model**-0.5
        out_std = std / math.sqrt(2 * self.config.n_layers)
        for name, m in self.named_modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                is_out = name.endswith(("attn.proj", ".w2"))
                nn.init.normal_(m.weight, std=out_std if is_out else std)
            elif isinstance(m, RoutedExperts):
                nn.init.normal_(m.w_gate, std=std)
                nn.init.normal_(m.w_up, std=std)
                nn.init.normal_(m.w_down, std=out_std)
            elif isinstance(m, Router):
                nn.init.normal_(m.weight, std=std)
            elif isinstance(m, nn.RMSNorm):
                nn.init.ones_(m.weight)

    @property
    def moe_layers(self) -> list[MoELayer]:
        return [b.ffn for b in self.blocks if b.is_moe]

    @property
    def n_moe_layers(self) -> int:
        return len(self.moe_layers)

    # ------------------------------------------------------------------------------------------ pieces
    def prepare_memory(self, memory: Tensor, memory_mask: Tensor) -> MemoryState:
        """Cross-attention K/V of every layer (and the MTP block) for ``memory: (B, N, d_memory)``."""
        kv = [b.cross_attn.memory_kv(memory) for b in self.blocks]
        if self.mtp is not None:
            kv.append(self.mtp.block.cross_attn.memory_kv(memory))
        mask, has = memory_masks(memory_mask.bool())
        return MemoryState(kv=kv, mask=mask, has_memory=has)

    def head(self, h: Tensor) -> Tensor:
        """Final norm + tied output projection: ``(..., d) -> (..., V)``."""
        return F.linear(self.norm_f(h), self.embed.weight)

    def run_blocks(
        self,
        input_ids: Tensor,
        positions: Tensor,
        valid: Tensor | None,
        self_mask: Tensor | None,
        memory: MemoryState,
        cache: KVCache | None = None,
        exit_states: list[Tensor] | None = None,
    ) -> tuple[Tensor, list[MoEAux], tuple[Tensor, Tensor]]:
        """Embed and run every block: returns the last hidden state ``(B, T, d)`` (before the final norm),
        the MoE side outputs, and the RoPE tables used. ``exit_states``: a list that receives the hidden state after
        each of ``config.exit_layers``."""
        x = self.drop(self.embed(input_ids))  # (B, T, d)
        rope = self.rope(positions)
        auxes = []
        exits = set(self.config.exit_layers or ()) if exit_states is not None else set()
        for i, (blk, kv) in enumerate(zip(self.blocks, memory.kv)):
            x, aux = blk(x, rope, self_mask, kv, memory, valid, cache)
            if aux is not None:
                auxes.append(aux)
            if i in exits:
                exit_states.append(x)
        return x, auxes, rope

    def step(
        self, input_ids: Tensor, valid: Tensor, positions: Tensor, memory: MemoryState, cache: KVCache
    ) -> tuple[Tensor, list[Tensor]]:
        """Incremental decoding: append ``input_ids: (B, T)`` to ``cache`` and return the last position's logits
        ``(B, V)`` in fp32 and the experts it was routed to, one ``(B, k)`` per MoE layer."""
        t = input_ids.size(1)
        end = cache.length + t
        cache.key_valid[:, cache.length : end] = valid
        mask = self_attention_mask(cache.key_valid[:, :end], t)  # (B, 1, T, end)
        # one token per row and some rows finished (or an exit threshold): the blocks run only for the rows that need
        # them. In batch inference answers end at different steps (easy-VQA: "no" after 3 tokens, "rectangle" after
        # 10), and a finished row's padding would otherwise run every block to the last step.
        if t == 1 and (
            self.config.exit_threshold is not None or (self.skip_finished_rows and not bool(valid[:, -1].all()))
        ):
            out = self._step_rows(input_ids, valid, positions, mask, memory, cache)
            cache.advance(t)
            return out
        h, auxes, _ = self.run_blocks(input_ids, positions, valid, mask, memory, cache)
        cache.advance(t)
        return self.head(h[:, -1]).float(), [a.topk_idx[:, -1] for a in auxes]

    def _step_rows(
        self, input_ids: Tensor, valid: Tensor, positions: Tensor, mask: Tensor, memory: MemoryState, cache: KVCache
    ) -> tuple[Tensor, list[Tensor]]:
        """One decoding step in which each block runs only for the rows that need it: rows whose token is valid, and
        with ``config.exit_threshold`` set, only until the token leaves at an exit layer (``config.exit_layers``) once
        the shared head's top probability there reaches the threshold; the blocks after that run only for the rows
        still in. A row that left keeps its exited state; each later block writes that state's keys/values into its
        KV cache slot (so the next tokens attend to something at every layer) without computing anything else.
        Rows whose token is not valid (a finished sequence's padding: no later token attends to its slot, and the
        generation loop reads nothing of it) run no block at all; their logits are zeros. Routing telemetry reads
        -1 for the MoE layers a token skipped."""
        cfg = self.config
        b = input_ids.size(0)
        x = self.drop(self.embed(input_ids))  # (B, 1, d)
        cos, sin = self.rope(positions)
        logits = torch.zeros(b, cfg.vocab_size, device=x.device, dtype=torch.float32)
        routes: list[Tensor] = []
        # rows still running the blocks: in a batch, finished rows would otherwise keep the later blocks busy (their
        # padding is rarely confident enough to exit), which cost early exit most of its speed at batch 64
        inside = valid[:, -1].clone()
        left = torch.zeros(b, dtype=torch.bool, device=x.device)  # rows whose token exited at an earlier layer
        exits = set(cfg.exit_layers or ()) if cfg.exit_threshold is not None else set()
        for i, (blk, kv) in enumerate(zip(self.blocks, memory.kv)):
            rows = inside.nonzero().squeeze(1)
            gone = left.nonzero().squeeze(1)
            if gone.numel():  # the exited tokens' states as this layer's keys/values
                blk.self_attn.fill_cache(blk.norm1(x[gone]), (cos[gone], sin[gone]), cache, gone)
            route = torch.full((b, cfg.top_k), -1, dtype=torch.long, device=x.device) if blk.is_moe else None
            if rows.numel():
                every = rows.numel() == b

                def pick(t: Tensor, rows: Tensor = rows, every: bool = every) -> Tensor:  # the rows still in
                    return t if every else t[rows]

                sub = MemoryState(kv=[], mask=pick(memory.mask), has_memory=pick(memory.has_memory))
                h, aux = blk(
                    pick(x), (pick(cos), pick(sin)), pick(mask), (pick(kv[0]), pick(kv[1])), sub, pick(valid), cache,
                    None if every else rows,
                )  # fmt: skip
                x = h if every else x.index_copy(0, rows, h)
                if aux is not None:
                    route[rows] = aux.topk_idx[:, -1]
                if i in exits:
                    lg = self.head(h[:, -1]).float()  # (R, V)
                    leave = lg.softmax(-1).amax(-1) >= cfg.exit_threshold
                    logits[rows[leave]] = lg[leave]
                    inside[rows[leave]] = False
                    left[rows[leave]] = True
            if route is not None:
                routes.append(route)
        rows = inside.nonzero().squeeze(1)
        if rows.numel():
            logits[rows] = self.head(x[rows][:, -1]).float()
        return logits, routes

    # ------------------------------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: Tensor,
        memory: Tensor,
        memory_mask: Tensor,
        attention_mask: Tensor | None = None,
    ) -> DecoderOutput:
        """Teacher-forced pass. ``input_ids: (B, T)``, ``memory: (B, N, d_memory)``, ``memory_mask: (B, N)``
        (True = attend), ``attention_mask: (B, T)`` (True = real token; right or left padding)."""
        b, t = input_ids.shape
        mem = self.prepare_memory(memory, memory_mask)
        valid, positions, self_mask = self._masks(input_ids, attention_mask)
        exit_states: list[Tensor] | None = [] if self.config.exit_layers else None
        h, auxes, rope = self.run_blocks(input_ids, positions, valid, self_mask, mem, exit_states=exit_states)
        logits = self.head(h)  # (B, T, V)
        mtp_logits = None
        if self.mtp is not None:
            nxt = F.pad(input_ids[:, 1:], (0, 1), value=self.config.pad_id)  # (B, T) token t+1 at position t
            hm = self.mtp(h, self.embed(nxt), rope, self_mask, mem.kv[-1], mem)
            mtp_logits = F.linear(hm, self.embed.weight)  # (B, T, V)
        router_loss = sum((a.router_loss for a in auxes), logits.new_zeros((), dtype=torch.float32))
        return DecoderOutput(
            logits=logits,
            router_loss=router_loss,
            router_stats=[a.stats for a in auxes],
            mtp_logits=mtp_logits,
            expert_idx=[a.topk_idx for a in auxes],
            exit_logits=[self.head(e) for e in exit_states] if exit_states else None,  # the shared head at each exit
        )

    def _masks(self, input_ids: Tensor, attention_mask: Tensor | None):
        b, t = input_ids.shape
        if attention_mask is None:
            positions = torch.arange(t, device=input_ids.device).expand(b, t)
            return None, positions, None
        valid = attention_mask.bool()
        positions = (valid.long().cumsum(-1) - 1).clamp_min(0)  # (B, T) real tokens count from 0
        right_padded = bool((valid[:, 1:] <= valid[:, :-1]).all())
        # Right padding needs no key mask: causality already hides the trailing pads from real tokens.
        self_mask = None if right_padded else self_attention_mask(valid, t)
        return valid, positions, self_mask

    def loss(self, output: DecoderOutput, labels: Tensor, ignore_index: int = -100) -> dict[str, Tensor]:
        """Training objective. ``labels: (B, T)``: ``labels[:, t]`` is the target of ``logits[:, t]`` (the next
        token), ``ignore_index`` where there is none. Returns ``loss = lm + mtp_loss_coef * mtp + router``."""
        v = output.logits.size(-1)
        lm = F.cross_entropy(output.logits.float().reshape(-1, v), labels.reshape(-1), ignore_index=ignore_index)
        total = lm + output.router_loss
        out = {"lm_loss": lm, "router_loss": output.router_loss}
        if output.mtp_logits is not None:
            mtp_labels = F.pad(labels[:, 1:], (0, 1), value=ignore_index)  # (B, T) token t+2
            if bool((mtp_labels != ignore_index).any()):
                mtp = F.cross_entropy(
                    output.mtp_logits.float().reshape(-1, v), mtp_labels.reshape(-1), ignore_index=ignore_index
                )
            else:
                mtp = output.mtp_logits.sum() * 0.0
            total = total + self.config.mtp_loss_coef * mtp
            out["mtp_loss"] = mtp
        out["loss"] = total
        return out

    # ------------------------------------------------------------------------------------------ balancing
    @torch.no_grad()
    def update_router_biases(self) -> None:
        """Bias step of every MoE layer from the counts accumulated since the last call (all-reduced when
        ``torch.distributed`` is initialised), then reset the counts. Call after each optimizer step."""
        update_router_biases([m.router for m in self.moe_layers])

    # ------------------------------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(self, memory: Tensor, memory_mask: Tensor, prompt_ids: Tensor, *args, **kwargs) -> GenerationOutput:
        """Generate after ``prompt_ids: (B, P)``: :func:`omnifuse.moe_core.generation.generate` with this decoder;
        every other argument (``max_new_tokens``, ``eos_id``, ``strategy``, ...) is passed on unchanged."""
        return generate(self, memory, memory_mask, prompt_ids, *args, **kwargs)
