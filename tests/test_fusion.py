"""Fusion: attention masks, gate, modality dropout, bit-exact masking, and per-sample batch independence."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from omnifuse.encoders import TokenSequence
from omnifuse.fusion import FusedMemory, ModalityFusion, ModalityGate, build_attention_masks, modality_dropout

MODALITIES = ("image", "audio", "text")
IN_DIMS = dict(image=16, audio=8, text=12)
WIDTHS = dict(image=5, audio=7, text=6)
# Per sample: valid tokens of each modality (0 = none) and which modalities the batch flags as present.
LENGTHS = dict(image=[5, 5, 5, 5, 5], audio=[7, 3, 0, 2, 4], text=[6, 6, 2, 0, 1])
PRESENT = torch.tensor([[1, 1, 1], [0, 1, 1], [1, 0, 1], [0, 0, 0], [1, 1, 0]], dtype=torch.bool)
B = PRESENT.shape[0]


def make_fusion(**kwargs) -> ModalityFusion:
    torch.manual_seed(0)
    fusion = ModalityFusion(32, IN_DIMS, MODALITIES, n_layers=2, n_heads=2, **kwargs).eval()
    if fusion.film is not None:  # FiLM starts as the identity; give it weights so that it acts
        with torch.no_grad():
            for layer in fusion.film.values():
                layer.weight.normal_(0, 0.2)
                layer.bias.normal_(0, 0.2)
    return fusion


def make_sequences(junk: bool = False) -> dict[str, TokenSequence]:
    """Encoder outputs; ``junk=True`` changes every value that is padding or belongs to an absent modality."""
    g = torch.Generator().manual_seed(0)
    junk_g = torch.Generator().manual_seed(123)
    seqs = {}
    for col, name in enumerate(MODALITIES):
        mask = torch.arange(WIDTHS[name])[None, :] < torch.tensor(LENGTHS[name])[:, None]  # (B, N)
        tokens = torch.randn(B, WIDTHS[name], IN_DIMS[name], generator=g)
        if junk:
            used = mask & PRESENT[:, col, None]
            tokens = torch.where(used[..., None], tokens, 100 * torch.randn(tokens.shape, generator=junk_g))
        seqs[name] = TokenSequence(tokens, mask)
    return seqs


def test_attention_masks_match_loop_reference():
    segment = torch.tensor([-1, 0, 0, 1, 2, 2])
    valid = torch.tensor([[1, 1, 0, 1, 1, 0], [1, 0, 0, 0, 1, 1]], dtype=torch.bool)
    cross, self_ = build_attention_masks(segment, valid)
    for b in range(2):
        for q in range(6):
            for k in range(6):
                null = segment[k] < 0
                assert cross[b, 0, q, k] == (null or (valid[b, k] and segment[q] != segment[k]))
                assert self_[b, 0, q, k] == (null or (valid[b, k] and segment[q] == segment[k]))


@pytest.mark.parametrize("floor", [0.0, 0.5])
def test_gate_matches_masked_softmax_reference(floor):
    torch.manual_seed(0)
    gate = ModalityGate(8, 3, floor=floor)
    summaries = torch.randn(B, 3, 8)
    with torch.no_grad():
        gate.bias.copy_(torch.tensor([-8.0, 0.0, 8.0]))  # a strongly skewed gate, where the floor matters
    weights = gate(summaries, PRESENT)
    logits = gate.score(summaries).squeeze(-1) + gate.bias
    for b in range(B):
        idx = PRESENT[b].nonzero().flatten()
        ref = torch.zeros(3)
        if len(idx):
            ref[idx] = floor / len(idx) + (1 - floor) * torch.softmax(logits[b, idx], dim=0)
            assert float(weights[b, idx].min()) >= floor / len(idx) - 1e-7
            assert_close(weights[b].sum(), torch.tensor(1.0))
        assert_close(weights[b], ref)


@pytest.mark.parametrize("film", [False, True])
def test_fusion_output_shapes_and_gate_weights(film):
    fusion = make_fusion(film=film)
    out = fusion(make_sequences(), PRESENT)
    assert isinstance(out, FusedMemory)
    n = 1 + sum(WIDTHS.values())
    assert out.tokens.shape == (B, n, 32) and out.mask.shape == (B, n) and out.modality_weights.shape == (B, 3)
    assert torch.isfinite(out.tokens).all()
    assert (out.tokens[~out.mask] == 0).all()
    # Present = flagged and at least one valid token.
    effective = PRESENT & torch.stack([torch.tensor(LENGTHS[m]) > 0 for m in MODALITIES], dim=1)
    w = out.modality_weights
    assert (w[~effective] == 0).all()  # exactly 0
    assert (w[effective] > 0).all()
    has_any = effective.any(-1)
    assert_close(w[has_any].sum(-1), torch.ones(int(has_any.sum())))
    assert (w[~has_any] == 0).all()
    # The null token is always attendable: a sample with no modality still has one valid memory slot.
    assert out.mask[:, 0].all() and out.mask[3].sum() == 1
    # Valid memory slots: exactly the valid tokens of effectively present modalities, plus the null token.
    expected = 1 + sum(torch.tensor(LENGTHS[m]) * effective[:, c] for c, m in enumerate(MODALITIES))
    assert out.mask.sum(-1).tolist() == expected.tolist()


@pytest.mark.parametrize("film", [False, True])
def test_padding_and_absent_modalities_do_not_change_any_output_bit(film):
    fusion = make_fusion(film=film)
    with torch.no_grad():
        a = fusion(make_sequences(), PRESENT)
        b = fusion(make_sequences(junk=True), PRESENT)
    for x, y in zip(a, b):
        assert_close(x, y, rtol=0, atol=0)


@pytest.mark.parametrize("film", [False, True])
def test_mixed_batch_equals_each_sample_alone(film):
    fusion = make_fusion(film=film)
    seqs = make_sequences()
    with torch.no_grad():
        batch = fusion(seqs, PRESENT)
        for b in range(B):
            alone_seqs = {
                m: TokenSequence(s.tokens[b : b + 1], s.mask[b : b + 1])
                for c, (m, s) in enumerate(seqs.items())
                if PRESENT[b, c]  # a modality this sample lacks is simply not passed
            }
            alone = fusion(alone_seqs, PRESENT[b : b + 1])
            assert_close(alone.modality_weights[0], batch.modality_weights[b])
            assert_close(alone.tokens[0][alone.mask[0]], batch.tokens[b][batch.mask[b]], rtol=1e-5, atol=1e-5)


def test_film_matches_a_per_sample_loop():
    fusion = make_fusion(film=True)
    seqs = make_sequences()
    with torch.no_grad():
        names = list(MODALITIES)
        parts = [fusion.embed[m](s.tokens) for m, s in seqs.items()]
        valids = [s.mask & PRESENT[:, c, None] for c, s in enumerate(seqs.values())]
        got = fusion._film(names, parts, valids)
        for b in range(B):
            for i, m in enumerate(names):
                others = [parts[j][b][valids[j][b]] for j in range(3) if j != i]
                others = torch.cat(others) if others else torch.zeros(0, 32)
                context = others.mean(0) if len(others) else torch.zeros(32)
                gamma, beta = fusion.film[m](context).chunk(2)
                want = parts[i][b] * (1 + gamma) + beta
                want[~valids[i][b]] = 0
                assert_close(got[i][b], want, rtol=1e-5, atol=1e-6)
    # Zero-initialised FiLM is the identity: the same memory as without it.
    torch.manual_seed(0)
    plain = ModalityFusion(32, IN_DIMS, MODALITIES, n_layers=2, n_heads=2).eval()
    torch.manual_seed(0)
    fresh = ModalityFusion(32, IN_DIMS, MODALITIES, n_layers=2, n_heads=2, film=True).eval()
    fresh.load_state_dict({**plain.state_dict(), **{k: v for k, v in fresh.state_dict().items() if "film" in k}})
    with torch.no_grad():
        assert_close(fresh(seqs, PRESENT).tokens, plain(seqs, PRESENT).tokens, rtol=0, atol=0)


def test_omitted_modality_and_validation():
    fusion = make_fusion()
    seqs = make_sequences()
    present = PRESENT.clone()
    present[:, 1] = False
    out = fusion({"image": seqs["image"], "text": seqs["text"]}, present)
    assert out.tokens.shape[1] == 1 + WIDTHS["image"] + WIDTHS["text"]
    assert (out.modality_weights[:, 1] == 0).all()
    with pytest.raises(ValueError, match="no input projection"):
        fusion({"smell": seqs["image"]}, PRESENT)
    with pytest.raises(ValueError, match="columns"):
        fusion(seqs, PRESENT[:, :2])


@pytest.mark.parametrize("film", [False, True])
def test_gradients_reach_every_fusion_parameter(film):
    fusion = make_fusion(film=film).train()
    out = fusion(make_sequences(), PRESENT)
    (out.tokens.square().mean() + out.modality_weights[:, 0].sum()).backward()
    missing = [n for n, p in fusion.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing


def test_modality_dropout_never_drops_everything():
    torch.manual_seed(0)
    present = torch.ones(4000, 3, dtype=torch.bool)
    present[:1000, 2] = False
    present[1000:1500] = torch.tensor([True, False, False])
    present[1500:1600] = False
    kept = modality_dropout(present, 0.5)
    assert not (kept & ~present).any()  # only drops
    assert kept[present.any(-1)].any(-1).all()  # never all of a sample's modalities
    assert not kept[1500:1600].any()
    assert kept[1000:1500, 0].all()  # a single modality is never dropped
    # Three present modalities: P(kept) = (1 - p) + p^3 / 3 (the rescue of an all-dropped sample).
    rate = kept[1600:].float().mean().item()
    assert abs(rate - (0.5 + 0.125 / 3)) < 0.02
    assert torch.equal(modality_dropout(present, 0.0), present)


def test_modality_dropout_only_in_training():
    fusion = make_fusion(modality_dropout=0.9)
    seqs = make_sequences()
    with torch.no_grad():
        eval_w = fusion(seqs, PRESENT).modality_weights
        train_w = fusion.train()(seqs, PRESENT).modality_weights
    assert (eval_w > 0).sum() > (train_w > 0).sum()
    has_any = (eval_w > 0).any(-1)
    assert ((train_w > 0).any(-1) == has_any).all()  # dropout never empties a sample


def test_raw_modalities_skip_both_layernorms_and_keep_the_masking_invariants():
    """With ``raw_modalities=("image",)`` and no cross-modal block, an image token in memory is exactly
    ``(Linear(x) + type + pos) * gate scale`` (no LayerNorm before or after), while the other modalities keep theirs;
    a token scaled by 2 before fusion comes out scaled by 2 (up to the type and position embeddings' share)."""
    torch.manual_seed(0)
    fusion = ModalityFusion(32, IN_DIMS, MODALITIES, n_layers=0, n_heads=2, raw_modalities=("image",)).eval()
    seqs = make_sequences()
    with torch.no_grad():
        out = fusion(seqs, PRESENT)
        n_present = PRESENT.sum(-1)
        emb = fusion.embed["image"]
        assert isinstance(emb.norm, torch.nn.Identity) and isinstance(fusion.embed["text"].norm, torch.nn.LayerNorm)
        for b in range(B):
            if not PRESENT[b, 0]:
                continue
            plain = emb.proj(seqs["image"].tokens[b]) + emb.type_embedding + emb.pos_embedding[: WIDTHS["image"]]
            scale = out.modality_weights[b, 0] * n_present[b]
            assert_close(out.tokens[b, 1 : 1 + WIDTHS["image"]], plain * scale, rtol=1e-5, atol=1e-6)
            # The text block is still LayerNormed (then gated): zero mean per token before the gate's scale.
            text = out.tokens[b, 1 + WIDTHS["image"] + WIDTHS["audio"] :][seqs["text"].mask[b] & PRESENT[b, 2]]
            assert_close(text.mean(-1), torch.zeros(len(text)), rtol=0, atol=1e-5)
        junk = fusion(make_sequences(junk=True), PRESENT)
    assert torch.equal(out.tokens, junk.tokens)  # padding and absent modalities still cannot leak
    with pytest.raises(ValueError, match="raw_modalities"):
        ModalityFusion(32, IN_DIMS, MODALITIES, raw_modalities=("smell",))
    with pytest.raises(ValueError, match="question_memory=False needs vision_film"):
        ModalityFusion(32, IN_DIMS, MODALITIES, question_memory=False)


def test_a_modality_no_sample_has_is_left_out_of_the_memory():
    """Audio flagged absent for the whole batch: the memory equals the one built without audio at all (the valid
    tokens in the same order, the same weights), and the audio tokens are never embedded (any length passes)."""
    fusion = make_fusion()
    seqs = make_sequences()
    present = PRESENT.clone()
    present[:, 1] = False
    with_audio = fusion(seqs, present)
    without = fusion({k: v for k, v in seqs.items() if k != "audio"}, present)
    assert with_audio.tokens.shape == without.tokens.shape  # no audio positions in the memory
    assert_close(with_audio.tokens, without.tokens, rtol=0, atol=0)
    assert torch.equal(with_audio.mask, without.mask)
    assert_close(with_audio.modality_weights, without.modality_weights, rtol=0, atol=0)
    too_long = dict(seqs, audio=TokenSequence(torch.randn(B, 5000, IN_DIMS["audio"]), torch.ones(B, 5000, dtype=torch.bool)))
    assert_close(fusion(too_long, present).tokens, without.tokens, rtol=0, atol=0)  # beyond max_positions: not embedded
