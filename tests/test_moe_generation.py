"""Generation: KV cache == no cache, batched == alone, per-sequence stop, logits hook, router usage."""

from __future__ import annotations

import pytest
import torch

from omnifuse.moe_core import GenerationOutput, MoEDecoder, MoEDecoderConfig

EOS = 3


def tiny_model(**kw) -> MoEDecoder:
    base = dict(
        vocab_size=24,
        d_model=32,
        n_layers=3,
        n_heads=4,
        d_memory=16,
        n_dense_layers=1,
        d_ff_dense=48,
        n_routed_experts=6,
        n_shared_experts=1,
        top_k=2,
        d_expert=16,
        max_seq_len=64,
        pad_id=23,
        init_std=0.4,
    )  # fmt: skip  (large init: a random model whose outputs vary from step to step)
    base.update(kw)
    torch.manual_seed(0)
    return MoEDecoder(MoEDecoderConfig(**base)).double().eval()


def batch(b=4, n=5, d=16):
    memory = torch.randn(b, n, d, dtype=torch.float64)
    mmask = torch.ones(b, n, dtype=torch.bool)
    mmask[-1, 2:] = False
    return memory, mmask


def check_consistent(out: GenerationOutput, model: MoEDecoder):
    b = out.tokens.size(0)
    assert out.lengths.shape == (b,) and out.scores.shape == (b,)
    assert out.expert_counts.shape == (b, model.n_moe_layers, model.config.n_routed_experts)
    k = model.config.top_k
    torch.testing.assert_close(out.expert_counts.sum(-1), (out.lengths * k).view(b, 1).expand(b, model.n_moe_layers))
    for i in range(b):
        n = int(out.lengths[i])
        assert (out.tokens[i, n:] == model.config.pad_id).all()
        assert (out.tokens[i, : n - 1] != EOS).all()  # eos only as the last token


@pytest.mark.parametrize("strategy", ["greedy", "sample", "beam"])
def test_kv_cache_equals_no_cache(strategy):
    model = tiny_model()
    memory, mmask = batch()
    prompt = torch.tensor([[5], [6], [7], [8]])
    kw = dict(max_new_tokens=12, eos_id=EOS, strategy=strategy, num_beams=3, top_p=0.9, temperature=0.8)
    a = model.generate(memory, mmask, prompt, generator=torch.Generator().manual_seed(1), **kw)
    b = model.generate(memory, mmask, prompt, generator=torch.Generator().manual_seed(1), use_cache=False, **kw)
    assert a.tokens.tolist() == b.tokens.tolist()
    assert a.lengths.tolist() == b.lengths.tolist()
    assert a.expert_counts.tolist() == b.expert_counts.tolist()
    torch.testing.assert_close(a.scores, b.scores)
    check_consistent(a, model)


def stop_after(steps: list[int]):
    """A logits hook forcing eos once row ``i`` has generated ``steps[i]`` tokens."""

    def hook(seqs, logits):
        t = seqs.size(1) - 1  # tokens generated so far (prompt length 1)
        logits = logits.clone()
        for i, n in enumerate(steps):
            if t == n:
                logits[i] = float("-inf")
                logits[i, EOS] = 0.0
        return logits

    return hook


def test_per_sequence_stop():
    model = tiny_model()
    memory, mmask = batch()
    prompt = torch.tensor([[5], [6], [7], [8]])
    steps = [2, 9, 0, 5]
    kw = dict(max_new_tokens=30, eos_id=EOS)
    out = model.generate(memory, mmask, prompt, logits_processor=stop_after(steps), **kw)
    check_consistent(out, model)
    assert out.lengths.tolist() == [n + 1 for n in steps]
    assert out.tokens.size(1) == max(steps) + 1
    for i, n in enumerate(steps):  # finished rows do not disturb the others
        alone = model.generate(memory[i : i + 1], mmask[i : i + 1], prompt[i : i + 1],
                               logits_processor=stop_after([n]), **kw)  # fmt: skip
        assert out.tokens[i, : n + 1].tolist() == alone.tokens[0].tolist()
        assert out.expert_counts[i].tolist() == alone.expert_counts[0].tolist()


