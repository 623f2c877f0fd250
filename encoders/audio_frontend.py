"""Audio front end: waveform -> normalised log-mel spectrogram with a frame mask, plus the training-time
augmentations: speed perturbation (on the waveform) and SpecAugment (on the spectrogram)."""

from __future__ import annotations

import torch
import torchaudio
from torch import nn

from omnifuse.encoders.utils import zero_masked


def frames_for_samples(num_samples: torch.Tensor | int, hop_length: int) -> torch.Tensor | int:
    """Valid STFT frames (``center=True``) for ``num_samples`` valid samples: ``n // hop + 1``, and 0 for n == 0."""
    if isinstance(num_samples, int):
        return num_samples // hop_length + 1 if num_samples > 0 else 0
    return torch.where(num_samples > 0, num_samples // hop_length + 1, torch.zeros_like(num_samples))


class LogMelFrontend(nn.Module):
    """``wave`` (B, S) + ``wave_mask`` (B, S) -> log-mel (B, n_mels, T) + frame mask (B, T).

    Pipeline: zero the padding; zero-pad ``n_fft // 2`` samples on both sides (a centred STFT whose frames see
    zeros, never reflected samples, beyond the clip); ``MelSpectrogram`` (power) -> ``AmplitudeToDB``; clamp at
    ``top_db`` below the clip's loudest *valid* bin; mean/variance normalisation over the clip's valid frames; padded
    frames set to exactly 0. Waves are right-padded: sample b has ``wave_mask[b].sum()`` valid samples, and frame t
    is valid when its centre ``t * hop_length`` lies inside them. So a clip's valid frames are the same whatever
    the batch's padded width (up to float summation order in the normalisation). Runs in fp32 even under autocast.
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        n_mels: int = 64,
        hop_length: int = 160,
        win_length: int = 400,
        n_fft: int | None = None,
        f_min: float = 0.0,
        f_max: float | None = None,
        top_db: float | None = 80.0,
    ) -> None:
        super().__init__()
        self.sample_rate = sample_rate
        self.n_mels = n_mels
        self.hop_length = hop_length
        self.n_fft = n_fft or win_length
        self.top_db = top_db
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate,
            n_fft=self.n_fft,
            win_length=win_length,
            hop_length=hop_length,
            f_min=f_min,
            f_max=f_max,
            n_mels=n_mels,
            power=2.0,
            center=False,  # centring is done by the explicit zero padding in forward
        )
        self.to_db = torchaudio.transforms.AmplitudeToDB(stype="power", top_db=None)

    def num_frames(self, num_samples: int) -> int:
        """Valid spectrogram frames for a clip of ``num_samples`` samples."""
        return frames_for_samples(num_samples, self.hop_length)

    def forward(self, wave: torch.Tensor, wave_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(device_type=wave.device.type, enabled=False):
            wave = zero_masked(wave.float(), wave_mask)  # (B, S): padding can no longer influence anything
            half = self.n_fft // 2
            wave = nn.functional.pad(wave, (half, self.n_fft - half))  # (B, S + n_fft)
            spec = self.to_db(self.mel(wave))  # (B, n_mels, S // hop + 1 (+1))
            lengths = frames_for_samples(wave_mask.sum(dim=-1), self.hop_length)  # (B,)
            frame_mask = torch.arange(spec.shape[-1], device=spec.device)[None, :] < lengths[:, None]  # (B, T)
            valid = frame_mask[:, None, :]  # (B, 1, T)
            if self.top_db is not None:
                peak = torch.where(valid, spec, -torch.inf).amax(dim=(1, 2), keepdim=True)  # (B, 1, 1)
                spec = torch.maximum(spec, peak - self.top_db)  # rows without valid frames: -inf, no-op
            count = (lengths.clamp(min=1) * self.n_mels).to(spec.dtype)[:, None, None]  # (B, 1, 1)
            mean = torch.where(valid, spec, 0.0).sum(dim=(1, 2), keepdim=True) / count
            var = torch.where(valid, (spec - mean) ** 2, 0.0).sum(dim=(1, 2), keepdim=True) / count
            spec = torch.where(valid, (spec - mean) * torch.rsqrt(var + 1e-5), 0.0)  # (B, n_mels, T)
        return spec, frame_mask


class SpecAugment(nn.Module):
    """torchaudio ``FrequencyMasking`` / ``TimeMasking`` with independent masks per example; training mode only.

    Masked bins are set to 0 (the normalised spectrogram's mean). Frames beyond a clip's length stay 0.
    """

    def __init__(
        self, freq_mask_param: int = 8, time_mask_param: int = 20, n_freq_masks: int = 2, n_time_masks: int = 2
    ) -> None:
        super().__init__()
        self.freq = nn.ModuleList(
            [torchaudio.transforms.FrequencyMasking(freq_mask_param, iid_masks=True) for _ in range(n_freq_masks)]
        )
        self.time = nn.ModuleList(
            [torchaudio.transforms.TimeMasking(time_mask_param, iid_masks=True) for _ in range(n_time_masks)]
        )

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        """``spec`` (B, F, T) -> (B, F, T), unchanged in eval mode."""
        if not self.training:
            return spec
        x = spec.unsqueeze(1)  # (B, 1, F, T): iid masks need a channel dim
        for m in [*self.freq, *self.time]:
            x = m(x)
        return x.squeeze(1)


class SpeedPerturb(nn.Module):
    """Speed perturbation per clip, training mode only (Ko et al. 2015, Kaldi's 0.9 / 1.0 / 1.1): each clip plays
    ``factor`` times as fast, the factor drawn uniformly per clip from ``factors``. Tempo, pitch and formants shift
    together, as between speakers with different vocal tracts, which is what a model tested on unheard voices needs.

    Each clip's valid samples go through torchaudio's ``Speed`` (band-limited resampling); the batch is re-padded to
    its longest result and the mask follows. Factors are drawn from the global torch RNG (restored on resume).
    """

    def __init__(self, sample_rate: int = 16000, factors: tuple[float, ...] | list[float] = (0.9, 1.0, 1.1)) -> None:
        super().__init__()
        if not factors or any(f <= 0 for f in factors):
            raise ValueError(f"speed_perturb factors must be positive, got {list(factors)}")
        self.factors = tuple(float(f) for f in factors)
        # A plain list, not a ModuleList: each ``Speed`` holds its resampling kernel as a buffer, which would put
        # augmentation kernels into every state dict (checkpoints with and without the augmentation would then not
        # load into each other). Kernels are moved to the batch's device on use.
        self._speeders = [torchaudio.transforms.Speed(sample_rate, f) for f in self.factors]

    def forward(self, wave: torch.Tensor, wave_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``wave`` (B, S), ``wave_mask`` (B, S) right-padded -> float32 (B, S'), (B, S'); unchanged in eval mode."""
        if not self.training:
            return wave, wave_mask
        picks = torch.randint(len(self.factors), (wave.shape[0],)).tolist()
        clips = []
        with torch.autocast(device_type=wave.device.type, enabled=False):  # fp32, as the log-mel front end after it
            for b, n in enumerate(wave_mask.sum(dim=-1).tolist()):
                clip = wave[b, :n].float()
                if n > 0 and self.factors[picks[b]] != 1.0:
                    clip = self._speeders[picks[b]].to(clip.device)(clip[None])[0][0]
                clips.append(clip)
        lengths = torch.tensor([len(c) for c in clips], device=wave.device)
        out = nn.utils.rnn.pad_sequence(clips, batch_first=True)  # (B, max length), zeros after each clip
        mask = torch.arange(out.shape[1], device=wave.device)[None, :] < lengths[:, None]
        return out, mask
