"""Generation for :class:`omnifuse.moe_core.MoEDecoder`: greedy, sampling (temperature, top-p), beam search.

* Batched with per-sequence stop: a finished row emits ``pad_id`` and no longer counts; rows never interact
  (attention is per row and MoE routing is per token and dropless at inference).
* The memory's cross-attention K/V are computed once; self-attention uses a :class:`KVCache`
  (``use_cache=False`` re-runs the whole prefix every step; it exists to test the cache).
* Prompts of different lengths: left-pad them to a common length ``P`` and pass ``prompt_mask`` (True = real
  token). Positions count real tokens only and padding is never attended to, so each row generates what
  its prompt alone would generate.
* ``logits_processor(seqs, logits) -> logits`` is called once per step before choosing tokens with
  ``seqs: (R, P + t)`` (the prompt, padding included, plus the tokens generated so far) and fp32
  ``logits: (R, V)``; it may set entries to ``-inf`` (e.g. a JSON-Schema mask). ``R = B`` for greedy and
  sampling, ``R = B * num_beams`` for beam search, rows sample-major (row ``r`` is sample ``r // num_beams``).
  A row whose logits are all ``-inf`` emits ``eos_id``.
* Router usage: ``expert_counts[b, l, e]`` counts, over the generated tokens of sample ``b``, how often the
  position that produced the token was routed to expert ``e`` in MoE layer ``l`` (``top_k`` per token);
  ``token_experts[b, t, l]`` are the ``top_k`` experts themselves for generated token ``t`` (-1 past its end).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from omnifuse.moe_core.attention import KVCache, self_attention_mask

if TYPE_CHECKING:
    from omnifuse.moe_core.decoder import MemoryState, MoEDecoder

STRATEGIES = ("greedy", "sample", "beam")


@dataclass
class GenerationOutput:
    """Result of :meth:`MoEDecoder.generate`."""

    tokens: Tensor  # (B, L) long, generated tokens after the prompt, right-padded with pad_id, eos included
    lengths: Tensor  # (B,) long, generated tokens per sample (eos included where emitted)
    expert_counts: Tensor  # (B, n_moe_layers, E) long, router usage of the generated tokens
    scores: Tensor  # (B,) float: beam = length-normalised log-prob; greedy/sample = summed log-prob
    # (B, L, n_moe_layers, top_k) long: the experts of the position that produced each generated token, -1 past the
    # sample's length (the same routing expert_counts sums).
    token_experts: Tensor | None = None


class _Decoding:
    """Feeds tokens to the model, with the KV cache or (reference) by re-running the full prefix."""

    def __init__(
        self,
        model: MoEDecoder,
        memory: MemoryState,
        prompt: Tensor,
        prompt_mask: Tensor,
        max_new_tokens: int,
        use_cache: bool,
    ) -> None:
        self.model, self.memory = model, memory
        self.seqs, self.valid = prompt, prompt_mask  # (R, t)
        self.cache = None
        if use_cache:
            cfg = model.config
            r, p = prompt.shape
            self.cache = KVCache(cfg.n_layers, r, cfg.n_heads, cfg.head_dim, p + max_new_tokens, prompt.device)
        self.next_pos = prompt_mask.long().sum(-1)  # (R,) position of the next real token

    def first(self) -> tuple[Tensor, list[Tensor]]:
        """Process the prompt; logits ``(R, V)`` fp32 of its last position and its routing."""
        if self.cache is None:
            return self._full()
        positions = (self.valid.long().cumsum(-1) - 1).clamp_min(0)  # (R, P)
        return self.model.step(self.seqs, self.valid, positions, self.memory, self.cache)

    def next(self, token: Tensor, valid: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Append ``token: (R,)`` (``valid`` False for rows that no longer matter) and decode one step."""
        self.seqs = torch.cat((self.seqs, token.unsqueeze(1)), dim=1)
        self.valid = torch.cat((self.valid, valid.unsqueeze(1)), dim=1)
        if self.cache is None:
            return self._full()
        out = self.model.step(
            token.unsqueeze(1), valid.unsqueeze(1), self.next_pos.unsqueeze(1), self.memory, self.cache
        )
        self.next_pos = self.next_pos + valid.long()
        return out

    def reorder(self, rows: Tensor) -> None:
        self.seqs, self.valid, self.next_pos = self.seqs[rows], self.valid[rows], self.next_pos[rows]
        if self.cache is not None:
            self.cache.reorder(rows)

    def _full(self) -> tuple[Tensor, list[Tensor]]:
        positions = (self.valid.long().cumsum(-1) - 1).clamp_min(0)  # (R, t)
        mask = self_attention_mask(self.valid, self.seqs.size(1))  # (R, 1, t, t)
        h, auxes, _ = self.model.run_blocks(self.seqs, positions, self.valid, mask, self.memory)
        return self.model.head(h[:, -1]).float(), [a.topk_idx[:, -1] for a in auxes]