@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_batched_prompts_of_different_lengths_equal_alone(strategy):
    model = tiny_model()
    memory, mmask = batch(3)
    prompts = [[5], [6, 9, 10], [7, 11]]
    p = max(map(len, prompts))
    ids = torch.full((3, p), model.config.pad_id)
    pmask = torch.zeros(3, p, dtype=torch.bool)
    for i, pr in enumerate(prompts):  # left padding
        ids[i, p - len(pr) :] = torch.tensor(pr)
        pmask[i, p - len(pr) :] = True
    kw = dict(max_new_tokens=10, eos_id=EOS, strategy=strategy, num_beams=3)
    together = model.generate(memory, mmask, ids, prompt_mask=pmask, **kw)
    for i, pr in enumerate(prompts):
        alone = model.generate(memory[i : i + 1], mmask[i : i + 1], torch.tensor([pr]), **kw)
        n = int(alone.lengths[0])
        assert int(together.lengths[i]) == n
        assert together.tokens[i, :n].tolist() == alone.tokens[0, :n].tolist()
        assert together.expert_counts[i].tolist() == alone.expert_counts[0].tolist()
        torch.testing.assert_close(together.scores[i], alone.scores[0])


def test_logits_processor_masks_and_sees_sequences():
    model = tiny_model()
    memory, mmask = batch(2)
    seen = []

    def only_even(seqs, logits):
        seen.append(seqs.clone())
        assert logits.dtype == torch.float32 and logits.shape == (seqs.size(0), 24)
        mask = torch.full_like(logits, float("-inf"))
        mask[:, ::2] = 0.0
        mask[:, EOS] = 0.0
        return logits + mask

    for strategy, rows in (("greedy", 2), ("sample", 2), ("beam", 6)):
        seen.clear()
        out = model.generate(memory, mmask, torch.tensor([[5], [6]]), 8, EOS, strategy=strategy, num_beams=3,
                             logits_processor=only_even)  # fmt: skip
        assert all(s.size(0) == rows for s in seen)
        assert [s.size(1) for s in seen] == list(range(1, len(seen) + 1))
        for i in range(2):
            toks = out.tokens[i, : int(out.lengths[i])]
            assert all(t % 2 == 0 or t == EOS for t in toks.tolist())


def test_all_masked_row_emits_eos():
    model = tiny_model()
    memory, mmask = batch(2)

    def block_row0(seqs, logits):
        logits = logits.clone()
        logits[0] = float("-inf")
        return logits

    out = model.generate(memory, mmask, torch.tensor([[5], [6]]), 5, EOS, logits_processor=block_row0)
    assert out.tokens[0, 0] == EOS and int(out.lengths[0]) == 1


def test_greedy_beam_width_one_and_sampling_temperature_zero_agree():
    model = tiny_model()
    memory, mmask = batch(2)
    prompt = torch.tensor([[5], [6]])
    g = model.generate(memory, mmask, prompt, 8, EOS)
    s = model.generate(memory, mmask, prompt, 8, EOS, strategy="sample", temperature=0.0)
    bm = model.generate(memory, mmask, prompt, 8, EOS, strategy="beam", num_beams=1, length_penalty=0.0)
    assert g.tokens.tolist() == s.tokens.tolist() == bm.tokens.tolist()
    torch.testing.assert_close(bm.scores, g.scores.double().float())


def test_beam_search_finds_at_least_greedy_score():
    model = tiny_model()
    memory, mmask = batch(3)
    prompt = torch.tensor([[5], [6], [7]])
    g = model.generate(memory, mmask, prompt, 6, EOS)
    bm = model.generate(memory, mmask, prompt, 6, EOS, strategy="beam", num_beams=4, length_penalty=0.0)
    assert (bm.scores >= g.scores - 1e-5).all()


