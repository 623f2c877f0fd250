"""INT8 inference (tasks/quantize.py, moe_core/quantized.py): each int8 piece against its fp32 original, a quantized
export's round trip through safetensors, and the two user paths (``omnifuse export --quantize int8``,
``Predictor.from_pretrained(..., quantize="int8")``)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from omnifuse.app.cli import main
from omnifuse.app.predictor import Predictor
from omnifuse.moe_core.experts import RoutedExperts
from omnifuse.moe_core.quantized import QuantizedRoutedExperts
from omnifuse.tasks.model import OmniModel
from omnifuse.tasks.quantize import MIN_TABLE, QuantizedLinear, quantize_int8

from .test_finetune_support import DECODER, FUSION, IMAGE, build_tiny_easyvqa

TEXT = {
    "class_path": "omnifuse.encoders.TextEncoder",
    "init_args": {"d_model": 32, "n_layers": 1, "n_heads": 2, "max_len": 64, "word_buckets": 64, "units": "word"},
}


def _close(got: torch.Tensor, want: torch.Tensor, rel: float) -> None:
    """int8 rounding of weights and activations: the error is a small share of the output's scale."""
    err = (got - want).abs().max().item()
    assert err <= rel * want.abs().max().item(), (err, want.abs().max().item())


def test_quantized_linear_follows_the_fp32_linear():
    torch.manual_seed(0)
    linear = nn.Linear(64, 48)
    x = torch.randn(5, 7, 64)
    q = QuantizedLinear.from_float(linear)
    assert q.weight_int8.dtype == torch.int8 and q.weight_int8.abs().max() == 127  # per row: the largest hits 127
    deq = q.weight_int8.float() * q.weight_scale[:, None]
    assert (deq - linear.weight).abs().max() <= q.weight_scale.max() / 2 + 1e-7  # rounding, half a step at most
    _close(q(x), linear(x), rel=0.03)
    assert q(x).shape == (5, 7, 48)


def test_quantized_experts_follow_the_fp32_experts():
    """gather_combine and the sorted-rows forward, with an expert that gets no token, against RoutedExperts."""
    torch.manual_seed(0)
    experts = RoutedExperts(4, 32, 16)
    for w in (experts.w_gate, experts.w_up, experts.w_down):
        nn.init.normal_(w, std=0.2)
    q = QuantizedRoutedExperts.from_float(experts)
    x = torch.randn(6, 32)
    order = torch.tensor([0, 3, 5, 1, 2, 7, 9, 11])  # slots of (6 tokens, top 2), grouped by expert
    counts = torch.tensor([3, 0, 2, 3])  # expert 1 gets nothing
    weights = torch.rand(8)
    with torch.no_grad():
        _close(q.gather_combine(x, order, 2, weights, counts), experts.gather_combine(x, order, 2, weights, counts), 0.05)
        rows = torch.randn(8, 32)
        _close(q(rows, counts, weights), experts(rows, counts, weights), 0.05)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return build_tiny_easyvqa(tmp_path_factory.mktemp("easyvqa"))


def _model() -> OmniModel:
    torch.manual_seed(0)
    decoder = {**DECODER, "n_dense_layers": 0, "init_std": 0.3}
    return OmniModel(image_encoder=IMAGE, text_encoder=TEXT, fusion=FUSION, decoder=decoder).eval()


