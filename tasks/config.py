"""Plain dataclass settings of a task (YAML / LightningCLI friendly)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class OptimizerConfig:
    """AdamW with linear warm-up and cosine decay to ``min_lr_ratio * lr``."""

    lr: float = 1e-3
    weight_decay: float = 0.05
    beta1: float = 0.9
    beta2: float = 0.95
    warmup_steps: int = 100
    min_lr_ratio: float = 0.05


@dataclass
class GenerationConfig:
    """How the task generates during evaluation and prediction."""

    max_new_tokens: int = 32
    strategy: str = "greedy"  # greedy | sample | beam
    num_beams: int = 4
    length_penalty: float = 1.0
    temperature: float = 1.0
    top_p: float = 1.0
