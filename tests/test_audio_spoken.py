"""Spoken questions end to end: clip length cap / padding / masks, sample-rate and channel invariance of the log-mel
front end, and a tiny audio-only model that learns a handful of spoken records."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from torch import nn

from omnifuse.data.batch import MODALITIES
from omnifuse.data.collate import Collator
from omnifuse.data.dataset import ManifestDataset
from omnifuse.data.loaders import load_audio
from omnifuse.data.speech import Voice, espeak_available, synthesize_to_file
from omnifuse.encoders import AudioEncoder
from omnifuse.moe_core import MoEDecoderConfig
from omnifuse.tasks.model import FusionConfig
from omnifuse.tasks.vqa import VQATask

needs_espeak = pytest.mark.skipif(not espeak_available(), reason="espeak-ng is not installed")
needs_sox = pytest.mark.skipif(shutil.which("sox") is None, reason="sox is not installed")

RATE = 16000
HOP = 160
N_FFT = 400


def _tiny_audio_encoder(**overrides) -> AudioEncoder:
    kwargs = dict(n_mels=40, hop_length=HOP, win_length=N_FFT, d_model=32, n_layers=1, n_heads=2, conv_channels=8)
    kwargs.update(overrides)
    return AudioEncoder(**kwargs)


def _tone(seconds: float, rate: int, freq: float = 440.0, seed: int = 0) -> np.ndarray:
    """A tone with a little noise (so every frame has energy), float32 in [-0.5, 0.5]."""
    t = np.arange(int(round(seconds * rate))) / rate
    noise = np.random.default_rng(seed).normal(0.0, 0.02, t.shape)
    return (0.4 * np.sin(2 * np.pi * freq * t) + noise).astype(np.float32)


# ----------------------------------------------------------------------------------------------- cap, padding, masks


def test_long_clips_are_cut_short_ones_padded_and_masked(tmp_path):
    """Collated audio and its mask, then the encoder's token mask, against lengths worked out without the code under
    test: file frame counts from soundfile, the resampled length ceil(n * 16000 / rate), the cap in samples, STFT frame
    counts from torch.stft itself and token counts from two real stride-2 convs."""
    cap_seconds = 1.0
    clips = {  # id -> (seconds, file rate): shorter than the cap, resampled and shorter, longer than the cap
        "short": (0.35, RATE),
        "resampled": (0.5, 22050),
        "long": (2.5, RATE),
        "exact": (1.0, RATE),
    }
    lines = []
    for i, (rid, (seconds, rate)) in enumerate(clips.items()):
        sf.write(tmp_path / f"{rid}.wav", _tone(seconds, rate, 300.0 + 100 * i, seed=i), rate, subtype="FLOAT")
        lines.append(json.dumps({"id": rid, "task": "vqa", "audio": f"{rid}.wav", "target": "yes"}))
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")

    dataset = ManifestDataset(tmp_path / "m.jsonl", sample_rate=RATE, max_audio_seconds=cap_seconds)
    batch = Collator()([dataset[i] for i in range(len(dataset))])

    cap = int(cap_seconds * RATE)
    expected = {}
    for rid, (_, rate) in clips.items():
        frames = sf.info(str(tmp_path / f"{rid}.wav")).frames
        expected[rid] = min(math.ceil(frames * RATE / rate), cap)
    assert expected == {"short": 5600, "resampled": 8000, "long": 16000, "exact": 16000}
    lengths = dict(zip(batch.ids, batch.audio_mask.sum(dim=1).tolist()))
    assert lengths == expected
    assert batch.audio.shape == (4, cap)  # padded to the longest (capped) clip
    for row, rid in enumerate(batch.ids):
        n = expected[rid]
        assert batch.audio_mask[row, :n].all() and not batch.audio_mask[row, n:].any()  # right-padded
        assert torch.all(batch.audio[row, n:] == 0)
    # The cut clip is the file's first `cap` samples, untouched (same rate: no resampling).
    long_row = batch.ids.index("long")
    head, _ = sf.read(str(tmp_path / "long.wav"), frames=cap, dtype="float32")
    torch.testing.assert_close(batch.audio[long_row], torch.from_numpy(head), rtol=0, atol=0)
    assert batch.present[:, MODALITIES.index("audio")].all() and not batch.present[:, MODALITIES.index("text")].any()

    encoder = _tiny_audio_encoder().eval()
    conv = nn.Sequential(nn.Conv2d(1, 1, 3, stride=2), nn.Conv2d(1, 1, 3, stride=2))
    with torch.no_grad():
        out = encoder(batch.audio, batch.audio_mask)
        for row, rid in enumerate(batch.ids):
            n = expected[rid]
            stft = torch.stft(torch.zeros(n), N_FFT, HOP, window=torch.hann_window(N_FFT), return_complex=True)
            n_frames = stft.shape[-1]  # centred STFT: frames whose centre lies inside the clip
            n_tokens = conv(torch.zeros(1, 1, 40, n_frames)).shape[-1]
            assert int(out.mask[row].sum()) == n_tokens, rid
            assert out.mask[row, :n_tokens].all()
            assert torch.all(out.tokens[row, n_tokens:] == 0)
            # Masking works: the clip encoded alone, with no padding at all, gives the same tokens.
            alone = encoder(batch.audio[row : row + 1, :n], batch.audio_mask[row : row + 1, :n])
            assert alone.tokens.shape[1] == n_tokens
            torch.testing.assert_close(out.tokens[row, :n_tokens], alone.tokens[0], rtol=1e-4, atol=1e-4)


# -------------------------------------------------------------------------------------- sample rate and channel count


def _sox(src: Path, dst: Path, rate: int) -> None:
    """Resample with sox (not torchaudio, which the loader uses), to 32-bit float WAV."""
    subprocess.run(["sox", "-V1", str(src), "-r", str(rate), "-b", "32", "-e", "floating-point", str(dst)], check=True)


@needs_espeak
@needs_sox
def test_log_mel_agrees_across_sample_rates_and_channels(tmp_path):
    """One espeak-ng utterance (native 22.05 kHz) stored as mono 16 kHz and stereo 44.1 kHz (both resampled by sox),
    and mono 22.05 kHz as synthesised. Loaded at 16 kHz (torchaudio resampling, channels averaged), the AudioEncoder's
    log-mel front end gives the same features.

    Tolerance, in units of the per-clip normalised log-mel (zero mean, unit variance): mean |difference| <= 0.03,
    99th percentile <= 0.3, max <= 0.6 (measured 0.007 / 0.10 / 0.25: sox's and torchaudio's anti-alias filters differ
    near 8 kHz). A file read at the wrong rate (22.05 kHz taken as 16 kHz) is far outside it.
    """
    raw = subprocess.run(
        ["espeak-ng", "-v", "en-us", "-s", "160", "--stdout"],
        input=b"what color is the triangle?",
        capture_output=True,
        check=True,
    ).stdout
    wav = tmp_path / "espeak.wav"
    wav.write_bytes(raw)
    data, rate = sf.read(str(wav), dtype="float32", always_2d=True)
    assert rate == 22050 and data.shape[1] == 1
    mono22 = tmp_path / "mono22050.wav"
    sf.write(mono22, data[:, 0], rate, subtype="FLOAT")
    mono16 = tmp_path / "mono16000.wav"
    _sox(mono22, mono16, 16000)
    up44 = tmp_path / "up44100.wav"
    _sox(mono22, up44, 44100)
    y, rate44 = sf.read(str(up44), dtype="float32")
    stereo44 = tmp_path / "stereo44100.wav"
    sf.write(stereo44, np.stack([0.6 * y, 1.4 * y], axis=1), rate44, subtype="FLOAT")  # channel mean == y
    assert sf.info(str(stereo44)).channels == 2 and sf.info(str(stereo44)).samplerate == 44100
    assert sf.info(str(mono16)).samplerate == 16000

    frontend = _tiny_audio_encoder(n_mels=64).frontend

    def features(wave: torch.Tensor) -> torch.Tensor:
        spec, frame_mask = frontend(wave[None], torch.ones(1, wave.shape[0], dtype=torch.bool))
        assert frame_mask.all()
        return spec[0]  # (n_mels, T)

    reference = features(load_audio(mono16, RATE, max_seconds=None))
    for path in (mono22, stereo44):
        wave = load_audio(path, RATE, max_seconds=None)
        assert abs(wave.shape[0] - sf.info(str(mono16)).frames) <= 2
        other = features(wave)
        frames = min(reference.shape[1], other.shape[1])
        assert abs(reference.shape[1] - other.shape[1]) <= 1
        diff = (other[:, :frames] - reference[:, :frames]).abs()
        assert diff.mean() <= 0.03, path.name
        assert diff.quantile(0.99) <= 0.3, path.name
        assert diff.max() <= 0.6, path.name

    # Negative control: the 22.05 kHz samples taken as if they were 16 kHz (no resampling) do not agree.
    wrong = features(torch.from_numpy(data[:, 0].copy()))
    frames = min(reference.shape[1], wrong.shape[1])
    assert (wrong[:, :frames] - reference[:, :frames]).abs().mean() > 0.2


# ---------------------------------------------------------------------------------------------- overfit a handful


SPOKEN = [  # (question, voice, answer): distinct clips, so an audio-only model can memorise them
    ("what color is the circle?", Voice("en-us", 160, 50), "red"),
    ("is there a triangle?", Voice("en-gb", 150, 40), "yes"),
    ("what shape is in the image?", Voice("en-us+f2", 170, 60), "circle"),
    ("is there not a blue shape?", Voice("en-gb-x-rp+m3", 160, 50), "no"),
    ("what is the green shape?", Voice("en-029+f1", 180, 50), "rectangle"),
]


@needs_espeak
def test_tiny_audio_only_model_learns_a_handful_of_spoken_records(tmp_path):
    """Teacher forcing on five spoken records (audio only: no image, no text), then greedy generation gives back exactly
    the five answers."""
    lines = []
    for i, (question, voice, answer) in enumerate(SPOKEN):
        synthesize_to_file(question, voice, tmp_path / f"q{i}.wav", RATE)
        record = {"id": f"s{i}", "task": "vqa", "audio": f"q{i}.wav", "target": answer, "meta": {"answers": [answer]}}
        lines.append(json.dumps(record))
    (tmp_path / "spoken.jsonl").write_text("\n".join(lines) + "\n")
    dataset = ManifestDataset(tmp_path / "spoken.jsonl", sample_rate=RATE, max_audio_seconds=3.0)
    batch = Collator()([dataset[i] for i in range(len(dataset))])
    assert batch.image is None and batch.text is None and batch.audio is not None

    task = VQATask(
        audio_encoder=_tiny_audio_encoder(spec_augment=False),
        fusion=FusionConfig(n_layers=1, n_heads=2),
        decoder=MoEDecoderConfig(
            d_model=32,
            n_layers=2,
            n_heads=2,
            n_dense_layers=1,
            d_ff_dense=64,
            n_routed_experts=4,
            n_shared_experts=1,
            top_k=2,
            d_expert=16,
        ),
    )
    optimizer = torch.optim.AdamW(task.parameters(), lr=3e-3, weight_decay=0.0)
    task.train()
    for _ in range(300):  # converges in ~170 steps (measured with seeds 0, 1, 2)
        losses, _, memory = task._losses(batch)
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
        if losses["ce"].item() < 0.02:
            break
    assert losses["ce"].item() < 0.02
    # Only audio is present, so the gate gives it all the weight.
    assert torch.all(memory.modality_weights[:, MODALITIES.index("audio")] == 1)

    task.eval()
    generation = task.model.generate(batch, max_new_tokens=12, strategy="greedy")
    assert generation.texts == [answer for _, _, answer in SPOKEN]
    task.reset_metrics()
    task.update_metrics(generation.texts, batch)
    assert task.compute_metrics()["vqa_accuracy"] == pytest.approx(1.0)
