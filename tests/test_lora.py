"""LoRA adapters: against plain reference maths, on a whole OmniModel (merged == unmerged), saved alone, exported."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from omnifuse.app.cli import cli_main, main
from omnifuse.data.collate import Collator
from omnifuse.data.dataset import ManifestDataset
from omnifuse.finetune.freezing import count_parameters
from omnifuse.finetune.lora import (
    LoRAConfig,
    LoRALinear,
    add_lora,
    apply_lora,
    load_lora_adapters,
    lora_state,
    merge_lora,
    merge_lora_state,
    save_lora_adapters,
)
from omnifuse.moe_core.experts import RoutedExperts
from omnifuse.tasks import VQATask
from omnifuse.tasks.model import OmniModel

from .test_finetune_support import DECODER, FUSION, IMAGE, TEXT, build_tiny_easyvqa, write_config


@pytest.fixture(scope="module")
def tiny_easyvqa(tmp_path_factory) -> Path:
    return build_tiny_easyvqa(tmp_path_factory.mktemp("easyvqa"))


def _randomise_adapters(module: nn.Module, std: float = 0.1) -> None:
    """Trained adapters are not zero: give every B (initialised at 0) random values."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("_lora_B"):
                p.normal_(std=std)


def test_lora_linear_matches_reference():
    lin = nn.Linear(6, 5)
    x = torch.randn(4, 3, 6)
    base = lin(x)
    assert add_lora(lin, r=3, alpha=6.0) and isinstance(lin, LoRALinear)
    torch.testing.assert_close(lin(x), base, rtol=0, atol=0)  # B = 0: the base function exactly
    _randomise_adapters(lin)
    a, b = lin.weight_lora_A, lin.weight_lora_B
    reference = x @ lin.weight.T + lin.bias + 2.0 * (x @ a.T) @ b.T  # scale = alpha / r = 2
    torch.testing.assert_close(lin(x), reference)
    unmerged = lin(x)
    merge_lora(lin)
    assert type(lin) is nn.Linear and set(dict(lin.named_parameters())) == {"weight", "bias"}
    torch.testing.assert_close(lin(x), unmerged, rtol=1e-5, atol=1e-6)


def test_lora_experts_are_per_expert_low_rank_deltas():
    torch.manual_seed(0)
    experts = RoutedExperts(n_experts=3, d_model=8, d_expert=6, impl="loop")
    add_lora(experts, r=2, alpha=4.0)
    _randomise_adapters(experts)
    rows = torch.randn(5, 8, requires_grad=True)
    counts = torch.tensor([2, 0, 3])
    weights = torch.rand(5)
    out = experts(rows, counts, weights)

    # Reference: expert e on its rows with W[e] + 2 * A[e] @ B[e], one plain SwiGLU at a time.
    def adapted(name: str, e: int) -> torch.Tensor:
        w = experts._parameters[name][e]
        return w + 2.0 * getattr(experts, f"{name}_lora_A")[e] @ getattr(experts, f"{name}_lora_B")[e]

    expert_of_row = [0, 0, 2, 2, 2]
    reference = torch.stack(
        [
            weights[i]
            * (F.silu(rows[i] @ adapted("w_gate", e)) * (rows[i] @ adapted("w_up", e)))
            @ adapted("w_down", e)
            for i, e in enumerate(expert_of_row)
        ]
    )
    torch.testing.assert_close(out, reference)

    # Gradients reach the adapters (each expert's own), not the frozen base.
    for p in (experts._parameters[n] for n in ("w_gate", "w_up", "w_down")):
        p.requires_grad_(False)
    out.square().sum().backward()
    grad_a = experts.w_gate_lora_A.grad
    assert grad_a is not None and grad_a[0].abs().sum() > 0 and grad_a[2].abs().sum() > 0
    assert grad_a[1].abs().sum() == 0  # expert 1 received no token

    merged = merge_lora(experts)
    assert type(merged) is RoutedExperts and not lora_state(merged)
    torch.testing.assert_close(merged(rows.detach(), counts, weights), out.detach(), rtol=1e-5, atol=1e-6)


