"""Shared pieces of the fine-tuning / LoRA / DDP / resume tests (no tests here): a handful of easy-VQA records built
into a temporary folder, tiny model settings, and a way to run the CLI in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
import yaml

from omnifuse.data.easyvqa import prepare_easyvqa

TINY_VQA = Path(__file__).parent / "configs" / "tiny_vqa.yaml"

IMAGE = {
    "class_path": "omnifuse.encoders.TimmImageEncoder",
    "init_args": {"model_name": "resnet10t", "feature_level": -3},
}
TEXT = {
    "class_path": "omnifuse.encoders.TextEncoder",
    "init_args": {"d_model": 32, "n_layers": 1, "n_heads": 2, "max_len": 64},
}
AUDIO = {
    "class_path": "omnifuse.encoders.AudioEncoder",
    "init_args": {"d_model": 32, "n_layers": 1, "n_heads": 2, "n_mels": 32, "conv_channels": 8, "spec_augment": False},
}
FUSION = {"n_layers": 1, "n_heads": 2}
DECODER = {
    "d_model": 32,
    "n_layers": 2,
    "n_heads": 2,
    "n_dense_layers": 1,
    "d_ff_dense": 64,
    "n_routed_experts": 4,
    "n_shared_experts": 1,
    "top_k": 2,
    "d_expert": 16,
    "max_seq_len": 128,
}


def take(src: Path, dst: Path, n: int, transform=None) -> Path:
    """The first ``n`` records of manifest ``src`` (optionally transformed) written to ``dst``."""
    rows = [json.loads(line) for line in src.read_text().splitlines()[:n]]
    if transform is not None:
        rows = [transform(i, r) for i, r in enumerate(rows)]
    dst.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return dst


def build_tiny_easyvqa(root: Path) -> Path:
    """easy-VQA (vqa + caption parts, 8 images per split) in ``root``, plus a ``spoken`` VQA manifest whose questions
    are short synthetic waveforms (no TTS needed) and a ``mixed`` one alternating image-only and text-only records."""
    prepare_easyvqa(root, parts=("vqa", "caption"), limit_images=8)
    (root / "audio").mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(4):
        t = np.arange(8000) / 16000
        wave = 0.3 * np.sin(2 * np.pi * (200 + 100 * i) * t) + 0.01 * rng.standard_normal(t.size)
        sf.write(root / "audio" / f"q{i}.wav", wave.astype(np.float32), 16000)

    def spoken(i: int, r: dict) -> dict:
        r = dict(r, id=r["id"].replace("vqa", "spoken"), audio=f"audio/q{i % 4}.wav")
        r.pop("text")
        return r

    def mixed(i: int, r: dict) -> dict:
        r = dict(r, id=f"{r['id']}-{'img' if i % 2 == 0 else 'txt'}")
        r.pop("text" if i % 2 == 0 else "image")
        return r

    for split in ("train", "val"):
        take(root / f"vqa_{split}.jsonl", root / f"spoken_{split}.jsonl", 12, spoken)
        take(root / f"vqa_{split}.jsonl", root / f"mixed_{split}.jsonl", 12, mixed)
    return root


def write_config(path: Path, overrides: dict) -> Path:
    """``tests/configs/tiny_vqa.yaml`` with ``overrides`` merged in (nested dicts merged, other values replaced)."""
    config = yaml.safe_load(TINY_VQA.read_text())

    def merge(base: dict, extra: dict) -> None:
        for k, v in extra.items():
            if isinstance(v, dict) and isinstance(base.get(k), dict) and "class_path" not in v:
                merge(base[k], v)
            else:
                base[k] = v

    merge(config, overrides)
    # LightningCLI saves the run's config.yaml in the log folder: keep it out of the working directory.
    config["trainer"].setdefault("default_root_dir", str(path.parent))
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run_cli(
    args: list[str], cwd: Path, extra_pythonpath: Path | None = None, threads: int = 1, **popen
) -> subprocess.Popen:
    """Start ``python -m omnifuse.app.cli ARGS`` (so Lightning's DDP launcher can re-run the same command) with
    ``threads`` intra-op threads per process (the same count as another run gives bit-identical CPU results)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    if extra_pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(extra_pythonpath), *filter(None, [env.get("PYTHONPATH")])])
    return subprocess.Popen(
        [sys.executable, "-m", "omnifuse.app.cli", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **popen,
    )


def tiny_conv_model(text: bool = True, **decoder):
    """A small image (+ text) OmniModel with random weights (seed 0): a conv tower, an optional text encoder, one
    fusion block and a 2-layer MoE decoder of 8 experts (``decoder`` overrides its settings)."""
    import torch

    from omnifuse.encoders import ConvImageEncoder, TextEncoder
    from omnifuse.tasks.model import OmniModel

    torch.manual_seed(0)
    settings = dict(d_model=32, n_layers=2, n_heads=2, n_dense_layers=0, n_routed_experts=8, top_k=2, d_expert=16)
    return OmniModel(
        image_encoder=ConvImageEncoder(channels=8, n_blocks=2),
        text_encoder=TextEncoder(d_model=16, n_layers=1, n_heads=2, max_len=64) if text else None,
        fusion={"n_layers": 1, "n_heads": 2},
        decoder={**settings, **decoder},
    )
