"""Fine-tuning: init_from (key report, values), freezing by module groups, the staged unfreeze schedule, configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from omnifuse.app.cli import cli_main, main
from omnifuse.finetune.freezing import MODULE_GROUPS, freeze_groups, resolve_modules
from omnifuse.tasks import CaptionTask, VQATask
from omnifuse.tasks.model import OmniModel
from omnifuse.tasks.strategies import FSDPMixedPrecision, OmniFSDPStrategy, enable_ddp_unused_parameters

from .test_finetune_support import AUDIO, DECODER, FUSION, IMAGE, TEXT, build_tiny_easyvqa, write_config


@pytest.fixture(scope="module")
def tiny_easyvqa(tmp_path_factory) -> Path:
    return build_tiny_easyvqa(tmp_path_factory.mktemp("easyvqa"))


CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _fit(config: Path, *args: str) -> None:
    cli_main(["fit", "--config", str(config), *args])


@pytest.fixture(scope="module")
def vqa_ckpt(tmp_path_factory, tiny_easyvqa) -> Path:
    """A tiny image+text VQA run (3 steps): its last.ckpt is the starting point of the fine-tuning tests."""
    run = tmp_path_factory.mktemp("vqa_run")
    config = write_config(
        run / "vqa.yaml",
        {
            "trainer": {
                "max_steps": 3,
                "limit_val_batches": 0,
                "callbacks": [
                    {
                        "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                        "init_args": {"dirpath": str(run / "ckpt"), "save_last": True},
                    }
                ],
            },
            "model": {"init_args": {"decoder": DECODER}},
            "data": {"train_manifest": str(tiny_easyvqa / "vqa_train.jsonl")},
        },
    )
    _fit(config)
    return run / "ckpt" / "last.ckpt"


def _source_state(path: Path) -> dict[str, torch.Tensor]:
    """The source weights read independently of the code under test."""
    if path.is_dir():
        return load_file(str(path / "model.safetensors"))
    state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    return {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}


def _build(cls, seed: int, **kwargs):
    torch.manual_seed(seed)
    return cls(fusion=FUSION, decoder=DECODER, **kwargs)


@pytest.mark.parametrize("case", ["vqa->caption", "vqa->caption-skip", "vqa->spoken", "text->mixed"])
def test_init_from_loads_matching_tensors_and_reports_the_rest(case, vqa_ckpt, tmp_path, capsys):
    skip = {}
    if case.startswith("vqa->caption"):  # a Lightning checkpoint of another task; the target drops the text encoder
        source, cls, encoders = vqa_ckpt, CaptionTask, {"image_encoder": IMAGE}
        if case.endswith("skip"):  # ... and keeps a fresh image encoder
            skip = {"init_skip": ["image_encoder"]}
    elif case == "vqa->spoken":  # a save_pretrained folder; the target gains an audio encoder
        source = OmniModel.from_pretrained(vqa_ckpt).save_pretrained(tmp_path / "vqa_model")
        cls, encoders = VQATask, {"image_encoder": IMAGE, "audio_encoder": AUDIO}
    else:  # text-only -> image + text, with a longer text encoder (its position table changes shape)
        torch.manual_seed(1)
        OmniModel(text_encoder=TEXT, fusion=FUSION, decoder=DECODER).save_pretrained(tmp_path / "text_model")
        source = tmp_path / "text_model"
        longer = {**TEXT, "init_args": {**TEXT["init_args"], "max_len": 96}}
        cls, encoders = VQATask, {"image_encoder": IMAGE, "text_encoder": longer}

    task = _build(cls, 7, init_from=str(source), **encoders, **skip)
    fresh = _build(cls, 7, **encoders).model.state_dict()  # the same initialisation, nothing loaded
    src = _source_state(Path(source))
    got = task.model.state_dict()

    expected_skipped = {k for k in got if k in src and skip and k.startswith("encoders.image.")}
    expected_loaded = {k for k in got if k in src and src[k].shape == got[k].shape} - expected_skipped
    report = task.init_report
    assert set(report.loaded) == expected_loaded
    assert set(report.skipped) == expected_skipped
    assert set(report.new) == set(got) - expected_loaded - expected_skipped
    assert set(report.unused) == set(src) - set(got)
    assert set(report.mismatched) == {k for k in got if k in src and src[k].shape != got[k].shape}
    for k in report.loaded:
        torch.testing.assert_close(got[k], src[k], rtol=0, atol=0, msg=k)
    for k in report.new + report.skipped:
        torch.testing.assert_close(got[k], fresh[k], rtol=0, atol=0, msg=k)
    assert any(k.startswith("decoder.blocks.1.ffn.router") for k in report.loaded)  # router and its bias buffer

    if case == "vqa->caption-skip":
        assert expected_skipped and any(k.endswith("running_mean") for k in report.skipped) and not report.new
    elif case == "vqa->caption":
        assert not report.new and {k.split(".")[1] for k in report.unused if k.startswith("encoders.")} == {"text"}
    elif case == "vqa->spoken":
        assert {k for k in report.new if not k.startswith(("encoders.audio.", "fusion.embed.audio."))} == set()
        assert any(k.startswith("fusion.embed.text.") for k in report.unused)
    else:
        assert set(report.mismatched) == {"encoders.text.pos"}
        assert all(k.startswith(("encoders.image.", "fusion.embed.image.", "encoders.text.pos")) for k in report.new)
    out = capsys.readouterr().out
    assert f"init_from {source}: loaded {len(report.loaded)} tensors, {len(report.new)} new" in out
    assert "trainable parameters" in out
    assert not report.unmatched_groups() and "WARNING" not in out


def test_init_from_warns_when_a_shared_encoder_loads_nothing(vqa_ckpt, capsys):
    """A model whose image encoder is another architecture than the source's: the report names the group."""
    conv = {"class_path": "omnifuse.encoders.ConvImageEncoder", "init_args": {"channels": 8, "n_blocks": 1}}
    task = _build(VQATask, 0, image_encoder=conv, text_encoder=TEXT, init_from=str(vqa_ckpt))
    src = _source_state(vqa_ckpt)
    mine = [k for k in task.model.state_dict() if k.startswith("encoders.image.")]
    theirs = [k for k in src if k.startswith("encoders.image.")]
    assert not set(mine) & set(task.init_report.loaded)  # the premise: nothing of it loads
    assert task.init_report.unmatched_groups()["encoders.image"] == (len(mine), len(theirs))
    assert set(task.init_report.unmatched_groups()) <= {"encoders.image", "fusion.embed.image"}
    assert f"WARNING: nothing of encoders.image was loaded ({len(mine)} tensors here, {len(theirs)}" in (
        capsys.readouterr().out
    )


