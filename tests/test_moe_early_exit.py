"""Early exit (dynamic depth) in the MoE decoder: exit heads in training, tokens leaving mid-stack in cached decoding.

References: a decoder cut after the exit layer (when every token leaves there), the same rows decoded one at a time
(a row's exit decisions do not depend on the others), and the unchanged decoder (when no token can leave)."""

from __future__ import annotations

import pytest
import torch

from omnifuse.moe_core import MoEDecoder, MoEDecoderConfig

EOS = 3


def _cfg(**kw) -> MoEDecoderConfig:
    cfg = dict(
        vocab_size=24, d_model=32, n_layers=4, n_heads=4, d_memory=16, n_dense_layers=1, d_ff_dense=48,
        n_routed_experts=4, n_shared_experts=1, top_k=2, d_expert=16, max_seq_len=64, pad_id=23, init_std=0.4,
        exit_layers=[1, 2],
    )  # fmt: skip
    cfg.update(kw)
    return MoEDecoderConfig(**cfg)


def _decoder(**kw) -> MoEDecoder:
    torch.manual_seed(0)
    return MoEDecoder(_cfg(**kw)).double().eval()


def _inputs(b: int = 4):
    torch.manual_seed(1)
    memory = torch.randn(b, 5, 16, dtype=torch.float64)
    mask = torch.ones(b, 5, dtype=torch.bool)
    mask[1, 3:] = False
    prompt = torch.tensor([[5], [6], [7], [8]])[:b]
    return memory, mask, prompt


def test_training_exposes_one_head_per_exit_layer():
    model = _decoder()
    ids = torch.randint(0, 20, (2, 6))
    memory = torch.randn(2, 5, 16, dtype=torch.float64)
    out = model(ids, memory, torch.ones(2, 5, dtype=torch.bool))
    assert len(out.exit_logits) == 2 and out.exit_logits[0].shape == out.logits.shape
    # The exit at block 1 is the shared head on block 1's output: the same as a decoder cut there.
    cut = MoEDecoder(_cfg(n_layers=2, exit_layers=None)).double().eval()
    cut.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith(("blocks.2.", "blocks.3."))})
    torch.testing.assert_close(out.exit_logits[0], cut(ids, memory, torch.ones(2, 5, dtype=torch.bool)).logits)
    out.exit_logits[1].sum().backward()  # exits train the layers below them
    assert model.blocks[0].self_attn.qkv.weight.grad.abs().sum() > 0


def test_no_token_leaves_when_the_threshold_cannot_be_reached():
    memory, mask, prompt = _inputs()
    plain = _decoder(exit_layers=None)
    never = _decoder(exit_threshold=1.0)  # a probability of exactly 1 does not occur with these weights
    never.load_state_dict(plain.state_dict())
    kw = dict(max_new_tokens=8, eos_id=EOS)
    a, b = plain.generate(memory, mask, prompt, **kw), never.generate(memory, mask, prompt, **kw)
    assert a.tokens.tolist() == b.tokens.tolist()
    torch.testing.assert_close(a.scores, b.scores)
    assert a.token_experts.tolist() == b.token_experts.tolist()


def test_beam_search_with_unreachable_threshold_is_the_full_depth():
    """Beam search feeds dead and finished beams as invalid rows (which an exiting step does not run): the beams, their
    scores and routes are still those of the full depth."""
    memory, mask, prompt = _inputs()
    plain = _decoder(exit_layers=None)
    never = _decoder(exit_threshold=1.0)
    never.load_state_dict(plain.state_dict())
    kw = dict(max_new_tokens=8, eos_id=EOS, strategy="beam", num_beams=3)
    a, b = plain.generate(memory, mask, prompt, **kw), never.generate(memory, mask, prompt, **kw)
    assert a.tokens.tolist() == b.tokens.tolist()
    torch.testing.assert_close(a.scores, b.scores)
    assert a.token_experts.tolist() == b.token_experts.tolist()


