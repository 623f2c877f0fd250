"""MoE decoder: config validation, forward shapes, masks, MTP, losses, bias updates, attention pieces."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from omnifuse.moe_core import DecoderOutput, MoEDecoder, MoEDecoderConfig
from omnifuse.moe_core.attention import RotaryEmbedding, apply_rope


def tiny(**kw) -> MoEDecoderConfig:
    base = dict(vocab_size=40, d_model=32, n_layers=3, n_heads=4, d_memory=24, n_dense_layers=1, d_ff_dense=48,
                n_routed_experts=8, n_shared_experts=1, top_k=2, d_expert=16, max_seq_len=64, pad_id=39)  # fmt: skip
    base.update(kw)
    return MoEDecoderConfig(**base)


def inputs(b=3, t=7, n=5, cfg=None):
    cfg = cfg or tiny()
    ids = torch.randint(0, cfg.vocab_size - 1, (b, t))
    memory = torch.randn(b, n, cfg.memory_dim)
    mmask = torch.ones(b, n, dtype=torch.bool)
    mmask[0, 3:] = False
    return ids, memory, mmask


@pytest.mark.parametrize(
    "kw, msg",
    [
        (dict(d_model=30), "divisible by n_heads"),
        (dict(top_k=9), "top_k"),
        (dict(score_func="relu"), "score_func"),
        (dict(n_groups=3), "n_groups"),
        (dict(n_groups=4, topk_groups=1, top_k=3), "exceeds"),
        (dict(n_dense_layers=4), "n_dense_layers"),
        (dict(capacity_factor=0.0), "capacity_factor"),
        (dict(mtp_depth=2), "mtp_depth"),
        (dict(pad_id=40), "pad_id"),
    ],
)
def test_config_validation(kw, msg):
    with pytest.raises(ValueError, match=msg):
        tiny(**kw)


def test_forward_shapes_stats_and_loss():
    cfg = tiny(aux_loss_coef=0.01, z_loss_coef=1e-3, mtp_depth=1)
    model = MoEDecoder(cfg)
    ids, memory, mmask = inputs(cfg=cfg)
    out = model(ids, memory, mmask)
    assert isinstance(out, DecoderOutput)
    assert out.logits.shape == (3, 7, cfg.vocab_size) and out.mtp_logits.shape == (3, 7, cfg.vocab_size)
    assert len(out.router_stats) == cfg.n_moe_layers == 2
    assert int(out.router_stats[0].tokens_per_expert.sum()) == 3 * 7 * cfg.top_k
    assert out.router_loss.ndim == 0 and float(out.router_loss.detach()) > 0
    labels = torch.cat((ids[:, 1:], torch.full((3, 1), -100)), dim=1)
    losses = model.loss(out, labels)
    losses["loss"].backward()
    assert set(losses) == {"loss", "lm_loss", "mtp_loss", "router_loss"}
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing
    # tied embeddings
    assert model.head(torch.zeros(1, cfg.d_model)).shape == (1, cfg.vocab_size)
    assert not any("lm_head" in n for n, _ in model.named_parameters())


def test_no_router_loss_when_coefs_zero_and_dense_only_model():
    model = MoEDecoder(tiny(n_dense_layers=3))
    ids, memory, mmask = inputs()
    out = model(ids, memory, mmask)
    assert out.router_stats == [] and float(out.router_loss) == 0.0
    model.update_router_biases()  # no MoE layers: no-op


def test_causality_and_memory_mask():
    model = MoEDecoder(tiny()).double().eval()
    ids, memory, mmask = inputs()
    memory = memory.double()
    base = model(ids, memory, mmask).logits
    ids2 = ids.clone()
    ids2[:, 4:] = 5  # future tokens do not change earlier logits
    torch.testing.assert_close(model(ids2, memory, mmask).logits[:, :4], base[:, :4])
    mem2 = memory.clone()
    mem2[0, 3:] = 100.0  # masked memory slots are ignored
    torch.testing.assert_close(model(ids, mem2, mmask).logits, base)
    empty = mmask.clone()
    empty[1] = False  # a sample with no memory at all stays finite
    assert torch.isfinite(model(ids, memory, empty).logits).all()


@pytest.mark.parametrize("side", ["right", "left"])
def test_padding_does_not_change_real_tokens(side):
    model = MoEDecoder(tiny(mtp_depth=1)).double().eval()
    ids, memory, mmask = inputs(b=2, t=6)
    memory = memory.double()
    alone = model(ids[:1, :4], memory[:1], mmask[:1])
    padded = torch.full((1, 6), model.config.pad_id)
    mask = torch.zeros(1, 6, dtype=torch.bool)
    if side == "right":
        padded[0, :4], mask[0, :4] = ids[0, :4], True
        sl = slice(0, 4)
    else:
        padded[0, 2:], mask[0, 2:] = ids[0, :4], True
        sl = slice(2, 6)
    out = model(padded, memory[:1], mmask[:1], attention_mask=mask)
    torch.testing.assert_close(out.logits[:, sl], alone.logits)
    torch.testing.assert_close(out.mtp_logits[:, sl][:, :-1], alone.mtp_logits[:, :-1])
    assert int(out.router_stats[0].tokens_per_expert.sum()) == 4 * model.config.top_k  # pads not routed


def test_bias_update_counts_only_real_tokens_in_training():
    cfg = tiny(bias_update_rate=0.1)
    model = MoEDecoder(cfg).train()
    ids, memory, mmask = inputs()
    amask = torch.ones_like(ids, dtype=torch.bool)
    amask[2, 5:] = False
    out = model(ids, memory, mmask, attention_mask=amask)
    layer = model.moe_layers[0]
    torch.testing.assert_close(layer.router.load_counts, out.router_stats[0].tokens_per_expert.float())
    assert float(layer.router.load_counts.sum()) == (3 * 7 - 2) * cfg.top_k
    load = layer.router.load_counts.clone()
    model.update_router_biases()
    torch.testing.assert_close(layer.router.expert_bias, 0.1 * torch.sign(load.mean() - load))
    assert float(layer.router.load_counts.abs().sum()) == 0.0
    sd = model.state_dict()
    assert any(k.endswith("router.expert_bias") for k in sd)
    assert not any(k.endswith("load_counts") for k in sd)
    assert not any("load_counts" in n for n, _ in model.named_buffers())  # DDP must not broadcast the counts


def test_rope_relative_and_matches_complex_reference():
    rope = RotaryEmbedding(8, 32)
    x = torch.randn(1, 2, 5, 8)
    pos = torch.arange(5).unsqueeze(0)
    got = apply_rope(x, *rope(pos))
    # reference: rotate pairs (i, i + hs/2) by angle pos * theta^(-2i/hs) with complex numbers
    inv = 1.0 / 10000 ** (torch.arange(0, 8, 2, dtype=torch.float64) / 8)
    ang = pos.double().view(1, 1, 5, 1) * inv
    z = torch.complex(x[..., :4].double(), x[..., 4:].double()) * torch.polar(torch.ones_like(ang), ang)
    torch.testing.assert_close(got, torch.cat((z.real, z.imag), -1).float())
    with pytest.raises(ValueError, match="max_seq_len"):
        rope(torch.tensor([[32]]))


def test_bf16_autocast_forward():
    model = MoEDecoder(tiny())
    ids, memory, mmask = inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(ids, memory, mmask)
    assert torch.isfinite(out.logits.float()).all()


def test_lm_loss_matches_cross_entropy():
    model = MoEDecoder(tiny())
    ids, memory, mmask = inputs()
    out = model(ids, memory, mmask)
    labels = ids.roll(-1, 1)
    ref = F.cross_entropy(out.logits.reshape(-1, out.logits.size(-1)), labels.reshape(-1))
    torch.testing.assert_close(model.loss(out, labels)["lm_loss"], ref)
