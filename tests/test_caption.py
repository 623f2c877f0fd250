"""CaptionTask: CLI fit/test/predict on a few caption records, beam(1) == greedy == a plain reference decode, and a
tiny model that overfits four captions and then generates them exactly (greedy and beam search)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from omnifuse.app.cli import cli_main
from omnifuse.data.collate import Collator
from omnifuse.data.dataset import ManifestDataset
from omnifuse.data.tokenizer import ByteTokenizer
from omnifuse.encoders import TimmImageEncoder
from omnifuse.moe_core import MoEDecoderConfig
from omnifuse.tasks import CaptionTask, FusionConfig, GenerationConfig, OptimizerConfig
from omnifuse.tasks.metrics import caption_scores, tokenize_caption

# (caption, [extra references], colour, shape, corner): four visually distinct scenes.
SCENES = [
    ("a red square on the left", ["there is a red square"], (220, 30, 30), "square", (2, 8)),
    ("a blue circle on the right", ["there is a blue circle"], (30, 30, 220), "circle", (18, 8)),
    ("a green square at the top", ["there is a green square"], (30, 200, 30), "square", (10, 1)),
    ("a yellow circle at the bottom", ["there is a yellow circle"], (230, 220, 20), "circle", (10, 18)),
]
IMAGE_SIZE = 32
DECODER = dict(d_model=32, n_layers=2, n_heads=2, n_dense_layers=1, d_ff_dense=64, n_routed_experts=4,
               n_shared_experts=1, top_k=2, d_expert=32, max_seq_len=64)  # fmt: skip


def _draw(path: Path, colour, shape: str, corner) -> None:
    img = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (255, 255, 255))
    x, y = corner
    box = (x, y, x + 12, y + 12)
    draw = ImageDraw.Draw(img)
    (draw.rectangle if shape == "square" else draw.ellipse)(box, fill=colour)
    img.save(path)


def write_manifest(folder: Path, name: str = "captions.jsonl", repeat: int = 1) -> Path:
    """Caption records (easy-VQA shape: target = first reference, meta.references = all) over drawn images."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (caption, extra, colour, shape, corner) in enumerate(SCENES):
        _draw(folder / "images" / f"{i}.png", colour, shape, corner)
        for k in range(repeat):
            rows.append({
                "id": f"cap-{i}-{k}", "task": "caption", "image": f"images/{i}.png", "target": caption,
                "meta": {"references": [caption, *extra]},
            })  # fmt: skip
    path = folder / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def tiny_task(**kwargs) -> CaptionTask:
    return CaptionTask(
        image_encoder=TimmImageEncoder(model_name="resnet10t", feature_level=-3),
        fusion=FusionConfig(n_layers=1, n_heads=2),
        decoder=MoEDecoderConfig(**DECODER),
        **kwargs,
    )


def load_batch(manifest: Path):
    dataset = ManifestDataset(manifest, image_size=IMAGE_SIZE)
    return Collator(ByteTokenizer())([dataset[i] for i in range(len(dataset))])


def reference_greedy(task: CaptionTask, batch, max_new_tokens: int) -> list[list[int]]:
    """Greedy decoding the plain way: re-run the whole teacher-forced decoder on the prefix at every step."""
    model, tok = task.model, task.model.tokenizer
    model.eval()
    memory = model.encode(batch)
    out = []
    for row, t in enumerate(batch.tasks):
        ids = [tok.task_id(t)]
        for _ in range(max_new_tokens):
            logits = model.decoder(
                torch.tensor([ids]), memory.tokens[row : row + 1], memory.mask[row : row + 1]
            ).logits  # (1, T, V)
            ids.append(int(logits[0, -1].argmax()))
            if ids[-1] == tok.eos_id:
                break
        out.append(ids[1:])
    return out


def _generated(generation, eos_id: int) -> list[list[int]]:
    rows = []
    for tokens in generation.tokens.tolist():
        ids = []
        for t in tokens:
            ids.append(t)
            if t == eos_id:
                break
        rows.append(ids)
    return rows


# ---------------------------------------------------------------------------------------------------- generation


def test_beam_of_one_equals_greedy_equals_reference(tmp_path: Path):
    batch = load_batch(write_manifest(tmp_path))
    task = tiny_task().eval()
    eos = task.model.tokenizer.eos_id
    task.generation_config = GenerationConfig(max_new_tokens=12, strategy="greedy")
    greedy = task.generate(batch)
    task.generation_config = GenerationConfig(max_new_tokens=12, strategy="beam", num_beams=1, length_penalty=0.7)
    beam = task.generate(batch)
    assert greedy.texts == beam.texts
    assert _generated(greedy, eos) == _generated(beam, eos) == reference_greedy(task, batch, 12)


def test_evaluation_encodes_each_batch_once_and_scores_what_generate_alone_generates(tmp_path: Path):
    """A validation / test step computes the loss and generates from one encoding of the batch: the image encoder
    runs once per step, and the texts scored are those ``OmniModel.generate`` produces when it encodes by itself."""
    torch.manual_seed(0)
    task = tiny_task().eval()
    task.generation_config = GenerationConfig(max_new_tokens=12, strategy="greedy")
    batch = load_batch(write_manifest(tmp_path))
    reference = task.model.generate(batch, max_new_tokens=12, strategy="greedy").texts
    calls = []
    task.model.encoders["image"].register_forward_hook(lambda *_: calls.append(1))
    scored = []
    task.update_metrics = lambda predictions, b: scored.extend(predictions)
    with torch.no_grad():
        task._eval_step("val", batch)
    assert len(calls) == 1
    assert scored == reference


