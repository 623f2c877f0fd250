"""Expert pruning: a pruned decoder generates what the original generates when the dropped experts can never be
routed to; ``omnifuse prune`` writes a smaller model that loads and predicts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from omnifuse.moe_core import MoEDecoder, MoEDecoderConfig
from omnifuse.moe_core.prune import experts_to_keep, prune_experts

from .test_finetune_support import tiny_conv_model

EOS = 3


def _decoder(**kw) -> MoEDecoder:
    cfg = dict(
        vocab_size=24, d_model=32, n_layers=3, n_heads=4, d_memory=16, n_dense_layers=1, d_ff_dense=48,
        n_routed_experts=6, n_shared_experts=1, top_k=2, d_expert=16, max_seq_len=64, pad_id=23, init_std=0.4,
    )  # fmt: skip
    cfg.update(kw)
    torch.manual_seed(0)
    return MoEDecoder(MoEDecoderConfig(**cfg)).double().eval()


def _generate_both(pruned: MoEDecoder, reference: MoEDecoder):
    """Greedy generation of both decoders on the same memory and prompts; tokens and scores must agree."""
    memory = torch.randn(3, 5, 16, dtype=torch.float64)
    mask = torch.ones(3, 5, dtype=torch.bool)
    prompt = torch.tensor([[5], [6], [7]])
    kw = dict(max_new_tokens=10, eos_id=EOS)
    got, want = pruned.generate(memory, mask, prompt, **kw), reference.generate(memory, mask, prompt, **kw)
    assert got.tokens.tolist() == want.tokens.tolist()
    torch.testing.assert_close(got.scores, want.scores)
    return got, want


def _unroutable(decoder: MoEDecoder, keep: list[torch.Tensor]) -> None:
    """The full model whose routers can never pick a dropped expert (a bias of -1e9 only affects selection)."""
    for layer, ids in zip(decoder.moe_layers, keep, strict=True):
        dropped = torch.ones(layer.n_experts, dtype=torch.bool)
        dropped[ids] = False
        layer.router.expert_bias[dropped] = -1e9


@pytest.mark.parametrize("score_func", ["sigmoid", "softmax"])
def test_pruned_router_selects_what_the_original_selects_among_the_kept(score_func):
    pruned, reference = _decoder(score_func=score_func), _decoder(score_func=score_func)
    keep = [torch.tensor([0, 2, 3, 5]), torch.tensor([1, 2, 4, 5])]
    _unroutable(reference, keep)
    prune_experts(pruned, keep)
    x = torch.randn(50, 32, dtype=torch.float64)
    for layer, ids in enumerate(keep):
        got = pruned.moe_layers[layer].router(x).topk_idx
        want = reference.moe_layers[layer].router(x).topk_idx
        assert ids[got].sort(-1).values.tolist() == want.sort(-1).values.tolist()


def test_pruned_sigmoid_decoder_generates_what_the_original_generates_with_the_dropped_experts_unroutable():
    # Sigmoid scores (the recipes', DeepSeek-V3's) are per expert, so dropping experts changes nothing else; softmax
    # scores are normalised over all experts, so there the kept experts' combine weights change (test above: the
    # selection does not).
    pruned = _decoder(score_func="sigmoid")
    reference = _decoder(score_func="sigmoid")  # same weights (same seed)
    keep = [torch.tensor([0, 2, 3, 5]), torch.tensor([1, 2, 4, 5])]
    _unroutable(reference, keep)
    prune_experts(pruned, keep)
    assert pruned.config.n_routed_experts == 4
    assert all(layer.experts.w_gate.shape[0] == 4 and layer.router.weight.shape[0] == 4 for layer in pruned.moe_layers)
    got, want = _generate_both(pruned, reference)
    # Routing ids are renumbered: kept expert keep[l][j] is expert j of the pruned layer.
    for layer, ids in enumerate(keep):
        mapped = want.token_experts[:, :, layer].clone()
        valid = mapped >= 0
        mapped[valid] = torch.searchsorted(ids, mapped[valid])
        assert got.token_experts[:, :, layer].tolist() == mapped.tolist()


def test_experts_to_keep_drops_the_least_used():
    usage = torch.tensor([[5, 0, 9, 1, 9, 0], [3, 3, 3, 3, 3, 3]])
    keep = experts_to_keep(usage, 2)
    assert keep[0].tolist() == [0, 2, 3, 4]  # 1 and 5 unused
    assert keep[1].tolist() == [0, 1, 2, 3]  # a tie drops the higher indices
    with pytest.raises(ValueError, match="drop"):
        experts_to_keep(usage, 6)


def test_prune_refusals():
    decoder = _decoder()
    with pytest.raises(ValueError, match="top_k"):  # one expert left under top-2 routing
        prune_experts(decoder, [torch.tensor([0]), torch.tensor([1])])
    with pytest.raises(ValueError, match="same number"):
        prune_experts(decoder, [torch.tensor([0, 1, 2]), torch.tensor([1, 2])])
    with pytest.raises(ValueError, match="distinct"):
        prune_experts(decoder, [torch.tensor([0, 0, 2]), torch.tensor([1, 2, 3])])
    with pytest.raises(ValueError, match="groups"):
        prune_experts(_decoder(n_groups=2, topk_groups=1), [torch.tensor([0, 1, 2]), torch.tensor([0, 1, 2])])


def test_prune_command_writes_a_smaller_model_that_predicts(tmp_path):
    from omnifuse.app.cli import main
    from omnifuse.app.predictor import Predictor
    from omnifuse.tasks.model import OmniModel

    source = Path(tiny_conv_model().save_pretrained(tmp_path / "model"))
    lines = []
    for i in range(6):
        Image.new("RGB", (32, 32), (40 * i, 90, 200)).save(tmp_path / f"{i}.png")
        lines.append(json.dumps({"id": f"c{i}", "task": "vqa", "image": f"{i}.png", "text": "what color?"}))
    (tmp_path / "calib.jsonl").write_text("\n".join(lines) + "\n")

    out = tmp_path / "pruned"
    assert (
        main(
            [
                "prune",
                str(source),
                "--calib",
                str(tmp_path / "calib.jsonl"),
                "--drop-experts",
                "0.25",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    report = json.loads((out / "prune.json").read_text())
    assert report["experts"] == {"before": 8, "after": 6}
    assert report["parameters"]["after"] < report["parameters"]["before"]
    assert (out / "model.safetensors").stat().st_size < (source / "model.safetensors").stat().st_size
    # The usage is the calibration predictions' own telemetry, and the kept experts are its 6 most used per layer.
    rows = Predictor.from_pretrained(source).predict(tmp_path / "calib.jsonl")["predictions"]
    usage = torch.zeros(2, 8, dtype=torch.long)
    for row in rows:
        for layer, counts in enumerate(row["experts"]):
            for e, c in counts.items():
                usage[layer, int(e)] += c
    assert report["usage"] == usage.tolist()
    for layer in range(2):
        ranked = sorted(range(8), key=lambda e: (-int(usage[layer, e]), e))[:6]
        assert report["kept"][layer] == sorted(ranked)
    # Each kept expert's weights are the original expert's.
    pruned = OmniModel.from_pretrained(out)
    original = OmniModel.from_pretrained(source)
    for layer, ids in enumerate(report["kept"]):
        a, b = pruned.decoder.moe_layers[layer], original.decoder.moe_layers[layer]
        torch.testing.assert_close(a.experts.w_down, b.experts.w_down[ids], rtol=0, atol=0)
        torch.testing.assert_close(a.router.weight, b.router.weight[ids], rtol=0, atol=0)
    again = Predictor.from_pretrained(out).predict(tmp_path / "calib.jsonl")
    assert len(again["predictions"]) == 6 and not again["errors"]
    calib = str(tmp_path / "calib.jsonl")
    assert main(["prune", str(source), "--calib", calib, "--drop-experts", "0.9", "--out", str(out)]) == 2
    # A calibration set the model cannot predict (every image missing) gives no usage: refused, not guessed.
    (tmp_path / "broken.jsonl").write_text(json.dumps({"id": "b1", "task": "vqa", "image": "gone.png"}) + "\n")
    broken = ["prune", str(source), "--calib", str(tmp_path / "broken.jsonl"), "--drop-experts", "0.25"]
    assert main([*broken, "--out", str(tmp_path / "never")]) == 2
    assert not (tmp_path / "never").exists()


def test_channel_pruned_decoder_generates_what_the_original_generates_with_those_channels_silenced():
    """Removing hidden channels equals the full model with those channels' down-projection rows set to zero (their
    contribution, exactly); the kept channels are the most important by the stated score, computed here by a loop."""
    from omnifuse.moe_core.prune import prune_expert_channels

    pruned, reference = _decoder(), _decoder()  # same weights
    kept = prune_expert_channels(pruned, 0.5)
    assert pruned.config.d_expert == 8 and pruned.config.d_shared == 16  # the shared expert keeps its width
    for layer, keep, ref in zip(pruned.moe_layers, kept, reference.moe_layers, strict=True):
        assert layer.experts.w_gate.shape == (6, 32, 8) and layer.experts.w_down.shape == (6, 8, 32)
        assert layer.shared.w1.out_features == 16
        ex = ref.experts
        for e in range(6):
            score = [
                float(ex.w_gate[e, :, c].norm() * ex.w_up[e, :, c].norm() * ex.w_down[e, c, :].norm())
                for c in range(16)
            ]
            best = sorted(sorted(range(16), key=lambda c: (-score[c], c))[:8])
            assert keep[e].tolist() == best
            dropped = [c for c in range(16) if c not in best]
            with torch.no_grad():
                ex.w_down[e, dropped, :] = 0.0  # silence the dropped channels in the reference
    got, want = _generate_both(pruned, reference)
    with pytest.raises(ValueError, match="fraction"):
        prune_expert_channels(_decoder(), 1.0)


def test_prune_command_expert_channels_without_calibration(tmp_path):
    from omnifuse.app.cli import main
    from omnifuse.tasks.model import OmniModel

    source = Path(tiny_conv_model().save_pretrained(tmp_path / "model"))
    out = tmp_path / "narrow"
    assert main(["prune", str(source), "--expert-channels", "0.25", "--out", str(out)]) == 0
    report = json.loads((out / "prune.json").read_text())
    assert report["channels"]["d_expert"] == {"before": 16, "after": 12}
    config = json.loads((out / "config.json").read_text())
    assert config["decoder"]["d_expert"] == 12 and config["decoder"]["d_shared"] == 16
    narrow = OmniModel.from_pretrained(out)  # loads as a real smaller model
    assert narrow.decoder.moe_layers[0].experts.w_up.shape == (8, 32, 12)
    assert sum(p.numel() for p in narrow.parameters()) == report["parameters"]["after"] < report["parameters"]["before"]
    assert main(["prune", str(source), "--out", str(tmp_path / "none")]) == 2  # nothing asked
    assert main(["prune", str(source), "--drop-experts", "0.25", "--out", str(tmp_path / "none")]) == 2  # no --calib


def test_prune_refuses_a_fraction_that_drops_no_expert(tmp_path):
    from omnifuse.app.cli import main

    source = tiny_conv_model(text=False).save_pretrained(tmp_path / "m")
    (tmp_path / "c.jsonl").write_text("")
    args = ["prune", str(source), "--calib", str(tmp_path / "c.jsonl"), "--drop-experts", "0.05"]
    assert main([*args, "--out", str(tmp_path / "never")]) == 2  # 5 % of 8 experts is none: refused, not copied
    assert not (tmp_path / "never").exists()