def test_init_from_rejects_a_missing_file_and_init_skip_alone(tmp_path):
    with pytest.raises(FileNotFoundError):
        _build(VQATask, 0, image_encoder=IMAGE, init_from=str(tmp_path / "nope.ckpt"))
    with pytest.raises(ValueError, match="init_from is not set"):
        _build(VQATask, 0, image_encoder=IMAGE, init_skip=["image_encoder"])


def test_module_groups_resolve_and_unknown_names_fail():
    model = _build(VQATask, 0, image_encoder=IMAGE, text_encoder=TEXT).model
    for name in MODULE_GROUPS:
        resolve_modules(model, [name])  # every group resolves on an image+text MoE model
    assert resolve_modules(model, ["audio_encoder"]) == []  # a group this model lacks is empty
    assert resolve_modules(model, ["fusion.embed.image"]) == [model.fusion.embed["image"]]
    assert resolve_modules(model, ["decoder.blocks.*.self_attn"]) == [b.self_attn for b in model.decoder.blocks]
    with pytest.raises(ValueError, match="known groups"):
        resolve_modules(model, ["decoder_atention"])
    with pytest.raises(ValueError, match="matches no module"):
        resolve_modules(model, ["decoder.blocks.9.*"])
    attention = resolve_modules(model, ["decoder_attention"])
    assert len(attention) == 2 * DECODER["n_layers"]


