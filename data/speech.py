"""Text-to-speech with the ``espeak-ng`` command, for building spoken-question datasets.

Clips are cached on disk under a hash of everything that changes the sound (text, voice, speed, pitch, sample rate),
so a question string spoken in one style is synthesised once however many records use it.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

ESPEAK = "espeak-ng"
# Bump when the synthesis pipeline changes in a way that changes the audio, so old cached clips are not reused.
_PIPELINE_VERSION = "1"


class SpeechError(RuntimeError):
    """espeak-ng is missing or failed on an input."""


@dataclass(frozen=True)
class Voice:
    """One speaking style: an espeak-ng voice name (``en-us``, ``en-gb-x-rp+f2`` ...), speed (words per minute) and
    pitch (0-99)."""

    name: str
    speed: int = 160
    pitch: int = 50


def espeak_available() -> bool:
    return shutil.which(ESPEAK) is not None


def clip_key(text: str, voice: Voice, sample_rate: int) -> str:
    """Stable content hash naming the cached clip of ``text`` spoken by ``voice`` at ``sample_rate``."""
    spec = "\x1f".join([_PIPELINE_VERSION, text, voice.name, str(voice.speed), str(voice.pitch), str(sample_rate)])
    return hashlib.sha1(spec.encode("utf-8")).hexdigest()[:20]


def synthesize(text: str, voice: Voice, sample_rate: int = 16000) -> np.ndarray:
    """Speak ``text``; returns a mono float32 waveform at ``sample_rate`` (espeak-ng's own rate is 22050 Hz)."""
    if not espeak_available():
        raise SpeechError(f"{ESPEAK} not found on PATH (Debian/Ubuntu: apt-get install espeak-ng)")
    # The text goes through stdin, never argv: a question starting with '-' must not be read as an option.
    cmd = [ESPEAK, "-v", voice.name, "-s", str(voice.speed), "-p", str(voice.pitch), "--stdout"]
    proc = subprocess.run(cmd, input=text.encode("utf-8"), capture_output=True, timeout=60, check=False)
    if proc.returncode != 0 or not proc.stdout:
        raise SpeechError(f"{ESPEAK} failed for voice {voice.name!r}: {proc.stderr.decode(errors='replace').strip()}")
    data, rate = sf.read(io.BytesIO(proc.stdout), dtype="float32", always_2d=True)  # (N, C)
    wave = torch.from_numpy(data.mean(axis=1, dtype=np.float32))  # (N,)
    if rate != sample_rate:
        wave = AF.resample(wave, orig_freq=rate, new_freq=sample_rate)
    if wave.numel() == 0:
        raise SpeechError(f"{ESPEAK} produced no audio for {text!r}")
    return wave.clamp_(-1.0, 1.0).numpy()


def synthesize_to_file(text: str, voice: Voice, path: str | Path, sample_rate: int = 16000) -> Path:
    """Write ``text`` spoken by ``voice`` to a 16-bit PCM WAV at ``path`` (atomically: a temp file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wave = synthesize(text, voice, sample_rate)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    sf.write(str(tmp), wave, sample_rate, subtype="PCM_16", format="WAV")
    os.replace(tmp, path)
    return path


def clip_path(cache_dir: str | Path, text: str, voice: Voice, sample_rate: int) -> Path:
    """Where the cached clip lives: ``cache_dir/ab/abcdef....wav`` (two-level to keep folders small)."""
    key = clip_key(text, voice, sample_rate)
    return Path(cache_dir) / key[:2] / f"{key}.wav"


def synthesize_many(
    jobs: Iterable[tuple[str, Voice]], cache_dir: str | Path, sample_rate: int = 16000, workers: int = 2
) -> dict[tuple[str, Voice], Path]:
    """Make sure every ``(text, voice)`` clip exists in ``cache_dir``; returns the path of each.

    Existing clips are kept (so an interrupted build resumes). Synthesis runs ``workers`` espeak-ng processes at once;
    threads suffice because the work happens in the subprocess and in torch, both outside the GIL.
    """
    paths = {job: clip_path(cache_dir, job[0], job[1], sample_rate) for job in dict.fromkeys(jobs)}
    todo = [(job, p) for job, p in paths.items() if not p.is_file()]
    if todo:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            futures = [pool.submit(synthesize_to_file, text, voice, p, sample_rate) for (text, voice), p in todo]
            for f in futures:
                f.result()  # re-raise the first failure
    return paths
