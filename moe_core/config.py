"""Configuration of the MoE decoder: one dataclass of plain types (YAML / LightningCLI friendly)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

SCORE_FUNCS = ("softmax", "sigmoid")
EXPERT_IMPLS = ("auto", "loop", "grouped_mm")


@dataclass
class MoEDecoderConfig:
    """Every knob of :class:`omnifuse.moe_core.MoEDecoder`; validated on construction.

    Layers ``0 .. n_dense_layers-1`` use a dense SwiGLU FFN of width ``d_ff_dense``; the others use an MoE FFN
    with ``n_routed_experts`` fine-grained SwiGLU experts of width ``d_expert`` (``top_k`` per token) plus
    ``n_shared_experts`` always-on experts (one SwiGLU of width ``n_shared_experts * d_expert``).
    """

    vocab_size: int = 262
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    d_memory: int | None = None  # width of the encoder memory; None = d_model
    # FFN
    n_dense_layers: int = 1
    d_ff_dense: int = 1024
    n_routed_experts: int = 16
    n_shared_experts: int = 1
    top_k: int = 2  # with top_p: the most experts a token may take
    d_expert: int = 256
    # Width of the shared experts' SwiGLU; None: n_shared_experts * d_expert. Set when the routed experts' width
    # changes alone (channel pruning, moe_core/prune.py).
    d_shared: int | None = None
    # Adaptive routing: a token takes experts in selection order until their share of its affinity (scores normalised
    # over all experts) reaches top_p, at least min_experts and at most top_k. None: always top_k.
    top_p: float | None = None
    min_experts: int = 1
    # With top_p: weight of a penalty on the expected number of experts per token (a smooth count of the slots the
    # rule takes, differentiable in the router's scores), so training can trade expert evaluations for accuracy.
    experts_loss_coef: float = 0.0
    # router
    score_func: str = "sigmoid"
    n_groups: int = 1
    topk_groups: int = 1
    route_scale: float = 1.0
    bias_update_rate: float = 1e-3
    aux_loss_coef: float = 0.0
    seq_aux_loss_coef: float = 0.0
    z_loss_coef: float = 0.0
    capacity_factor: float | None = None  # None = dropless; capacity applies in training only
    expert_impl: str = "auto"  # "auto" | "loop" | "grouped_mm"
    # attention / positions
    max_seq_len: int = 1024
    rope_theta: float = 10000.0
    dropout: float = 0.0
    # multi-token prediction (DeepSeek-V3 MTP)
    mtp_depth: int = 0
    mtp_loss_coef: float = 0.3
    # Early exit (dynamic depth): after each block listed in exit_layers (0-based, not the last) the shared output head
    # (final norm + tied embedding) reads the hidden state. Training adds exit_loss_coef times the mean cross-entropy
    # of those exits; cached decoding lets a token leave at the first exit whose top probability reaches
    # exit_threshold (the later blocks' KV cache slots are then filled from its exited state). None: off.
    exit_layers: list[int] | None = None
    exit_loss_coef: float = 0.0
    exit_threshold: float | None = None
    pad_id: int = 256
    norm_eps: float = 1e-6
    # None: d_model ** -0.5 (fan-in). GPT-2's fixed 0.02 suits d_model ~768; at the small widths a CPU recipe uses
    # it starved the memory path (measured: easy-VQA shape questions stayed at chance for 900 steps, 81% after 100
    # shape-only steps with 0.1).
    init_std: float | None = None

    def __post_init__(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ValueError(f"MoEDecoderConfig: {msg}")

        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff_dense", "max_seq_len"):
            need(int(getattr(self, name)) > 0, f"{name} must be > 0, got {getattr(self, name)!r}")
        need(
            self.d_model % self.n_heads == 0, f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})"
        )
        need(
            (self.d_model // self.n_heads) % 2 == 0,
            f"head dim d_model/n_heads = {self.d_model // self.n_heads} must be even for RoPE",
        )
        need(self.d_memory is None or self.d_memory > 0, f"d_memory must be None or > 0, got {self.d_memory!r}")
        need(
            0 <= self.n_dense_layers <= self.n_layers,
            f"n_dense_layers must be in [0, n_layers={self.n_layers}], got {self.n_dense_layers}",
        )
        need(
            0 <= self.pad_id < self.vocab_size,
            f"pad_id must be in [0, vocab_size={self.vocab_size}), got {self.pad_id}",
        )
        need(self.score_func in SCORE_FUNCS, f"score_func must be one of {SCORE_FUNCS}, got {self.score_func!r}")
        need(self.expert_impl in EXPERT_IMPLS, f"expert_impl must be one of {EXPERT_IMPLS}, got {self.expert_impl!r}")
        need(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}")
        need(self.mtp_depth in (0, 1), f"mtp_depth must be 0 or 1, got {self.mtp_depth}")
        need(self.rope_theta > 0, f"rope_theta must be > 0, got {self.rope_theta}")
        if self.exit_layers is not None:
            self.exit_layers = sorted({int(i) for i in self.exit_layers})
            need(
                all(0 <= i < self.n_layers - 1 for i in self.exit_layers),
                f"exit_layers must be blocks 0 .. n_layers-2={self.n_layers - 2}, got {self.exit_layers}",
            )
        need(
            self.exit_threshold is None or (0.0 < self.exit_threshold <= 1.0 and bool(self.exit_layers)),
            f"exit_threshold must be None or in (0, 1] with exit_layers set, got {self.exit_threshold}",
        )
        need(self.exit_loss_coef >= 0, f"exit_loss_coef must be >= 0, got {self.exit_loss_coef}")
        for name in (
            "bias_update_rate", "aux_loss_coef", "seq_aux_loss_coef", "z_loss_coef", "mtp_loss_coef", "experts_loss_coef"
        ):  # fmt: skip
            need(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}")
        if self.n_moe_layers > 0:
            check_router_args(
                self.n_routed_experts,
                self.top_k,
                self.n_groups,
                self.topk_groups,
                self.route_scale,
                self.capacity_factor,
            )
            need(self.d_expert > 0, f"d_expert must be > 0, got {self.d_expert}")
            need(self.d_shared is None or self.d_shared > 0, f"d_shared must be None or > 0, got {self.d_shared}")
            need(self.top_p is None or 0.0 < self.top_p <= 1.0, f"top_p must be None or in (0, 1], got {self.top_p}")
            need(
                1 <= self.min_experts <= self.top_k,
                f"min_experts must be in [1, top_k={self.top_k}], got {self.min_experts}",
            )
            need(
                self.experts_loss_coef == 0 or (self.top_p is not None and self.top_p < 1.0),
                f"experts_loss_coef={self.experts_loss_coef} needs adaptive routing (top_p < 1): with fixed top-k every "
                "token takes top_k experts and there is nothing to trade",
            )
            need(self.n_shared_experts >= 0, f"n_shared_experts must be >= 0, got {self.n_shared_experts}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def memory_dim(self) -> int:
        return self.d_model if self.d_memory is None else self.d_memory

    @property
    def n_moe_layers(self) -> int:
        return self.n_layers - self.n_dense_layers

    def to_dict(self) -> dict:
        return asdict(self)


def check_router_args(
    n_experts: int, top_k: int, n_groups: int, topk_groups: int, route_scale: float, capacity_factor: float | None
) -> None:
    """Raise ``ValueError`` with a clear message for an impossible routing setup."""
    if n_experts <= 0:
        raise ValueError(f"n_routed_experts must be > 0, got {n_experts}")
    if not 1 <= top_k <= n_experts:
        raise ValueError(f"top_k must be in [1, n_routed_experts={n_experts}], got {top_k}")
    if n_groups < 1 or n_experts % n_groups != 0:
        raise ValueError(f"n_groups ({n_groups}) must be >= 1 and divide n_routed_experts ({n_experts})")
    if not 1 <= topk_groups <= n_groups:
        raise ValueError(f"topk_groups must be in [1, n_groups={n_groups}], got {topk_groups}")
    if top_k > topk_groups * (n_experts // n_groups):
        raise ValueError(
            f"top_k ({top_k}) exceeds the experts reachable in topk_groups={topk_groups} groups of "
            f"{n_experts // n_groups}"
        )
    if route_scale <= 0:
        raise ValueError(f"route_scale must be > 0, got {route_scale}")
    if capacity_factor is not None and capacity_factor <= 0:
        raise ValueError(f"capacity_factor must be None (dropless) or > 0, got {capacity_factor}")