def _batch(root: Path, n: int = 4):
    dataset = ManifestDataset(root / "vqa_train.jsonl", mode="fit", image_size=32)
    return Collator()([dataset[i] for i in range(n)])


def _expected_adapter_params(model: nn.Module, targets: list[nn.Module], r: int) -> int:
    """Independent count: r * (in + out) per linear layer, E * r * (in + out) per stacked expert weight."""
    total, seen = 0, set()
    for root in targets:
        for m in root.modules():
            if id(m) in seen:
                continue
            seen.add(id(m))
            if isinstance(m, nn.Linear):
                total += r * (m.in_features + m.out_features)
            elif isinstance(m, RoutedExperts):
                e, d, h = m.n_experts, m.d_model, m.d_expert
                total += 3 * e * r * (d + h)
    return total


def test_lora_on_the_whole_model_merged_equals_unmerged(tiny_easyvqa, tmp_path, capsys):
    torch.manual_seed(0)
    lora = LoRAConfig(r=4, alpha=8.0, targets=["decoder_attention", "experts", "fusion"])
    base = VQATask(image_encoder=IMAGE, text_encoder=TEXT, fusion=FUSION, decoder=DECODER).model.eval()
    base_dir = base.save_pretrained(tmp_path / "base")
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    batch = _batch(tiny_easyvqa)
    base_logits = base(batch)[0].logits

    blocks = [b for b in base.decoder.blocks]
    targets = [m for b in blocks for m in (b.self_attn, b.cross_attn)] + [base.fusion]
    targets += [x for layer in base.decoder.moe_layers for x in (layer.experts, layer.shared)]
    expected = _expected_adapter_params(base, targets, r=4)

    task = VQATask(image_encoder=IMAGE, text_encoder=TEXT, fusion=FUSION, decoder=DECODER, lora=lora)
    model = task.model.eval()
    model.load_state_dict(base_state, strict=False)  # same base weights as `base`
    trainable, total = count_parameters(model)
    assert trainable == expected and total == sum(v.numel() for v in base.parameters()) + expected
    assert f"trainable parameters: {expected:,} of {total:,}" in capsys.readouterr().out
    torch.testing.assert_close(model(batch)[0].logits, base_logits, rtol=0, atol=0)  # adapters start at zero

    # A few steps on the adapters only: the base weights do not move, the routers' biases neither.
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(3):
        logits = model(batch)[0].logits
        loss = F.cross_entropy(logits.flatten(0, 1), batch.target_ids[:, 1:].flatten(), ignore_index=256)
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.decoder.update_router_biases()
    model.eval()
    for k, v in model.state_dict().items():
        if "_lora_" not in k:
            torch.testing.assert_close(v, base_state[k], rtol=0, atol=0, msg=k)
    assert any(not torch.equal(v, torch.zeros_like(v)) for k, v in lora_state(model).items() if k.endswith("_B"))

    unmerged = model(batch)[0].logits
    assert not torch.allclose(unmerged, base_logits)
    unmerged_texts = model.generate(batch, max_new_tokens=6).texts

    # Adapters alone: a small file, loaded onto the saved base, the same function.
    adapters = save_lora_adapters(model, tmp_path / "adapters", lora)
    saved = load_file(str(adapters))
    assert set(saved) == set(lora_state(model)) and all("_lora_" in k for k in saved)
    assert adapters.stat().st_size < 0.2 * (base_dir / "model.safetensors").stat().st_size
    reloaded = load_lora_adapters(OmniModel.from_pretrained(base_dir), adapters).eval()
    torch.testing.assert_close(reloaded(batch)[0].logits, unmerged, rtol=0, atol=0)

    # Merged into the base weights (state dict, then module): a plain model computing the same.
    plain = OmniModel.from_pretrained(base_dir).eval()
    plain.load_state_dict(merge_lora_state(model.state_dict()))
    torch.testing.assert_close(plain(batch)[0].logits, unmerged, rtol=1e-4, atol=1e-5)
    merge_lora(model)
    assert not lora_state(model) and set(model.state_dict()) == set(base_state)
    torch.testing.assert_close(model(batch)[0].logits, unmerged, rtol=1e-4, atol=1e-5)
    assert model.generate(batch, max_new_tokens=6).texts == unmerged_texts


