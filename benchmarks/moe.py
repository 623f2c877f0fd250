"""MoE layer cost relative to a dense SwiGLU of the same active width, and against the `transformers` MoE block.

    python benchmarks/moe.py                              # fp32, CPU, 2 threads (the README table)
    python benchmarks/moe.py --device cuda --dtype bf16   # the same on a GPU, with achieved TFLOP/s

For each configuration and routing (balanced: random tokens; skewed: tokens share a direction that favours a
few experts, max/mean load about 3), it times forward + backward of

* ``dense``: SwiGLU of width ``(top_k + n_shared) * d_expert`` (the MoE layer's active width),
* ``ours``: :class:`omnifuse.moe_core.moe.MoELayer` (router + sort + experts + weighted scatter + shared),
* ``peer``: the same weights in the ``transformers`` block (Mixtral for softmax top-k without shared experts,
  DeepSeek-V3 for sigmoid top-k with a shared expert), with its ``eager`` and ``grouped_mm`` experts kernels.
  Needs ``pip install transformers`` (optional; the columns are skipped without it).

R = ours / dense. All timings are medians over interleaved repetitions (dense, ours, peers in turn, so that
load from other processes hits every column alike). Prints figures, never pass/fail.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from omnifuse.app import threads
from omnifuse.moe_core.experts import SwiGLU
from omnifuse.moe_core.moe import MoELayer


@dataclass
class Case:
    name: str
    n_experts: int
    top_k: int
    d_expert: int
    n_shared: int
    score_func: str


CASES = [
    Case("E=8 k=2 d_e=512", 8, 2, 512, 0, "softmax"),
    Case("E=64 k=6 d_e=128 +1 shared", 64, 6, 128, 1, "sigmoid"),
]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(
    fns: dict, device: torch.device, repeats: int, warmup: int, clock=time.perf_counter
) -> dict[str, list[float]]:
    """Run each function ``warmup`` times, then ``repeats`` rounds of all of them in turn; seconds per call."""
    for f in fns.values():
        for _ in range(warmup):
            f()
    sync(device)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            sync(device)
            t0 = clock()
            f()
            sync(device)
            times[k].append(clock() - t0)
    return times


def fwd_bwd(module: nn.Module, x: torch.Tensor, grad: torch.Tensor, unpack: bool = False, valid=None) -> None:
    """One training step's worth of work: forward on ``(1, N, d)`` and backward; gradients discarded."""
    out = module(x.unsqueeze(0)) if valid is None else module(x.unsqueeze(0), valid.unsqueeze(0))
    out = out[0] if unpack else out
    out.view(-1, x.size(-1)).backward(grad)
    for p in module.parameters():
        p.grad = None
    x.grad = None


def skew_direction(layer: MoELayer, x: torch.Tensor, target: float = 3.0) -> tuple[torch.Tensor, float]:
    """A shift ``alpha * u`` of every token (``u`` leans towards experts 0..k-1) whose max/mean load ~ target."""
    w = layer.router.weight.detach().float()
    u = w[: layer.top_k].sum(0)
    u = u / u.norm()

    def load(alpha: float) -> float:
        with torch.no_grad():
            idx = layer.router((x + alpha * u).to(w.dtype)).topk_idx
        c = torch.bincount(idx.flatten(), minlength=layer.n_experts).float()
        return float(c.max() / c.mean())

    lo, hi = 0.0, 1.0
    while load(hi) < target and hi < 1e4:
        hi *= 2
    for _ in range(30):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if load(mid) < target else (lo, mid)
    return hi * u, load(hi)


