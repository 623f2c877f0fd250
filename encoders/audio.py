"""Native audio encoder: (speed perturbation) -> log-mel front end -> SpecAugment -> conv subsampling (x4 in time)
-> transformer."""

from __future__ import annotations

import torch
from torch import nn

from omnifuse.encoders.audio_frontend import LogMelFrontend, SpecAugment, SpeedPerturb
from omnifuse.encoders.base import Encoder, TokenSequence
from omnifuse.encoders.layers import TransformerBlock, sinusoidal_positions
from omnifuse.encoders.registry import register_encoder
from omnifuse.encoders.utils import safe_key_mask, zero_masked


def _conv_out(n: torch.Tensor | int) -> torch.Tensor | int:
    """Length after one kernel-3, stride-2, unpadded conv (0 when the input is shorter than the kernel)."""
    if isinstance(n, int):
        return max((n - 3) // 2 + 1, 0)
    return ((n - 3).div(2, rounding_mode="floor") + 1).clamp(min=0)


class ConvSubsampling(nn.Module):
    """Two 3x3 stride-2 convs over (mel, time) then a linear map to ``d_model``: T frames -> ~T/4 tokens.

    The convs are unpadded, so an output frame is valid exactly when its whole receptive field (7 input frames)
    lies inside the valid frames; its value then cannot depend on padding.
    """

    def __init__(self, n_mels: int, d_model: int, channels: int = 64) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, channels, 3, stride=2), nn.GELU(), nn.Conv2d(channels, channels, 3, stride=2), nn.GELU()
        )
        self.proj = nn.Linear(channels * _conv_out(_conv_out(n_mels)), d_model)

    @staticmethod
    def out_lengths(lengths: torch.Tensor | int) -> torch.Tensor | int:
        return _conv_out(_conv_out(lengths))

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        x = self.conv(spec.unsqueeze(1))  # (B, C, F', T')
        B, C, F, T = x.shape
        return self.proj(x.permute(0, 3, 1, 2).reshape(B, T, C * F))  # (B, T', d_model)


@register_encoder("audio")
class AudioEncoder(Encoder):
    """Waveforms (B, S) + mask (B, S) -> tokens (B, T', d_model), about one token per 4 hops (40 ms at defaults).

    A clip shorter than 7 frames (~60 ms at the defaults) yields no valid token. Padded samples never reach a valid
    token, and tokens under the output mask are exactly 0.

    Args:
        sample_rate, n_mels, hop_length, win_length, n_fft: log-mel front end (``LogMelFrontend``).
        d_model, n_layers, n_heads, ffn_mult, dropout: the transformer (sinusoidal positions, pre-LN blocks).
        conv_channels: channels of the two subsampling convs.
        spec_augment, freq_mask_param, time_mask_param: SpecAugment, applied in training mode only.
        speed_perturb: speed factors (e.g. ``[0.9, 1.0, 1.1]``), one drawn per clip in training mode only
            (``SpeedPerturb``); None: off.
        attention_window: None (default): full self-attention. An int ``w``: each token attends to the tokens
            within ``w`` positions (``layers.local_global_attention``), so time and memory grow linearly with the
            clip (25 tokens per second at the defaults: ``w = 64`` is ~2.5 s each side).
        global_tokens: with ``attention_window``, learned tokens prepended to every clip that attend to all tokens
            and are attended by all (a path across the whole clip); not part of the output.
    """

    modality = "audio"

    def __init__(
        self,
        sample_rate: int = 16000,
        n_mels: int = 64,
        hop_length: int = 160,
        win_length: int = 400,
        n_fft: int | None = None,
        d_model: int = 192,
        n_layers: int = 4,
        n_heads: int = 4,
        ffn_mult: int = 4,
        dropout: float = 0.0,
        conv_channels: int = 64,
        spec_augment: bool = True,
        freq_mask_param: int = 8,
        time_mask_param: int = 20,
        speed_perturb: list[float] | None = None,
        attention_window: int | None = None,
        global_tokens: int = 0,
    ) -> None:
        super().__init__()
        if global_tokens and attention_window is None:
            raise ValueError("global_tokens needs attention_window (with full attention every token is global)")
        self.speed_perturb = SpeedPerturb(sample_rate, speed_perturb) if speed_perturb else None
        self.frontend = LogMelFrontend(sample_rate, n_mels, hop_length, win_length, n_fft=n_fft)
        self.spec_augment = SpecAugment(freq_mask_param, time_mask_param) if spec_augment else nn.Identity()
        self.subsample = ConvSubsampling(n_mels, d_model, conv_channels)
        self.blocks = nn.ModuleList(
            [
                TransformerBlock(d_model, n_heads, ffn_mult, dropout, attention_window, global_tokens)
                for _ in range(n_layers)
            ]
        )
        self.global_tokens = nn.Parameter(torch.randn(global_tokens, d_model) * 0.02) if global_tokens else None
        self.norm = nn.LayerNorm(d_model)
        self.out_dim = d_model

    def num_tokens(self, num_samples: int) -> int:
        """Tokens for a clip of ``num_samples`` samples (also the padded width of a batch of that many samples)."""
        return self.subsample.out_lengths(self.frontend.num_frames(num_samples))

    def forward(self, wave: torch.Tensor, wave_mask: torch.Tensor) -> TokenSequence:
        """``wave`` (B, S) float, ``wave_mask`` (B, S) bool (right-padded) -> TokenSequence (B, T', out_dim)."""
        if self.speed_perturb is not None:  # training mode only
            wave, wave_mask = self.speed_perturb(wave, wave_mask)
        spec, frame_mask = self.frontend(wave, wave_mask)  # (B, F, T), (B, T)
        spec = self.spec_augment(spec)
        x = self.subsample(spec)  # (B, T', D)
        lengths = self.subsample.out_lengths(frame_mask.sum(dim=-1))  # (B,)
        mask = torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]  # (B, T')
        x = x + sinusoidal_positions(x.shape[1], x.shape[2], x.device).to(x.dtype)
        x = zero_masked(x, mask)
        if self.global_tokens is not None:  # (B, G + T', D): the globals first, always real
            g = self.global_tokens.shape[0]
            x = torch.cat([self.global_tokens.to(x.dtype).expand(x.shape[0], -1, -1), x], dim=1)
            mask = torch.cat([mask.new_ones(mask.shape[0], g), mask], dim=1)
        key_mask = safe_key_mask(mask)
        for block in self.blocks:
            x = block(x, key_mask)
        if self.global_tokens is not None:
            x, mask = x[:, self.global_tokens.shape[0] :], mask[:, self.global_tokens.shape[0] :]
        return TokenSequence(zero_masked(self.norm(x), mask), mask)