def test_freeze_from_the_cli_keeps_frozen_groups_and_router_bias(vqa_ckpt, tiny_easyvqa, tmp_path):
    run = tmp_path / "run"
    config = write_config(
        tmp_path / "ft.yaml",
        {
            "trainer": {
                "max_steps": 2,
                "limit_val_batches": 0,
                "callbacks": [
                    {
                        "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                        "init_args": {"dirpath": str(run), "save_last": True},
                    }
                ],
            },
            "model": {"init_args": {"decoder": DECODER}},
            "data": {"train_manifest": str(tiny_easyvqa / "vqa_train.jsonl")},
        },
    )
    _fit(config, "--model.init_from", str(vqa_ckpt), "--model.freeze", "[image_encoder, router]")
    before, after = _source_state(vqa_ckpt), _source_state(run / "last.ckpt")
    frozen = [k for k in after if k.startswith("encoders.image.") or ".router." in k]
    assert any(k.endswith("running_mean") for k in frozen) and any(k.endswith("expert_bias") for k in frozen)
    for k in frozen:  # weights, BatchNorm statistics and the balancing bias all unchanged
        torch.testing.assert_close(after[k], before[k], rtol=0, atol=0, msg=k)
    trained = [k for k in after if ".self_attn." in k or k.startswith("encoders.text.")]
    assert all(not torch.equal(after[k], before[k]) for k in trained)


def test_freeze_groups_unit():
    model = _build(VQATask, 0, image_encoder=IMAGE, text_encoder=TEXT).model
    freeze_groups(model, ["experts", "router"])
    for layer in model.decoder.moe_layers:
        assert not any(p.requires_grad for p in layer.experts.parameters())
        assert not any(p.requires_grad for p in layer.shared.parameters())
        assert not layer.router.weight.requires_grad and layer.router.bias_update_rate == 0.0
    assert all(p.requires_grad for p in model.fusion.parameters())


def test_staged_unfreeze_schedule_and_resume(vqa_ckpt, tiny_easyvqa, tmp_path):
    run = tmp_path / "run"

    def config(max_epochs: int) -> Path:
        return write_config(
            tmp_path / f"sched{max_epochs}.yaml",
            {
                "trainer": {
                    "max_steps": -1,
                    "max_epochs": max_epochs,
                    "limit_train_batches": 2,
                    "limit_val_batches": 0,
                    "callbacks": [
                        {
                            "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                            "init_args": {"dirpath": str(run), "filename": "{epoch}", "save_top_k": -1},
                        },
                        {
                            "class_path": "omnifuse.finetune.freezing.FinetuneSchedule",
                            "init_args": {"unfreeze": {1: ["fusion"]}, "lr_ratio": 0.5},
                        },
                    ],
                },
                "model": {"init_args": {"decoder": DECODER, "init_from": str(vqa_ckpt)}},
                "data": {"train_manifest": str(tiny_easyvqa / "vqa_train.jsonl")},
            },
        )

    _fit(config(2))
    start, e0, e1 = (_source_state(p) for p in (vqa_ckpt, run / "epoch=0.ckpt", run / "epoch=1.ckpt"))
    fusion = [k for k in e0 if k.startswith("fusion.") and not k.startswith("fusion.embed.")]
    assert all(torch.equal(e0[k], start[k]) for k in fusion)  # frozen during epoch 0
    assert all(not torch.equal(e1[k], e0[k]) for k in fusion if k.endswith("weight"))  # trained in epoch 1
    assert all(not torch.equal(e0[k], start[k]) for k in e0 if k.startswith("decoder.blocks"))  # trained from epoch 0

    ckpt = torch.load(run / "epoch=1.ckpt", map_location="cpu", weights_only=False)
    groups = ckpt["optimizer_states"][0]["param_groups"]
    assert len(groups) == 4  # decay / no-decay of the task + decay / no-decay of the unfrozen fusion
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0, 0.05, 0.0]  # tests/configs/tiny_vqa.yaml's decay
    for g in groups[2:]:  # the new groups follow the task's LR schedule at lr_ratio
        assert g["lr"] == pytest.approx(0.5 * groups[0]["lr"], rel=1e-6)
    assert len(ckpt["lr_schedulers"][0]["base_lrs"]) == 4

    # Resume for one more epoch: fusion keeps training (the schedule restores its groups and trainability).
    _fit(config(3), "--ckpt_path", str(run / "epoch=1.ckpt"))
    e2 = _source_state(run / "epoch=2.ckpt")
    assert all(not torch.equal(e2[k], e1[k]) for k in fusion if k.endswith("weight"))


