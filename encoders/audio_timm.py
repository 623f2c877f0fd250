"""AST-style audio encoder: any timm backbone (in_chans=1) over a fixed-width log-mel spectrogram."""

from __future__ import annotations

import torch
from torch import nn

from omnifuse.encoders.audio_frontend import LogMelFrontend, SpecAugment, SpeedPerturb
from omnifuse.encoders.base import Encoder, TokenSequence
from omnifuse.encoders.registry import register_encoder
from omnifuse.encoders.timm_backbone import TimmBackbone
from omnifuse.encoders.utils import freeze_, zero_masked


@register_encoder("timm_audio")
class TimmAudioEncoder(Encoder):
    """Waveforms (B, S) + mask (B, S) -> one token per (time, frequency) cell of a timm backbone's feature map.

    The spectrogram (B, 1, n_mels, max_frames) is always padded (zeros) or cut to ``max_frames`` frames, as in AST,
    so a clip's tokens do not depend on how long the other clips of its batch are. Tokens are ordered time-major
    (all frequency cells of time step 0, then step 1, ...). A token is valid when its time column starts inside the
    clip's valid frames; ViT backbones also exclude padded patches from attention.

    Args:
        model_name: any timm model name (CNN or ViT); built with ``in_chans=1`` and, where the model takes one,
            ``img_size=(n_mels, max_frames)``.
        pretrained: False or a local weights file (3-channel stems are adapted to 1 channel by timm).
        freeze: no gradients to the backbone (kept in eval mode).
        feature_level: ``forward_intermediates`` level (-1 = last).
        n_fft: FFT size; larger than ``win_length`` (zero-padded frames) so 128 mel bands all get frequency bins.
        max_frames: spectrogram width (1024 frames = 10.24 s at hop 160); longer clips are cut.
        speed_perturb: speed factors, one drawn per clip in training mode only (``SpeedPerturb``); None: off.
    """

    modality = "audio"

    def __init__(
        self,
        model_name: str = "efficientnet_b0",
        pretrained: bool | str | None = False,
        freeze: bool = False,
        feature_level: int = -1,
        sample_rate: int = 16000,
        n_mels: int = 128,
        hop_length: int = 160,
        win_length: int = 400,
        n_fft: int = 1024,
        max_frames: int = 1024,
        spec_augment: bool = True,
        freq_mask_param: int = 24,
        time_mask_param: int = 80,
        speed_perturb: list[float] | None = None,
        **model_kwargs,
    ) -> None:
        super().__init__()
        self.speed_perturb = SpeedPerturb(sample_rate, speed_perturb) if speed_perturb else None
        self.frontend = LogMelFrontend(sample_rate, n_mels, hop_length, win_length, n_fft=n_fft)
        self.spec_augment = SpecAugment(freq_mask_param, time_mask_param) if spec_augment else nn.Identity()
        self.max_frames = max_frames
        self.backbone = TimmBackbone(
            model_name,
            pretrained=pretrained,
            feature_level=feature_level,
            img_size=(n_mels, max_frames),
            in_chans=1,
            **model_kwargs,
        )
        self.out_dim = self.backbone.out_dim
        self.grid = self.backbone.feature_shape((n_mels, max_frames))  # (f, t) cells of the feature map
        self.frozen = freeze
        if freeze:
            freeze_(self.backbone)

    def train(self, mode: bool = True) -> TimmAudioEncoder:
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
        return self

    def num_tokens(self, num_samples: int | None = None) -> int:
        """Tokens per clip: constant ``f * t`` (the spectrogram always has ``max_frames`` frames)."""
        return self.grid[0] * self.grid[1]

    def forward(self, wave: torch.Tensor, wave_mask: torch.Tensor) -> TokenSequence:
        """``wave`` (B, S) float, ``wave_mask`` (B, S) bool (right-padded) -> TokenSequence (B, f*t, out_dim)."""
        if self.speed_perturb is not None:  # training mode only
            wave, wave_mask = self.speed_perturb(wave, wave_mask)
        spec, frame_mask = self.frontend(wave, wave_mask)  # (B, F, T), (B, T)
        spec = self.spec_augment(spec)
        n_frames = spec.shape[-1]
        if n_frames >= self.max_frames:
            spec, frame_mask = spec[..., : self.max_frames], frame_mask[:, : self.max_frames]
        else:
            spec = nn.functional.pad(spec, (0, self.max_frames - n_frames))  # (B, F, max_frames), zeros
            frame_mask = nn.functional.pad(frame_mask, (0, self.max_frames - n_frames), value=False)
        f, t = self.grid
        lengths = frame_mask.sum(dim=-1)  # (B,) valid frames
        # Time column j covers frames from j * max_frames / t on: valid when that start lies before the clip's end.
        col_start = torch.arange(t, device=spec.device) * self.max_frames  # (t,), in units of 1/t frames
        col_mask = col_start[None, :] < lengths[:, None] * t  # (B, t)
        grid_mask = col_mask[:, None, :].expand(-1, f, -1).reshape(-1, f * t)  # (B, f*t), row-major (f, t)
        feats = self.backbone(spec.unsqueeze(1), token_mask=grid_mask)  # (B, D, f, t)
        tokens = feats.permute(0, 3, 2, 1).reshape(feats.shape[0], t * f, feats.shape[1])  # (B, t*f, D) time-major
        mask = col_mask[:, :, None].expand(-1, -1, f).reshape(-1, t * f)  # (B, t*f)
        return TokenSequence(zero_masked(tokens, mask), mask)