def _route_counts(routes: list[Tensor], n_rows: int, n_experts: int, device) -> Tensor:
    """One step's routing, ``routes``: one ``(R, k)`` per MoE layer -> counts ``(R, n_moe_layers, E)``."""
    out = torch.zeros(n_rows, len(routes), n_experts, dtype=torch.long, device=device)
    for layer, idx in enumerate(routes):
        used = idx >= 0  # -1: a slot adaptive routing left unused
        out[:, layer].scatter_add_(1, idx.clamp_min(0), used.long())
    return out


def _route_ids(routes: list[Tensor], n_rows: int, top_k: int, device) -> Tensor:
    """One step's routing as ids ``(R, n_moe_layers, top_k)`` (a model without MoE layers: ``(R, 0, top_k)``)."""
    if not routes:
        return torch.zeros(n_rows, 0, top_k, dtype=torch.long, device=device)
    return torch.stack(routes, dim=1)


def _sample(logits: Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> Tensor:
    """Nucleus sampling from ``logits: (R, V)`` (finite in every row) -> ``(R,)``."""
    probs = F.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)  # (R, V)
        outside = sorted_p.cumsum(-1) - sorted_p > top_p  # keeps the smallest prefix with mass >= top_p
        sorted_p = sorted_p.masked_fill(outside, 0.0)
        pick = torch.multinomial(sorted_p, 1, generator=generator)  # (R, 1)
        return order.gather(1, pick).squeeze(1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def _pad_stack(rows: list[Tensor], pad_id: int, device) -> Tensor:
    width = max((r.numel() for r in rows), default=0)
    out = torch.full((len(rows), width), pad_id, dtype=torch.long, device=device)
    for i, r in enumerate(rows):
        out[i, : r.numel()] = r
    return out


@torch.no_grad()
def generate(
    model: MoEDecoder,
    memory: Tensor,
    memory_mask: Tensor,
    prompt_ids: Tensor,
    max_new_tokens: int,
    eos_id: int,
    strategy: str = "greedy",
    temperature: float = 1.0,
    top_p: float = 1.0,
    num_beams: int = 4,
    length_penalty: float = 1.0,
    logits_processor: Callable[[Tensor, Tensor], Tensor] | None = None,
    generator: torch.Generator | None = None,
    prompt_mask: Tensor | None = None,
    use_cache: bool = True,
) -> GenerationOutput:
    """Generate up to ``max_new_tokens`` after ``prompt_ids: (B, P)`` for the encoder ``memory: (B, N, d_memory)``.

    The model is put in eval mode for the call (dropout off, dropless routing, no balancing counts) and
    restored afterwards. See the module docstring for padding, the logits hook and the router usage.
    """
    cfg = model.config
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if prompt_ids.dim() != 2 or prompt_ids.size(1) < 1:
        raise ValueError(f"prompt_ids must be (B, P) with P >= 1, got shape {tuple(prompt_ids.shape)}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if prompt_ids.size(1) + max_new_tokens > cfg.max_seq_len:
        raise ValueError(
            f"prompt ({prompt_ids.size(1)}) + max_new_tokens ({max_new_tokens}) > max_seq_len ({cfg.max_seq_len})"
        )
    if strategy == "sample" and (temperature < 0 or not 0.0 < top_p <= 1.0):
        raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
    if strategy == "beam" and num_beams < 1:
        raise ValueError(f"num_beams must be >= 1, got {num_beams}")
    prompt_mask = torch.ones_like(prompt_ids, dtype=torch.bool) if prompt_mask is None else prompt_mask.bool()
    if not bool(prompt_mask.any(-1).all()):
        raise ValueError("every prompt needs at least one real token (prompt_mask row all False)")

    was_training = model.training
    model.eval()
    try:
        mem = model.prepare_memory(memory, memory_mask)
        if strategy == "beam":
            return _beam(
                model,
                mem,
                prompt_ids,
                prompt_mask,
                max_new_tokens,
                eos_id,
                num_beams,
                length_penalty,
                logits_processor,
                use_cache,
            )
        return _greedy_or_sample(
            model,
            mem,
            prompt_ids,
            prompt_mask,
            max_new_tokens,
            eos_id,
            strategy,
            temperature,
            top_p,
            logits_processor,
            generator,
            use_cache,
        )
    finally:
        model.train(was_training)


def _greedy_or_sample(
    model,
    mem,
    prompt,
    prompt_mask,
    max_new_tokens,
    eos_id,
    strategy,
    temperature,
    top_p,
    processor,
    generator,
    use_cache,
) -> GenerationOutput:
    cfg = model.config
    b, dev = prompt.size(0), prompt.device
    n_experts = cfg.n_routed_experts
    counts = torch.zeros(b, model.n_moe_layers, n_experts, dtype=torch.long, device=dev)
    finished = torch.zeros(b, dtype=torch.bool, device=dev)
    lengths = torch.zeros(b, dtype=torch.long, device=dev)
    scores = torch.zeros(b, dtype=torch.float32, device=dev)
    out_tokens: list[Tensor] = []
    out_routes: list[Tensor] = []  # per step (B, n_moe_layers, top_k)
    if max_new_tokens == 0:
        return GenerationOutput(
            prompt.new_zeros(b, 0), lengths, counts, scores, _no_routes(b, model.n_moe_layers, cfg.top_k, dev)
        )
    dec = _Decoding(model, mem, prompt, prompt_mask, max_new_tokens, use_cache)
    logits, routes = dec.first()
    for step in range(max_new_tokens):
        if processor is not None:
            logits = processor(dec.seqs, logits).float()
        dead = ~torch.isfinite(logits).any(-1)  # (B,) nothing allowed: emit eos
        logits = logits.masked_fill(dead.unsqueeze(-1), 0.0)
        if strategy == "greedy" or temperature == 0:
            tok = logits.argmax(-1)
        else:
            tok = _sample(logits, temperature, top_p, generator)
        tok = torch.where(dead, torch.full_like(tok, eos_id), tok)
        logp = F.log_softmax(logits, dim=-1).gather(1, tok.unsqueeze(1)).squeeze(1)  # (B,)
        live = ~finished
        tok = torch.where(live, tok, torch.full_like(tok, cfg.pad_id))
        counts += _route_counts(routes, b, n_experts, dev) * live.view(b, 1, 1)
        step_ids = _route_ids(routes, b, cfg.top_k, dev)
        out_routes.append(torch.where(live.view(b, 1, 1), step_ids, torch.full_like(step_ids, -1)))
        scores += torch.where(live & ~dead, logp, torch.zeros_like(logp))
        lengths += live.long()
        finished = finished | (tok == eos_id)
        out_tokens.append(tok)
        if bool(finished.all()) or step == max_new_tokens - 1:
            break
        logits, routes = dec.next(tok, ~finished)
    tokens = torch.stack(out_tokens, dim=1)  # (B, L)
    width = int(lengths.max())
    return GenerationOutput(
        tokens=tokens[:, :width],
        lengths=lengths,
        expert_counts=counts,
        scores=scores,
        token_experts=torch.stack(out_routes, dim=1)[:, :width],
    )


def _no_routes(b: int, n_moe: int, top_k: int, device) -> Tensor:
    return torch.zeros(b, 0, n_moe, top_k, dtype=torch.long, device=device)


def _beam(
    model, mem, prompt, prompt_mask, max_new_tokens, eos_id, nb, length_penalty, processor, use_cache
) -> GenerationOutput:
    """Beam search (finished hypotheses kept apart, as in Hugging Face's ``BeamSearchScorer``): each step the
    ``2 * nb`` best continuations per sample are scanned; an ``eos`` among the first ``nb`` closes a hypothesis
    scored ``sum_logprob / len ** length_penalty``, the others fill the ``nb`` live beams. A sample is done
    when it has ``nb`` hypotheses and its best live beam can no longer beat the worst of them."""
    cfg = model.config
    b, dev = prompt.size(0), prompt.device
    r = b * nb
    n_experts = cfg.n_routed_experts
    n_moe = model.n_moe_layers
    if max_new_tokens == 0:
        z = torch.zeros(b, dtype=torch.long, device=dev)
        return GenerationOutput(
            prompt.new_zeros(b, 0),
            z,
            torch.zeros(b, n_moe, n_experts, dtype=torch.long, device=dev),
            torch.zeros(b, device=dev),
            _no_routes(b, n_moe, cfg.top_k, dev),
        )
    mem = mem.repeat_interleave(nb)
    dec = _Decoding(
        model, mem, prompt.repeat_interleave(nb, 0), prompt_mask.repeat_interleave(nb, 0), max_new_tokens, use_cache
    )
    beam_scores = torch.zeros(b, nb, device=dev)
    beam_scores[:, 1:] = float("-inf")  # all beams start identical: expand only the first
    gen = torch.zeros(r, 0, dtype=torch.long, device=dev)  # (R, t) generated so far
    counts = torch.zeros(r, n_moe, n_experts, dtype=torch.long, device=dev)
    gen_routes = torch.zeros(r, 0, n_moe, cfg.top_k, dtype=torch.long, device=dev)  # (R, t, n_moe, k)
    # (score, tokens, counts, per-token routes)
    hyps: list[list[tuple[float, Tensor, Tensor, Tensor]]] = [[] for _ in range(b)]
    done = [False] * b
    logits, routes = dec.first()
    for step in range(max_new_tokens):
        if processor is not None:
            logits = processor(dec.seqs, logits).float()
        logp = F.log_softmax(logits, dim=-1).nan_to_num(nan=float("-inf"))  # (R, V); all -inf row stays -inf
        v = logp.size(-1)
        step_counts = counts + _route_counts(routes, r, n_experts, dev)  # routing of the parent rows
        step_routes = torch.cat((gen_routes, _route_ids(routes, r, cfg.top_k, dev).unsqueeze(1)), dim=1)
        cand = (beam_scores.view(r, 1) + logp).view(b, nb * v)  # (B, nb*V)
        top_scores, top_ids = cand.topk(min(2 * nb, nb * v), dim=1)  # (B, 2nb)
        top_scores_l, top_ids_l = top_scores.tolist(), top_ids.tolist()
        new_scores = [[float("-inf")] * nb for _ in range(b)]
        new_parent = [list(range(nb)) for _ in range(b)]  # done samples keep their rows
        new_tok = [[cfg.pad_id] * nb for _ in range(b)]
        cur_len = step + 1
        for i in range(b):
            if done[i]:
                continue
            j = 0
            for rank, (s, cid) in enumerate(zip(top_scores_l[i], top_ids_l[i])):
                if s == float("-inf"):
                    break
                parent, tok = divmod(cid, v)
                if tok == eos_id:
                    if rank < nb:
                        row = i * nb + parent
                        seq = torch.cat((gen[row], gen.new_tensor([eos_id])))
                        _add_hyp(hyps[i], nb, s / cur_len**length_penalty, seq, step_counts[row], step_routes[row])
                    continue
                new_scores[i][j], new_parent[i][j], new_tok[i][j] = s, parent, tok
                j += 1
                if j == nb:
                    break
            exhausted = j == 0  # no finite continuation left
            settled = len(hyps[i]) >= nb and hyps[i][-1][0] >= new_scores[i][0] / cur_len**length_penalty
            done[i] = exhausted or settled
        new_scores = torch.tensor(new_scores, device=dev)  # (B, nb)
        new_parent = torch.tensor(new_parent, device=dev)
        new_tok = torch.tensor(new_tok, device=dev)
        rows = (torch.arange(b, device=dev).unsqueeze(1) * nb + new_parent).view(r)  # (R,) parent row of each beam
        gen = torch.cat((gen[rows], new_tok.view(r, 1)), dim=1)
        counts = step_counts[rows]
        gen_routes = step_routes[rows]
        beam_scores = new_scores
        if all(done) or step == max_new_tokens - 1:
            break
        dec.reorder(rows)
        live = torch.isfinite(new_scores).view(r) & ~torch.tensor(done, device=dev).repeat_interleave(nb)
        logits, routes = dec.next(new_tok.view(r), live)
    # samples still open: their live beams become hypotheses too
    scores_l = beam_scores.tolist()
    for i in range(b):
        if done[i] and hyps[i]:
            continue
        for j in range(nb):
            if scores_l[i][j] != float("-inf"):
                row = i * nb + j
                _add_hyp(
                    hyps[i], nb, scores_l[i][j] / gen.size(1) ** length_penalty, gen[row], counts[row], gen_routes[row]
                )
    no_hyp = (float("-inf"), gen.new_tensor([eos_id]), counts[0] * 0, gen_routes.new_full((1, n_moe, cfg.top_k), -1))
    best = [h[0] if h else no_hyp for h in hyps]
    tokens = _pad_stack([t for _, t, _, _ in best], cfg.pad_id, dev)
    width = tokens.size(1)
    token_experts = gen_routes.new_full((b, width, n_moe, cfg.top_k), -1)
    for i, (_, t, _, routes_i) in enumerate(best):
        token_experts[i, : t.numel()] = routes_i[: t.numel()]
    return GenerationOutput(
        tokens=tokens,
        lengths=torch.tensor([t.numel() for _, t, _, _ in best], dtype=torch.long, device=dev),
        expert_counts=torch.stack([c for _, _, c, _ in best]),
        scores=torch.tensor([s for s, _, _, _ in best], dtype=torch.float32, device=dev),
        token_experts=token_experts,
    )


def _add_hyp(hyps: list, nb: int, score: float, tokens: Tensor, counts: Tensor, routes: Tensor) -> None:
    """Insert into the best-first list ``hyps`` and keep at most ``nb``."""
    if len(hyps) >= nb and score <= hyps[-1][0]:
        return
    hyps.append((score, tokens.clone(), counts.clone(), routes.clone()))
    hyps.sort(key=lambda h: -h[0])
    del hyps[nb:]