def test_enable_ddp_unused_parameters_only_for_plain_ddp():
    from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy

    class _T:
        def __init__(self, strategy):
            self.strategy = strategy

    plain, explicit = DDPStrategy(), DDPStrategy(find_unused_parameters=False)
    assert enable_ddp_unused_parameters(_T(plain)) and plain._ddp_kwargs["find_unused_parameters"] is True
    assert not enable_ddp_unused_parameters(_T(explicit)) and explicit._ddp_kwargs["find_unused_parameters"] is False
    assert not enable_ddp_unused_parameters(_T(SingleDeviceStrategy("cpu")))


@pytest.mark.parametrize(
    ("base", "overlay", "expect", "absent"),
    [
        ("easyvqa.yaml", "gpu_bf16.yaml", ["precision: bf16-mixed", "accelerator: gpu"], []),
        ("easyvqa.yaml", "fsdp_bf16.yaml", ["OmniFSDPStrategy", "buffer_dtype: float32", "precision: bf16-mixed"], []),
        ("finetune_vqa_to_caption.yaml", None, ["CaptionTask", "init_from: runs/easyvqa", "init_skip: null"], []),
        ("finetune_vqa_to_spoken.yaml", None, ["AudioEncoder", "speech_ctc", "init_from: runs/easyvqa"], []),
        ("finetune_vqa_to_spoken.yaml", "finetune_lora.yaml", ["SaveLoRAAdapters", "- experts"], ["FinetuneSchedule"]),
        ("spoken_vqa.yaml", None, ["speech_ctc:\n      weight: 0.3", "modality_dropout: 0.0", "batch_size: 64"], []),
        (
            "finetune_vqa_to_mixed.yaml",
            None,
            ["TextEncoder", "AudioEncoder", "init_from: runs/easyvqa", "speech_ctc", "- datasets/easyvqa/spoken_train"],
            [],
        ),
    ],
)
def test_shipped_configs_parse(base, overlay, expect, absent, capsys):
    args = ["fit", "--config", str(CONFIGS / base)] + (["--config", str(CONFIGS / overlay)] if overlay else [])
    with pytest.raises(SystemExit):
        main([*args, "--print_config"])
    printed = capsys.readouterr().out
    for text in expect:
        assert text in printed
    for text in absent:
        assert text not in printed


def test_fsdp_strategy_keeps_buffers_fp32_and_wraps_blocks():
    from omnifuse.moe_core.decoder import DecoderBlock

    strategy = OmniFSDPStrategy()
    mp = strategy.mixed_precision_config
    assert isinstance(mp, FSDPMixedPrecision)
    assert DecoderBlock in strategy.kwargs["auto_wrap_policy"]._module_classes
    mp = FSDPMixedPrecision()
    assert (mp.param_dtype, mp.reduce_dtype, mp.buffer_dtype) == (torch.bfloat16, torch.float32, torch.float32)
    with pytest.raises(ValueError, match="param_dtype"):
        FSDPMixedPrecision(param_dtype="bf16")