def test_every_token_leaving_at_the_first_exit_is_the_cut_decoder():
    """Threshold tiny: every generated token leaves after block 1 (the prompt's own step runs all four blocks). The
    reference is that written out step by step: blocks 0-1 and the shared head for each new token, and the exited
    state written into blocks 2-3's caches."""
    memory, mask, prompt = _inputs()
    model = _decoder(exit_threshold=1e-9)
    out = model.generate(memory, mask, prompt, max_new_tokens=6, eos_id=EOS)
    # Reference written out: prompt through all 4 blocks; every later token through blocks 0-1 and the shared head,
    # attending to blocks 0-1's cache (filled by the same tokens); blocks 2-3 see the prompt only (never read).
    from omnifuse.moe_core.attention import KVCache

    cfg = model.config
    mem = model.prepare_memory(memory, mask)
    cache = KVCache(cfg.n_layers, 4, cfg.n_heads, cfg.head_dim, 1 + 6, memory.device)
    logits, _ = model.step(prompt, torch.ones_like(prompt, dtype=torch.bool), torch.zeros_like(prompt), mem, cache)
    tokens = [logits.argmax(-1)]
    done = tokens[0] == EOS
    for step in range(1, 6):
        tok = tokens[-1].unsqueeze(1)
        valid = ~done.unsqueeze(1)
        end = cache.length + 1
        cache.key_valid[:, cache.length : end] = valid
        from omnifuse.moe_core.attention import self_attention_mask

        smask = self_attention_mask(cache.key_valid[:, :end], 1)
        positions = torch.full_like(tok, step)
        x = model.embed(tok)
        rope = model.rope(positions)
        for i in range(2):
            x, _ = model.blocks[i](x, rope, smask, mem.kv[i], mem, valid, cache)
        for i in range(2, 4):  # what the exited tokens write into the later layers' caches
            model.blocks[i].self_attn.fill_cache(model.blocks[i].norm1(x), rope, cache, torch.arange(4))
        cache.advance(1)
        nxt = model.head(x[:, -1]).float().argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, cfg.pad_id), nxt)
        tokens.append(nxt)
        done = done | (nxt == EOS)
    got = out.tokens
    want = torch.stack(tokens, dim=1)[:, : got.size(1)]
    for r in range(4):
        n = int(out.lengths[r])
        assert got[r, :n].tolist() == want[r, :n].tolist()
    routes = out.token_experts  # (B, T, n_moe, k): the MoE layers 2-3 skipped after the first token
    assert (routes[:, 1:, 1:][routes[:, 1:, 0, 0] >= 0] == -1).all()


def test_batched_exits_equal_each_row_decoded_alone():
    """Rows leave at different depths in one batch; each row's tokens, scores and routes equal its own batch-1 run."""
    memory, mask, prompt = _inputs()
    model = _decoder(exit_threshold=0.5)  # with these weights tokens leave after block 1, block 2 or not at all
    kw = dict(max_new_tokens=8, eos_id=EOS)
    batched = model.generate(memory, mask, prompt, **kw)
    assert len(set(batched.lengths.tolist())) > 1  # rows finish at different steps: finished rows skip every block
    depths = set()
    for r in range(4):
        alone = model.generate(memory[r : r + 1], mask[r : r + 1], prompt[r : r + 1], **kw)
        n = int(alone.lengths[0])
        assert int(batched.lengths[r]) == n
        assert batched.tokens[r, :n].tolist() == alone.tokens[0, :n].tolist()
        torch.testing.assert_close(batched.scores[r], alone.scores[0])
        assert batched.token_experts[r, :n].tolist() == alone.token_experts[0, :n].tolist()
        for t in range(1, n):
            depths.add(int((alone.token_experts[0, t, :, 0] >= 0).sum()))
    assert depths == {1, 2, 3}  # MoE layers used: tokens left at every depth, so batches mixed them


def test_exit_settings_are_checked():
    with pytest.raises(ValueError, match="exit_layers"):
        _cfg(exit_layers=[3])  # the last block is no exit
    with pytest.raises(ValueError, match="exit_threshold"):
        _cfg(exit_layers=None, exit_threshold=0.9)
    with pytest.raises(ValueError, match="exit_threshold"):
        _cfg(exit_threshold=1.5)