def build_peer(case: Case, layer: MoELayer, d_model: int, impl: str) -> nn.Module | None:
    """The `transformers` MoE block with ``layer``'s weights, or None when transformers is not installed."""
    try:
        import transformers  # noqa: F401
    except ImportError:
        return None
    ex = layer.experts
    if case.score_func == "softmax" and case.n_shared == 0:
        from transformers.models.mixtral.configuration_mixtral import MixtralConfig
        from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

        cfg = MixtralConfig(hidden_size=d_model, intermediate_size=case.d_expert, num_local_experts=case.n_experts,
                            num_experts_per_tok=case.top_k, router_jitter_noise=0.0)  # fmt: skip
        cfg._experts_implementation = impl
        peer = MixtralSparseMoeBlock(cfg)
    else:
        from transformers.models.deepseek_v3.configuration_deepseek_v3 import DeepseekV3Config
        from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE

        cfg = DeepseekV3Config(hidden_size=d_model, moe_intermediate_size=case.d_expert, n_routed_experts=case.n_experts,
                               num_experts_per_tok=case.top_k, n_shared_experts=case.n_shared, n_group=1, topk_group=1,
                               norm_topk_prob=True, routed_scaling_factor=1.0)  # fmt: skip
        cfg._experts_implementation = impl
        peer = DeepseekV3MoE(cfg)
        sh = layer.shared
        peer.shared_experts.gate_proj.weight.data.copy_(sh.w1.weight)
        peer.shared_experts.up_proj.weight.data.copy_(sh.w3.weight)
        peer.shared_experts.down_proj.weight.data.copy_(sh.w2.weight)
        peer.gate.e_score_correction_bias.data.copy_(layer.router.expert_bias)
    with torch.no_grad():
        peer.gate.weight.copy_(layer.router.weight)
        # transformers stores [gate; up] as (E, 2h, d) and down as (E, d, h): the transposes of ours
        peer.experts.gate_up_proj.copy_(torch.cat((ex.w_gate, ex.w_up), dim=2).transpose(1, 2))
        peer.experts.down_proj.copy_(ex.w_down.transpose(1, 2))
    return peer


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--threads", type=int, default=None, help="intra-op threads (default: omnifuse's plan: usable CPUs; OMNIFUSE_THREADS / OMP_NUM_THREADS respected)")
    ap.add_argument("--repeats", type=int, default=11)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--no-peer", action="store_true", help="skip the transformers columns")
    ap.add_argument(
        "--pad",
        type=float,
        default=0.0,
        help="fraction of tokens marked as padding (valid=False), as in a padded training batch: the MoE layer skips "
        "them, the dense layer computes them; the peer columns (no padding mask) are left out",
    )
    ap.add_argument(
        "--clock",
        default="wall",
        choices=["wall", "cpu"],
        help="wall: elapsed time (default); cpu: this process's CPU time, which other processes on a busy machine "
        "do not inflate (meaningful with --threads 1, where it equals the quiet-machine wall time)",
    )
    args = ap.parse_args(argv)

    args.threads = threads.configure(args.threads).intra_op
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    n, d = args.tokens, args.d_model
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    pad = f", {args.pad:.0%} padding" if args.pad else ""
    print(f"# MoE forward+backward vs dense SwiGLU of the same active width: {n} tokens{pad}, d_model={d}, "
          f"{args.dtype}, {device.type}, {torch.get_num_threads()} threads, {args.clock} clock, median of {args.repeats}; "
          f"torch {torch.__version__}, load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    cols = ["config", "routing", "max/mean", "dense ms", "ours ms", "R", "peer eager ms", "peer grouped_mm ms",
            "best peer / ours"]  # fmt: skip
    if device.type == "cuda":
        cols += ["dense TFLOP/s", "ours TFLOP/s"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for case in CASES:
        torch.manual_seed(0)
        layer = MoELayer(d, case.n_experts, case.top_k, case.d_expert, case.n_shared, case.score_func).to(device, dtype)
        width = (case.top_k + case.n_shared) * case.d_expert
        dense = SwiGLU(d, width).to(device, dtype)
        for p in dense.parameters():
            nn.init.normal_(p, std=0.02)
        peers = (
            {}
            if args.no_peer or args.pad
            else {impl: build_peer(case, layer, d, impl) for impl in ("eager", "grouped_mm")}
        )
        peers = {k: v.to(device, dtype) for k, v in peers.items() if v is not None}
        base = torch.randn(n, d, device=device, dtype=dtype)
        valid = torch.rand(n, device=device) >= args.pad if args.pad else None
        grad = torch.randn(n, d, device=device, dtype=dtype)
        shift, skew = skew_direction(layer, base.float())
        for routing, x0 in (("balanced", base), ("skewed", base + shift.to(dtype))):
            with torch.no_grad():
                _, aux = layer(x0, valid)
            x = x0.clone().requires_grad_()
            ours = partial(fwd_bwd, layer, x, grad, unpack=True, valid=valid)
            fns = {"dense": partial(fwd_bwd, dense, x, grad), "ours": ours}
            fns.update({f"peer_{k}": partial(fwd_bwd, m, x, grad) for k, m in peers.items()})
            times = time_interleaved(fns, device, args.repeats, args.warmup, clock)
            med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
            peer_cols = [f"{med[k]:.1f}" if k in med else "-" for k in ("peer_eager", "peer_grouped_mm")]
            best_peer = min((med[k] for k in med if k.startswith("peer_")), default=None)
            row = [case.name, routing, f"{float(aux.stats.max_over_mean):.2f}", f"{med['dense']:.1f}",
                   f"{med['ours']:.1f}", f"{med['ours'] / med['dense']:.2f}", *peer_cols,
                   f"{best_peer / med['ours']:.2f}x" if best_peer else "-"]  # fmt: skip
            if device.type == "cuda":
                flops = 18 * n * d * width  # 3 matmuls of 2*n*d*width flops, forward + 2x backward
                n_valid = n if valid is None else int(valid.sum())  # the MoE layer computes only these tokens
                row += [f"{flops / med['dense'] / 1e9:.1f}", f"{flops * n_valid / n / med['ours'] / 1e9:.1f}"]
            print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