def test_default_generation_is_beam_search():
    g = tiny_task().generation_config
    assert g.strategy == "beam" and g.num_beams > 1
    assert CaptionTask.monitor == "val/cider_d" and CaptionTask.monitor_mode == "max"


def test_overfits_four_captions_then_generates_them(tmp_path: Path):
    batch = load_batch(write_manifest(tmp_path))
    torch.manual_seed(0)
    task = tiny_task(optimizer=OptimizerConfig(lr=3e-3, weight_decay=0.0))
    opt = torch.optim.AdamW(task.parameters(), lr=3e-3, weight_decay=0.0)
    task.train()
    for _ in range(300):  # teacher forcing only
        losses, _, _ = task._losses(batch)
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
        if losses["ce"].item() < 1e-2:
            break
    task.eval()
    captions = [s[0] for s in SCENES]
    for generation in (
        GenerationConfig(max_new_tokens=40, strategy="greedy"),
        GenerationConfig(max_new_tokens=40, strategy="beam", num_beams=3, length_penalty=1.0),
        GenerationConfig(max_new_tokens=40, strategy="beam", num_beams=4, length_penalty=0.6),
    ):
        task.generation_config = generation
        assert task.generate(batch).texts == captions, generation
    # The same through the task's metric hooks: perfect captions against their references.
    task.reset_metrics()
    task.update_metrics(task.generate(batch).texts, batch)
    metrics = task.compute_metrics()
    expected = caption_scores(
        {i: s[0] for i, s in enumerate(SCENES)}, {i: [s[0], *s[1]] for i, s in enumerate(SCENES)},
        tokenizer=tokenize_caption,
    )  # fmt: skip
    assert metrics == pytest.approx(expected)
    assert metrics["bleu4"] == pytest.approx(1.0) and metrics["rouge_l"] == pytest.approx(1.0)


def test_metrics_use_every_reference(tmp_path: Path):
    batch = load_batch(write_manifest(tmp_path))
    task = tiny_task()
    # Hypotheses that equal a *non-target* reference still score BLEU 1: meta["references"] is used, not the target.
    task.update_metrics([s[1][0] for s in SCENES], batch)
    assert task.compute_metrics()["bleu4"] == pytest.approx(1.0)
    task.reset_metrics()
    assert task.compute_metrics() == {}


# ---------------------------------------------------------------------------------------------------- CLI


def _config(tmp_path: Path, manifest: Path) -> Path:
    root = tmp_path / "run"
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu", "devices": 1, "max_steps": 3, "log_every_n_steps": 1, "enable_progress_bar": False,
            "enable_model_summary": False, "default_root_dir": str(root),
            "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                       "init_args": {"save_dir": str(root), "name": "csv"}},
            "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                           "init_args": {"dirpath": str(root / "ckpt"), "monitor": "val/cider_d", "mode": "max",
                                         "save_last": True}}],
        },
        "model": {
            "class_path": "omnifuse.tasks.CaptionTask",
            "init_args": {
                "image_encoder": {"class_path": "omnifuse.encoders.TimmImageEncoder",
                                  "init_args": {"model_name": "resnet10t", "feature_level": -3}},
                "fusion": {"n_layers": 1, "n_heads": 2},
                "decoder": DECODER,
                "optimizer": {"lr": 0.003, "warmup_steps": 1},
                "generation": {"max_new_tokens": 8, "strategy": "beam", "num_beams": 2},
            },
        },
        "data": {
            "train_manifest": str(manifest), "val_manifest": str(manifest), "test_manifest": str(manifest),
            "batch_size": 4, "image_size": IMAGE_SIZE,
        },
    }  # fmt: skip
    path = tmp_path / "caption.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


def test_cli_fit_test_predict(tmp_path: Path):
    manifest = write_manifest(tmp_path / "data", repeat=2)
    config = _config(tmp_path, manifest)
    cli = cli_main(["fit", "--config", str(config)])
    assert isinstance(cli.model, CaptionTask)
    assert cli.trainer.global_step == 3

    rows = list(csv.DictReader((tmp_path / "run" / "csv" / "version_0" / "metrics.csv").open()))
    logged = {k for row in rows for k, v in row.items() if v}
    for stage in ("val", "test"):  # validation during fit, then the test the CLI runs on the best checkpoint
        assert {f"{stage}/{m}" for m in ("bleu1", "bleu2", "bleu3", "bleu4", "rouge_l", "cider_d", "loss")} <= logged
    assert "train/loss" in logged
    best = cli.trainer.checkpoint_callback.best_model_path
    assert best and Path(best).is_file()

    # omnifuse predict with the JSONL writer: one caption per record (text, not JSON), with modality weights.
    out = tmp_path / "pred"
    cli_main([
        "predict", "--config", str(config), "--ckpt_path", best, "--data.predict_manifest", str(manifest),
        "--trainer.callbacks+=omnifuse.app.writer.JsonlPredictionWriter",
        f"--trainer.callbacks.output_dir={out}",
    ])  # fmt: skip
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    ids = [json.loads(line)["id"] for line in manifest.read_text().splitlines()]
    assert sorted(p["id"] for p in predictions) == sorted(ids)
    for p in predictions:
        assert p["task"] == "caption" and isinstance(p["prediction"], str)
        assert p["modality_weights"] == {"image": pytest.approx(1.0)}
