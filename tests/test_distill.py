"""Distillation: the loss against torch's KL divergence, and a fit of the tiny recipe with a teacher of another
shape (the teacher trains nothing, is saved nowhere, and the student's checkpoint works without it)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from omnifuse.app.cli import cli_main
from omnifuse.data.easyvqa import prepare_easyvqa
from omnifuse.finetune.safe_load import load_checkpoint
from omnifuse.tasks.distill import IGNORE_INDEX, DistillConfig, distillation_loss

TINY = str(Path(__file__).parent / "configs" / "tiny_vqa.yaml")


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_loss_is_t_squared_kl_over_the_target_tokens(temperature):
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(3, 5, 11, generator=g), torch.randn(3, 5, 11, generator=g)
    labels = torch.randint(0, 11, (3, 5), generator=g)
    labels[0, 3:] = IGNORE_INDEX
    labels[2, :] = IGNORE_INDEX
    keep = labels != IGNORE_INDEX
    reference = F.kl_div(
        F.log_softmax(student[keep] / temperature, -1),
        F.log_softmax(teacher[keep] / temperature, -1),
        log_target=True,
        reduction="batchmean",
    ) * temperature**2  # fmt: skip
    torch.testing.assert_close(distillation_loss(student, teacher, labels, temperature), reference)
    assert float(distillation_loss(student, student, labels, temperature)) == pytest.approx(0.0, abs=1e-6)
    assert float(distillation_loss(student, teacher, torch.full_like(labels, IGNORE_INDEX), temperature)) == 0.0


def test_bad_settings():
    with pytest.raises(ValueError, match="teacher"):
        DistillConfig()
    with pytest.raises(ValueError, match="temperature"):
        DistillConfig(teacher="t", temperature=0.0)


def test_fit_with_a_teacher_of_another_shape(tmp_path):
    from omnifuse.encoders import TextEncoder, TimmImageEncoder
    from omnifuse.tasks.model import OmniModel

    data = tmp_path / "data"
    prepare_easyvqa(data, parts=("vqa",), limit_images=6)
    torch.manual_seed(1)
    teacher = OmniModel(  # wider than the tiny recipe's student, other expert count
        image_encoder=TimmImageEncoder(model_name="resnet10t", feature_level=-3),
        text_encoder=TextEncoder(d_model=48, n_layers=1, n_heads=2, max_len=64),
        fusion={"n_layers": 1, "n_heads": 2},
        decoder=dict(d_model=48, n_layers=1, n_heads=2, n_dense_layers=0, n_routed_experts=6, top_k=2, d_expert=16),
    )
    folder = Path(teacher.save_pretrained(tmp_path / "teacher"))
    before = load_file(str(folder / "model.safetensors"))
    run = tmp_path / "run"
    cli = cli_main(
        [
            "fit", "--config", TINY,
            "--data.train_manifest", str(data / "vqa_train.jsonl"),
            "--trainer.max_steps=3",
            "--trainer.default_root_dir", str(run),
            "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
            f"--trainer.logger.save_dir={run}",
            "--trainer.log_every_n_steps=1",
            "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
            f"--trainer.callbacks.dirpath={run / 'ckpt'}",
            "--trainer.callbacks.save_last=true",
            "--model.init_args.distill.teacher", str(folder),
            "--model.init_args.distill.weight", "0.5",
        ]
    )  # fmt: skip
    task = cli.model
    assert task._teacher and not task._teacher[0].training
    # The teacher learned nothing and is in neither the optimizer nor the checkpoint.
    for name, value in task._teacher[0].state_dict().items():
        torch.testing.assert_close(value, before[name], rtol=0, atol=0)
    optimized = {id(p) for group in cli.trainer.optimizers[0].param_groups for p in group["params"]}
    assert not optimized & {id(p) for p in task._teacher[0].parameters()}
    checkpoint = load_checkpoint(run / "ckpt" / "last.ckpt")
    assert all(key.startswith(("model.",)) for key in checkpoint["state_dict"])
    assert len(checkpoint["state_dict"]) == len(task.model.state_dict())
    metrics = next(run.rglob("metrics.csv")).read_text()
    assert "train/distill" in metrics.splitlines()[0]
    # The student's checkpoint loads and predicts without its teacher (its hyper-parameters still name it).
    from omnifuse.app.predictor import Predictor
    from omnifuse.tasks import VQATask

    for file in folder.iterdir():
        file.unlink()
    folder.rmdir()
    assert load_checkpoint(run / "ckpt" / "last.ckpt")["hyper_parameters"]["distill"]["teacher"] == str(folder)
    restored = VQATask.load_from_checkpoint(run / "ckpt" / "last.ckpt", map_location="cpu")
    assert restored.distill_config.teacher == str(folder) and not restored._teacher
    out = Predictor.from_pretrained(run / "ckpt" / "last.ckpt").predict(data / "vqa_test.jsonl")
    assert out["predictions"] and not out["errors"]
