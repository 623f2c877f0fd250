"""Sliding-window attention with global tokens (encoders/layers.py ``local_global_attention``) against a plain
per-query loop and against full attention, and the audio encoder's ``attention_window`` / ``global_tokens``."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from omnifuse.encoders.audio import AudioEncoder
from omnifuse.encoders.layers import local_global_attention


def _loop_reference(q, k, v, key_mask, window, n_global):
    """Query by query, written out: the keys it may see, a softmax over them, the weighted sum (float64)."""
    B, h, N, hs = q.shape
    out = torch.zeros_like(q, dtype=torch.float64)
    for b in range(B):
        for i in range(N):
            if not key_mask[b, i]:
                continue  # padded query: garbage by contract, not compared
            if i < n_global:
                keys = [j for j in range(N) if key_mask[b, j]]
            else:
                keys = [j for j in range(N) if key_mask[b, j] and (j < n_global or abs(i - j) <= window)]
            for head in range(h):
                qi = q[b, head, i].double()
                scores = torch.stack([qi @ k[b, head, j].double() / math.sqrt(hs) for j in keys])
                weights = scores.softmax(0)
                out[b, head, i] = sum(w * v[b, head, j].double() for w, j in zip(weights, keys, strict=True))
    return out


@pytest.mark.parametrize(("window", "n_global"), [(1, 0), (2, 0), (3, 2), (5, 1), (4, 3)])
def test_local_global_attention_matches_a_plain_loop(window, n_global):
    torch.manual_seed(window * 10 + n_global)
    B, h, N, hs = 2, 2, 17, 8
    q, k, v = (torch.randn(B, h, N, hs) for _ in range(3))
    key_mask = torch.ones(B, N, dtype=torch.bool)
    key_mask[1, 12:] = False  # right padding
    got = local_global_attention(q, k, v, key_mask, window, n_global)
    want = _loop_reference(q, k, v, key_mask, window, n_global)
    real = key_mask[:, None, :, None].expand_as(got)
    torch.testing.assert_close(got[real].double(), want[real], rtol=1e-5, atol=1e-5)
    assert torch.isfinite(got).all()


@pytest.mark.parametrize("n_global", [0, 2])
def test_a_window_covering_the_sequence_is_full_attention(n_global):
    torch.manual_seed(0)
    B, h, N, hs = 3, 4, 23, 16
    q, k, v = (torch.randn(B, h, N, hs) for _ in range(3))
    key_mask = torch.ones(B, N, dtype=torch.bool)
    key_mask[0, 20:] = False
    key_mask[2, 5:] = False
    full = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask[:, None, None, :])
    got = local_global_attention(q, k, v, key_mask, window=N, n_global=n_global)
    real = key_mask[:, None, :, None].expand_as(got)
    torch.testing.assert_close(got[real], full[real], rtol=1e-5, atol=1e-6)


def _encoder(**kwargs) -> AudioEncoder:
    torch.manual_seed(0)
    return AudioEncoder(
        n_mels=16, d_model=32, n_layers=2, n_heads=2, conv_channels=4, spec_augment=False, **kwargs
    ).eval()


def test_audio_encoder_window_options():
    wave = torch.randn(2, 16000)
    mask = torch.ones(2, 16000, dtype=torch.bool)
    mask[1, 9000:] = False
    full = _encoder()
    wide = _encoder(attention_window=10_000)  # same weights (same seed, no extra parameters), window covers all
    with torch.no_grad():
        a, b = full(wave, mask), wide(wave, mask)
    assert torch.equal(a.mask, b.mask)
    torch.testing.assert_close(a.tokens, b.tokens, rtol=1e-5, atol=1e-5)
    narrow = _encoder(attention_window=4, global_tokens=2)
    with torch.no_grad():
        c = narrow(wave, mask)
    assert c.tokens.shape == a.tokens.shape and torch.equal(c.mask, a.mask)  # the globals are not output
    assert (c.tokens[~c.mask] == 0).all()  # padded tokens exactly 0
    absent = narrow(torch.zeros(1, 16000), torch.zeros(1, 16000, dtype=torch.bool))  # no audio: nothing out
    assert not absent.mask.any() and (absent.tokens == 0).all()
    with pytest.raises(ValueError, match="global_tokens needs attention_window"):
        _encoder(global_tokens=2)


def test_windowed_attention_never_builds_a_full_score_matrix(monkeypatch):
    """Every attention call scores at most (g + 3w) keys per local query and N keys per global one, so memory grows
    linearly with N (full attention: N keys per query, N x N in all)."""
    import omnifuse.encoders.layers as layers

    sizes = []
    real_sdpa = F.scaled_dot_product_attention

    def recording(q, k, v, attn_mask=None, dropout_p=0.0):
        sizes.append(q.shape[:-1].numel() * k.shape[-2])  # scores computed: queries x keys
        return real_sdpa(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)

    monkeypatch.setattr(layers.F, "scaled_dot_product_attention", recording)
    n, h, window, g = 4096, 2, 32, 2
    q = k = v = torch.randn(1, h, n, 8)
    local_global_attention(q, k, v, torch.ones(1, n, dtype=torch.bool), window, g)
    assert sum(sizes) <= h * (g * n + (n - g + window) * (g + 3 * window))
    assert sum(sizes) < h * n * n / 10


def test_a_clip_longer_than_the_model_takes_is_an_error_row_not_a_dead_job(tmp_path):
    """The fusion embeds at most 1,024 tokens per modality: a 45 s clip (~1,125 audio tokens) in memory is more. The
    batch job reports that record and still predicts the one beside it."""
    import json

    import soundfile as sf

    from omnifuse.app.predictor import Predictor
    from omnifuse.tasks.config import GenerationConfig
    from omnifuse.tasks.model import OmniModel

    torch.manual_seed(0)
    model = OmniModel(
        audio_encoder={
            "class_path": "omnifuse.encoders.AudioEncoder",
            "init_args": {"n_mels": 16, "d_model": 32, "n_layers": 1, "n_heads": 2, "conv_channels": 4,
                          "spec_augment": False},
        },  # fmt: skip
        fusion={"n_layers": 0, "n_heads": 2},
        decoder=dict(d_model=32, n_layers=1, n_heads=2, n_dense_layers=0, n_routed_experts=4, top_k=2, d_expert=16),
    )
    for name, seconds in (("short", 1.0), ("long", 45.0)):
        sf.write(tmp_path / f"{name}.wav", 0.1 * torch.randn(int(16000 * seconds)).numpy(), 16000)
    records = [{"id": n, "task": "vqa", "audio": f"{n}.wav"} for n in ("short", "long")]
    predictor = Predictor(model, generation=GenerationConfig(max_new_tokens=4), max_audio_seconds=60.0)
    out = predictor.predict(records, root=tmp_path)
    assert [p["id"] for p in out["predictions"]] == ["short"]
    (error,) = out["errors"]
    assert error["id"] == "long" and "max_positions" in error["error"] and "'long'" in error["error"]
    alone = predictor.predict(records[:1], root=tmp_path)["predictions"][0]
    assert json.dumps(alone, sort_keys=True) == json.dumps(out["predictions"][0], sort_keys=True)  # retried exactly


# ------------------------------------------------------------------------------------------------ fusion blocks


def _fusion_inputs(seed: int = 0):
    """Three modalities with padding, a sample without audio and one without text: (sequences, present)."""
    from omnifuse.encoders.base import TokenSequence

    g = torch.Generator().manual_seed(seed)
    lengths = {"image": 4, "audio": 23, "text": 6}
    sequences = {}
    for m, n in lengths.items():
        mask = torch.ones(3, n, dtype=torch.bool)
        mask[1, n - 2 :] = False  # padding
        sequences[m] = TokenSequence(torch.randn(3, n, 8, generator=g), mask)
    present = torch.tensor([[True, True, True], [True, False, True], [True, True, False]])
    return sequences, present


def _fusion(window):
    from omnifuse.fusion import ModalityFusion

    torch.manual_seed(0)
    return ModalityFusion(16, {"image": 8, "audio": 8, "text": 8}, n_layers=2, n_heads=2, attention_window=window).eval()


def test_windowed_fusion_with_a_window_covering_every_block_is_the_dense_fusion():
    sequences, present = _fusion_inputs()
    dense, windowed = _fusion(None)(sequences, present), _fusion(64)(sequences, present)
    torch.testing.assert_close(windowed.mask, dense.mask)
    torch.testing.assert_close(windowed.tokens, dense.tokens, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(windowed.modality_weights, dense.modality_weights, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("window", [1, 3])
def test_windowed_fusion_equals_the_dense_block_with_a_banded_self_mask(window):
    """Reference: the dense block (one SDPA over (N, N) masks) with the self mask cut to the band |i - j| <= window
    inside each modality (the null token kept), i.e. exactly the keys the windowed form promises."""
    from omnifuse.fusion.attention import build_attention_masks

    fusion = _fusion(window)
    sequences, present = _fusion_inputs(1)
    block = fusion.blocks[0]
    lengths = [sequences[m].tokens.shape[1] for m in ("image", "audio", "text")]
    segment = torch.cat([torch.tensor([-1])] + [torch.full((n,), i) for i, n in enumerate(lengths)])
    position = torch.cat([torch.tensor([0])] + [torch.arange(n) for n in lengths])  # position inside its block
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, segment.numel(), 16, generator=g)
    valid = torch.rand(3, segment.numel(), generator=g) > 0.2
    valid[:, 0] = True  # the null token
    cross, self_ = build_attention_masks(segment, valid)
    band = (position[:, None] - position[None, :]).abs() <= window
    banded = self_ & (band | (segment < 0)[None, :])[None, None]  # the null key stays visible
    with torch.no_grad():
        want = block(x, cross, banded)
        got = block(x, lengths=lengths, valid=valid, window=window)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_windowed_fusion_trains_and_builds_no_full_mask(monkeypatch):
    import omnifuse.fusion.fusion as fusion_module

    def refuse(*args, **kwargs):
        raise AssertionError("build_attention_masks called in windowed mode")

    monkeypatch.setattr(fusion_module, "build_attention_masks", refuse)
    fusion = _fusion(4).train()
    sequences, present = _fusion_inputs()
    out = fusion(sequences, present)
    out.tokens.square().sum().backward()
    assert all(p.grad is not None for p in fusion.blocks.parameters())
    with pytest.raises(ValueError, match="attention_window"):
        _fusion(0)