def test_lora_config_validation():
    with pytest.raises(ValueError, match="rank"):
        LoRAConfig(r=0)
    model = VQATask(image_encoder=IMAGE, fusion=FUSION, decoder=DECODER).model
    with pytest.raises(ValueError, match="no linear layer"):
        apply_lora(model, LoRAConfig(targets=["router"]))  # the router gate is a bare parameter, not nn.Linear


def test_lora_fine_tuning_from_the_cli_exports_merged(tiny_easyvqa, tmp_path):
    """fit with init_from + lora, adapters written alone by the callback, `omnifuse export` writes the merged model."""
    torch.manual_seed(0)
    start = VQATask(image_encoder=IMAGE, text_encoder=TEXT, fusion=FUSION, decoder=DECODER).model
    start.save_pretrained(tmp_path / "start")
    run = tmp_path / "run"
    config = write_config(
        tmp_path / "lora.yaml",
        {
            "trainer": {
                "max_steps": 2,
                "limit_val_batches": 0,
                "default_root_dir": str(run),  # where LightningCLI saves the run's config.yaml
                "callbacks": [
                    {
                        "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                        "init_args": {"dirpath": str(run), "save_last": True},
                    },
                    {"class_path": "omnifuse.finetune.lora.SaveLoRAAdapters", "init_args": {"dirpath": str(run)}},
                ],
            },
            "model": {
                "init_args": {
                    "text_encoder": TEXT,
                    "fusion": FUSION,
                    "decoder": DECODER,
                    "init_from": str(tmp_path / "start"),
                    "lora": {"r": 4, "alpha": 8.0, "targets": ["decoder_attention", "experts"]},
                    "optimizer": {"lr": 0.05, "warmup_steps": 1},
                }
            },
            "data": {"train_manifest": str(tiny_easyvqa / "vqa_train.jsonl")},
        },
    )
    cli_main(["fit", "--config", str(config)])
    ckpt = run / "last.ckpt"
    adapters = load_file(str(run / "adapters.safetensors"))
    assert adapters and all("_lora_" in k for k in adapters)
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    for k, v in start.state_dict().items():  # the base is frozen (router biases included)
        torch.testing.assert_close(state[f"model.{k}"], v, rtol=0, atol=0, msg=k)
    for k, v in adapters.items():
        torch.testing.assert_close(state[f"model.{k}"], v, rtol=0, atol=0, msg=k)

    # The CLI's adapters-only export holds exactly the adapters the callback wrote, and nothing of the base.
    assert main(["export", str(ckpt), "--out", str(tmp_path / "only"), "--adapters-only"]) == 0
    only = load_file(str(tmp_path / "only" / "adapters.safetensors"))
    assert only.keys() == adapters.keys()
    for k, v in adapters.items():
        torch.testing.assert_close(only[k], v, rtol=0, atol=0, msg=k)

    assert main(["export", str(ckpt), "--out", str(tmp_path / "export")]) == 0
    exported = OmniModel.from_pretrained(tmp_path / "export").eval()
    assert not lora_state(exported)
    trained = VQATask.load_from_checkpoint(ckpt, map_location="cpu").model.eval()
    batch = _batch(tiny_easyvqa)
    assert not torch.allclose(trained(batch)[0].logits, start.eval()(batch)[0].logits)
    torch.testing.assert_close(exported(batch)[0].logits, trained(batch)[0].logits, rtol=1e-4, atol=1e-5)