def test_spoken_finetune_recipe_is_the_spoken_recipe_plus_init_from_and_a_schedule():
    """README compares the two runs step for step (benchmarks/finetune_vs_scratch.py --scratch-run), so they may differ
    only in where they start, where they write, and the fine-tune's staged unfreezing."""
    import yaml

    def settings(name: str, run: str) -> dict:
        text = (CONFIGS / name).read_text().replace(f"runs/{run}", "runs/RUN")
        return yaml.safe_load(text)

    finetune, scratch = (
        settings("finetune_vqa_to_spoken.yaml", "finetune_spoken"),
        settings("spoken_vqa.yaml", "spoken_vqa"),
    )
    assert finetune["model"]["init_args"].pop("init_from") == "runs/easyvqa/latest/checkpoints/best.ckpt"
    (schedule,) = [c for c in finetune["trainer"]["callbacks"] if c["class_path"].endswith("FinetuneSchedule")]
    finetune["trainer"]["callbacks"].remove(schedule)
    # Everything the VQA model brings is frozen for the first epoch; only the new speech path trains.
    assert set(schedule["init_args"]["unfreeze"][1]) >= {"image_encoder", "fusion.vision_film.mlp", "decoder"}
    assert finetune == scratch


def test_mixed_recipe_hears_speech_as_the_spoken_recipe_does():
    """README holds the mixed model's audio view against the spoken model: same audio encoder, speech loss, optimizer,
    decoder, batch and fusion design (the mixed fine-tune trains fewer steps: its text path is trained already)."""
    import yaml

    mixed = yaml.safe_load((CONFIGS / "finetune_vqa_to_mixed.yaml").read_text())
    spoken = yaml.safe_load((CONFIGS / "spoken_vqa.yaml").read_text())
    assert mixed["data"]["batch_size"] == spoken["data"]["batch_size"]
    for key in ("audio_encoder", "image_encoder", "speech_ctc", "optimizer", "decoder", "fusion"):
        assert mixed["model"]["init_args"][key] == spoken["model"]["init_args"][key], key


@pytest.mark.parametrize(
    "name",
    ["finetune_vqa_to_caption.yaml", "finetune_vqa_to_spoken.yaml", "finetune_vqa_to_mixed.yaml"],
)
def test_finetune_recipes_fit_the_main_recipes_checkpoint(name, tmp_path, capsys):
    """Each recipe that starts from ``runs/easyvqa`` must take every weight of the parts it shares with the main
    recipe's model (its image and text encoders, the FiLM generator, the decoder): a recipe whose architecture drifts
    from configs/easyvqa.yaml would load next to nothing and silently train from scratch. Built from the two YAML
    files alone; the expected key sets come from the two models' own state dicts."""
    import yaml

    from omnifuse.finetune.weights import load_matching_weights

    def model_of(config_name: str) -> OmniModel:
        args = yaml.safe_load((CONFIGS / config_name).read_text())["model"]["init_args"]
        torch.manual_seed(0)
        keys = ("image_encoder", "audio_encoder", "text_encoder", "fusion", "decoder")
        return OmniModel(**{k: args[k] for k in keys if k in args})

    main_args = yaml.safe_load((CONFIGS / name).read_text())["model"]["init_args"]
    assert main_args["init_from"].startswith("runs/easyvqa/")
    source = model_of("easyvqa.yaml").save_pretrained(tmp_path / "main")
    target = model_of(name)
    report = load_matching_weights(target, source, verbose=False)
    assert not report.mismatched and not report.unmatched_groups()
    src = set(model_of("easyvqa.yaml").state_dict())
    shared_modules = [p for p in ("encoders.image.", "encoders.text.", "decoder.") if any(k.startswith(p) for k in src)]
    for prefix in shared_modules:
        in_target = {k for k in target.state_dict() if k.startswith(prefix)}
        if in_target:  # the recipe keeps this part: all of it must come from the main run
            assert in_target <= set(report.loaded), (prefix, sorted(in_target - set(report.loaded))[:5])
    film = {k for k in target.state_dict() if k.startswith("fusion.vision_film.mlp.")}
    assert film <= set(report.loaded)  # the question -> FiLM map (empty when the recipe has no question)
