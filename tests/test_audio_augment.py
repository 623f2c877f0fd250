"""Speed perturbation (``SpeedPerturb``, ``AudioEncoder(speed_perturb=...)``): checked against physics (a pure tone's
frequency and duration scale with the factor, measured with numpy's FFT), per-clip independence from the batch and
its padding, and eval-mode identity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from omnifuse.encoders import AudioEncoder, SpeedPerturb

RATE = 16000


def _tone(freq: float, seconds: float) -> torch.Tensor:
    t = torch.arange(int(seconds * RATE), dtype=torch.float64) / RATE
    return torch.sin(2 * torch.pi * freq * t).float()


def _peak_hz(wave: torch.Tensor) -> float:
    spectrum = np.abs(np.fft.rfft(wave.numpy() * np.hanning(len(wave))))
    return float(np.fft.rfftfreq(len(wave), 1 / RATE)[spectrum.argmax()])


@pytest.mark.parametrize("factor", [0.9, 1.1, 1.25])
def test_a_tone_plays_factor_times_faster(factor):
    tone = _tone(440.0, 1.0)
    perturb = SpeedPerturb(RATE, [factor]).train()
    out, mask = perturb(tone[None], torch.ones(1, len(tone), dtype=torch.bool))
    n = int(mask.sum())
    assert abs(n - len(tone) / factor) <= 2  # duration / factor
    assert _peak_hz(out[0, :n]) == pytest.approx(440.0 * factor, abs=2.0)  # pitch x factor (1 Hz FFT bins)


def test_each_clip_is_perturbed_alone_and_padding_cannot_leak():
    torch.manual_seed(0)
    clips = [torch.randn(n) for n in (8000, 12000, 5000)]
    width = 13000
    wave = torch.full((3, width), 1e6)  # loud padding: any leak would show
    mask = torch.zeros(3, width, dtype=torch.bool)
    for b, clip in enumerate(clips):
        wave[b, : len(clip)], mask[b, : len(clip)] = clip, True
    perturb = SpeedPerturb(RATE, [0.9, 1.1]).train()
    torch.manual_seed(1)
    out, out_mask = perturb(wave, mask)

    for b, clip in enumerate(clips):
        n = int(out_mask[b].sum())
        factor = min(perturb.factors, key=lambda f: abs(len(clip) / f - n))  # the factor this clip drew
        alone, alone_mask = SpeedPerturb(RATE, [factor]).train()(clip[None], torch.ones(1, len(clip), dtype=torch.bool))
        assert int(alone_mask.sum()) == n and bool(out_mask[b, :n].all())
        torch.testing.assert_close(out[b, :n], alone[0, :n])
        assert bool((out[b, n:] == 0).all())
        assert float(out[b, :n].abs().max()) < 100  # no trace of the 1e6 padding
    assert len({int(m.sum()) * 1.0 / len(c) for m, c in zip(out_mask, clips)}) > 1  # factors differ across clips


def test_factors_are_drawn_per_clip():
    perturb = SpeedPerturb(RATE, [0.5, 1.0, 2.0]).train()
    wave, mask = torch.randn(60, 4000), torch.ones(60, 4000, dtype=torch.bool)
    torch.manual_seed(0)
    _, out_mask = perturb(wave, mask)
    assert {round(4000 / int(n), 2) for n in out_mask.sum(dim=-1)} == {0.5, 1.0, 2.0}


def test_eval_mode_and_empty_clips_are_untouched():
    perturb = SpeedPerturb(RATE, [0.8]).eval()
    wave, mask = torch.randn(2, 3000), torch.ones(2, 3000, dtype=torch.bool)
    out, out_mask = perturb(wave, mask)
    assert out is wave and out_mask is mask
    mask[1] = False  # a clip with no samples stays empty in training
    out, out_mask = perturb.train()(wave, mask)
    assert int(out_mask[1].sum()) == 0


def test_bad_factors_are_rejected():
    for factors in ([], [0.0], [1.0, -0.9]):
        with pytest.raises(ValueError, match="speed_perturb"):
            SpeedPerturb(RATE, factors)


def test_encoder_perturbs_in_training_only():
    torch.manual_seed(0)
    plain = AudioEncoder(n_mels=16, d_model=32, n_layers=1, n_heads=2, conv_channels=8, spec_augment=False)
    perturbed = AudioEncoder(
        n_mels=16, d_model=32, n_layers=1, n_heads=2, conv_channels=8, spec_augment=False, speed_perturb=[0.8]
    )
    assert perturbed.state_dict().keys() == plain.state_dict().keys()  # checkpoints load with or without it
    perturbed.load_state_dict(plain.state_dict())
    wave, mask = torch.randn(2, 16000), torch.ones(2, 16000, dtype=torch.bool)
    torch.testing.assert_close(perturbed.eval()(wave, mask).tokens, plain.eval()(wave, mask).tokens)
    slow = perturbed.train()(wave, mask)
    assert slow.mask.sum(dim=-1).tolist() == [perturbed.num_tokens(20000)] * 2  # 0.8x speed: 1.25x the samples


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_works_in_fp32_whatever_the_input_dtype_or_autocast(dtype):
    tone = _tone(440.0, 0.5).to(dtype)
    perturb = SpeedPerturb(RATE, [1.1]).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, mask = perturb(tone[None], torch.ones(1, len(tone), dtype=torch.bool))
    assert out.dtype == torch.float32
    assert _peak_hz(out[0, : int(mask.sum())]) == pytest.approx(484.0, abs=4.0)