def test_quantized_model_round_trips_through_safetensors(tmp_path, tiny_data):
    fp32 = _model()
    fp32_dir = fp32.save_pretrained(tmp_path / "fp32")
    q = quantize_int8(_model())
    kinds = {type(m).__name__ for m in q.modules()}
    assert {"QuantizedLinear", "QuantizedRoutedExperts"} <= kinds and "RoutedExperts" not in kinds
    assert not any(type(m) is nn.Linear for m in q.decoder.modules())
    for layer in q.decoder.moe_layers:  # routers stay fp32: rounding there would change which experts run
        assert layer.router.weight.dtype == torch.float32
    assert q.decoder.embed.weight.dtype == torch.float32  # the tied output head

    out = q.save_pretrained(tmp_path / "int8")
    config = json.loads((out / "config.json").read_text())
    assert config["quantization"] == "int8"
    stored = load_file(str(out / "model.safetensors"))
    assert q.int8_tables and all(stored[f"{n}.int8"].dtype == torch.int8 for n in q.int8_tables)  # lookup tables
    assert not any(n.startswith("decoder.") for n in q.int8_tables)
    # Every linear, expert and lookup-table weight is int8 on disk; what stays fp32 is the convolutions (this tiny
    # model's resnet10t dominates), routers, norms, the decoder's embedding, biases / scales and tables too small to
    # matter.
    fp32_left = {k for k, v in stored.items() if v.dtype == torch.float32 and v.ndim >= 2 and v.numel() >= MIN_TABLE}
    fp32_ok = ("encoders.image.", "decoder.embed.weight")
    offenders = [k for k in fp32_left if not (k.startswith(fp32_ok) or ".router." in k or k.endswith("_scale"))]
    assert not offenders, offenders
    assert (out / "model.safetensors").stat().st_size < (fp32_dir / "model.safetensors").stat().st_size

    loaded = OmniModel.from_pretrained(out)
    assert loaded.quantization == "int8"
    records = [
        {"id": f"q{i}", "task": "vqa", "image": f"images/test/{i}.png", "text": "what shape is in the image?"}
        for i in range(4)
    ]  # fmt: skip
    a = Predictor(q).predict(records, root=tiny_data)["predictions"]
    b = Predictor(loaded).predict(records, root=tiny_data)["predictions"]
    assert [r["prediction"] for r in a] == [r["prediction"] for r in b]  # the same int8 weights, the same answers
    assert [r["experts"] for r in a] == [r["experts"] for r in b]


def test_export_and_predictor_quantize(tmp_path, tiny_data, capsys):
    """A Lightning checkpoint -> ``omnifuse export --quantize int8``; ``Predictor.from_pretrained(ckpt,
    quantize="int8")`` gives the same predictions as the exported folder."""
    from .test_finetune_support import DECODER as D
    from .test_finetune_support import write_config

    config = write_config(
        tmp_path / "vqa.yaml",
        {
            "trainer": {"max_steps": 2, "limit_val_batches": 0, "default_root_dir": str(tmp_path / "run")},
            "model": {"init_args": {"decoder": D}},
            "data": {"train_manifest": str(tiny_data / "vqa_train.jsonl")},
        },
    )
    from omnifuse.app.cli import cli_main

    cli_main(["fit", "--config", str(config), "--data.test_manifest", "null"])
    ckpt = next((tmp_path / "run").rglob("*.ckpt"))
    assert main(["export", str(ckpt), "--out", str(tmp_path / "int8"), "--quantize", "int8"]) == 0
    assert json.loads((tmp_path / "int8" / "config.json").read_text())["quantization"] == "int8"
    records = [{"id": "a", "task": "vqa", "image": "images/test/0.png", "text": "is there a circle?"}]
    from omnifuse.tasks.config import GenerationConfig

    same = {"generation": GenerationConfig(max_new_tokens=8)}  # an export folder carries no decoding settings
    on_load = Predictor.from_pretrained(ckpt, quantize="int8", **same)
    exported = Predictor.from_pretrained(tmp_path / "int8", **same, **on_load.dataset_kwargs)  # the run's inputs
    assert on_load.model.quantization == exported.model.quantization == "int8"
    assert on_load.predict(records, root=tiny_data)["predictions"][0]["prediction"] == (
        exported.predict(records, root=tiny_data)["predictions"][0]["prediction"]
    )
    with pytest.raises(ValueError, match="quantize"):
        Predictor.from_pretrained(ckpt, quantize="int4")
    with pytest.raises(ValueError, match="CPU"):
        Predictor(exported.model, device="meta")
    with pytest.raises(ValueError, match="CPU"):  # refused before anything is loaded or quantized
        Predictor.from_pretrained(ckpt, quantize="int8", device="cuda")
    from omnifuse.finetune.lora import LoRAConfig, apply_lora

    with_adapters = OmniModel.from_pretrained(ckpt)
    apply_lora(with_adapters, LoRAConfig(targets=["decoder_attention"]))
    with pytest.raises(ValueError, match="LoRA"):
        quantize_int8(with_adapters)  # unmerged adapters would be dropped
    assert main(["prune", str(tmp_path / "int8"), "--expert-channels", "0.5", "--out", str(tmp_path / "p")]) == 2
    with pytest.raises(SystemExit):
        main(["export", str(ckpt), "--out", str(tmp_path / "x"), "--adapters-only", "--quantize", "int8"])
