"""DeepSeek-V3-style Mixture-of-Experts decoder core. Imports nothing from the other omnifuse packages.

Public API::

    from omnifuse.moe_core import MoEDecoderConfig, MoEDecoder, DecoderOutput, GenerationOutput

Building blocks (router, experts, MoE layer, attention, expert parallelism) live in their own modules.
"""

from omnifuse.moe_core.attention import KVCache, RotaryEmbedding
from omnifuse.moe_core.config import MoEDecoderConfig
from omnifuse.moe_core.decoder import DecoderOutput, MoEDecoder
from omnifuse.moe_core.experts import RoutedExperts, SwiGLU, expert_swiglu
from omnifuse.moe_core.generation import GenerationOutput, generate
from omnifuse.moe_core.moe import MoEAux, MoELayer
from omnifuse.moe_core.parallel import ExpertParallelMoELayer, apply_expert_parallel
from omnifuse.moe_core.router import Router, RouterOutput, RouterStats, update_router_biases

__all__ = [
    "DecoderOutput",
    "ExpertParallelMoELayer",
    "GenerationOutput",
    "KVCache",
    "MoEAux",
    "MoEDecoder",
    "MoEDecoderConfig",
    "MoELayer",
    "RotaryEmbedding",
    "RoutedExperts",
    "Router",
    "RouterOutput",
    "RouterStats",
    "SwiGLU",
    "apply_expert_parallel",
    "expert_swiglu",
    "generate",
    "update_router_biases",
]