def test_generate_restores_training_mode_and_validates():
    model = tiny_model().train()
    memory, mmask = batch(1)
    model.generate(memory, mmask, torch.tensor([[5]]), 2, EOS)
    assert model.training
    assert float(model.moe_layers[0].router.load_counts.sum()) == 0  # no balancing counts from generation
    with pytest.raises(ValueError, match="strategy"):
        model.generate(memory, mmask, torch.tensor([[5]]), 2, EOS, strategy="nucleus")
    with pytest.raises(ValueError, match="max_seq_len"):
        model.generate(memory, mmask, torch.tensor([[5]]), 64, EOS)


def test_generate_under_bf16_autocast():
    model = tiny_model().float()
    memory, mmask = batch(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for strategy in ("greedy", "beam"):
            out = model.generate(
                memory.float(), mmask, torch.tensor([[5], [6]]), 4, EOS, strategy=strategy, num_beams=2
            )
            assert out.tokens.shape[0] == 2 and (out.lengths >= 1).all()


@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_token_experts_are_the_routing_of_a_teacher_forced_pass(strategy):
    """Each generated token's experts equal the router's top-k at the position that produced it, read from one
    full forward pass over prompt + generated tokens (no cache, no step loop)."""
    from omnifuse.moe_core.attention import self_attention_mask

    model = tiny_model()
    memory, mmask = batch()
    prompt = torch.tensor([[5, 9], [6, 10], [7, 11], [8, 12]])
    out = model.generate(memory, mmask, prompt, max_new_tokens=10, eos_id=EOS, strategy=strategy, num_beams=3)
    b, p = prompt.shape
    assert out.token_experts.shape == (b, out.tokens.size(1), model.n_moe_layers, model.config.top_k)
    for i in range(b):
        n = int(out.lengths[i])
        seq = torch.cat((prompt[i], out.tokens[i, : n - 1]))[None]  # the token at p - 1 + t produced token t
        valid = torch.ones_like(seq, dtype=torch.bool)
        positions = torch.arange(seq.size(1))[None]
        with torch.no_grad():
            mem = model.prepare_memory(memory[i : i + 1], mmask[i : i + 1])
            _, auxes, _ = model.run_blocks(seq, positions, valid, self_attention_mask(valid, seq.size(1)), mem)
        reference = torch.stack([aux.topk_idx[0, p - 1 :] for aux in auxes], dim=1)  # (n, n_moe_layers, k)
        assert out.token_experts[i, :n].tolist() == reference.tolist()
        assert (out.token_experts[i, n:] == -1).all()
        # The per-sample counts are these routes, summed.
        counts = torch.zeros(model.n_moe_layers, model.config.n_routed_experts, dtype=torch.long)
        for layer in range(model.n_moe_layers):
            counts[layer].scatter_add_(0, reference[:, layer].flatten(), torch.ones(n * model.config.top_k, dtype=torch.long))
        assert out.expert_counts[i].tolist() == counts.tolist()


@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_skipping_finished_rows_changes_nothing(strategy, monkeypatch):
    """Once rows have finished, a step runs the blocks for the other rows only; with every row running every block
    (the reference) the tokens, scores and routes are the same."""
    model = tiny_model()
    memory, mmask = batch()
    prompt = torch.tensor([[5], [6], [7], [8]])
    kw = dict(max_new_tokens=12, eos_id=EOS, strategy=strategy, num_beams=3, logits_processor=stop_after([1, 7, 3, 0]))
    skipped = model.generate(memory, mmask, prompt, **kw)
    monkeypatch.setattr(MoEDecoder, "skip_finished_rows", False)
    reference = model.generate(memory, mmask, prompt, **kw)
    assert skipped.tokens.tolist() == reference.tokens.tolist()
    assert skipped.lengths.tolist() == reference.lengths.tolist()
    assert skipped.token_experts.tolist() == reference.token_experts.tolist()
    torch.testing.assert_close(skipped.scores, reference.scores)
