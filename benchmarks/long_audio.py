"""Long audio: the audio encoder's (or the fusion's) time and peak memory on clips of 10 s, 60 s and 600 s, full vs
windowed attention.

    python benchmarks/long_audio.py [--seconds 10 60 600] [--window 64] [--global-tokens 4] [--part fusion]

``--part fusion``: the fusion blocks instead (2 cross-modal blocks of width 128, 4 heads) on the audio tokens such a
clip gives (25 per second) plus an 8-token question, dense masks against ``attention_window`` (own modality within the
window, the others in full).

The encoder is the spoken recipe's (configs/spoken_vqa.yaml: 40 log-mel bins, x4 subsampling, 2 layers of width
128, 4 heads; random weights: time and memory do not depend on them). Each (clip length, attention) case runs in a
fresh Python process (one forward pass in inference mode after a short warm-up clip), which reports its wall time and
the growth of its peak resident memory over the process's state before the pass. Prints one table, full and windowed
side by side with their ratio. Full attention holds 4 heads x N x N scores per layer (N = 25 tokens per second), so
its memory grows with the square of the clip; the windowed encoder's grows linearly. A measured table, never
pass/fail.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

# One pass of CALL, timed, with the growth of the process's peak resident memory over its state before the pass.
_MEASURE = r"""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    out = CALL
    wall = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"tokens": int(out.mask.sum()), "wall_s": wall, "peak_mb": (peak - before) / 1024}))
"""

CASE = r"""
import json, resource, sys, time, torch
from omnifuse.encoders.audio import AudioEncoder
seconds, window, n_global = float(sys.argv[1]), (int(sys.argv[2]) or None), int(sys.argv[3])
torch.manual_seed(0)
enc = AudioEncoder(sample_rate=16000, n_mels=40, hop_length=160, win_length=400, d_model=128, n_layers=2, n_heads=4,
                   conv_channels=32, spec_augment=False, attention_window=window,
                   global_tokens=n_global if window else 0).eval()
with torch.inference_mode():
    enc(torch.randn(1, 16000), torch.ones(1, 16000, dtype=torch.bool))  # warm-up
    wave = torch.randn(1, int(16000 * seconds))
    mask = torch.ones_like(wave, dtype=torch.bool)
""" + _MEASURE.replace("CALL", "enc(wave, mask)")

FUSION_CASE = r"""
import json, resource, sys, time, torch
from omnifuse.encoders.base import TokenSequence
from omnifuse.fusion import ModalityFusion
seconds, window = float(sys.argv[1]), (int(sys.argv[2]) or None)
n = int(25 * seconds)
torch.manual_seed(0)
fusion = ModalityFusion(128, {"audio": 128, "text": 128}, n_layers=2, n_heads=4, max_positions=n + 16,
                        attention_window=window).eval()
def inputs(k):
    return ({"audio": TokenSequence(torch.randn(1, k, 128), torch.ones(1, k, dtype=torch.bool)),
             "text": TokenSequence(torch.randn(1, 8, 128), torch.ones(1, 8, dtype=torch.bool))},
            torch.tensor([[False, True, True]]))
with torch.inference_mode():
    fusion(*inputs(16))  # warm-up
    seqs, present = inputs(n)
""" + _MEASURE.replace("CALL", "fusion(seqs, present)")


def run_case(seconds: float, window: int, n_global: int, part: str = "encoder") -> dict:
    case = CASE if part == "encoder" else FUSION_CASE
    proc = subprocess.run(
        [sys.executable, "-c", case, str(seconds), str(window), str(n_global)], capture_output=True, text=True
    )
    if proc.returncode:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, nargs="+", default=[10, 60, 600])
    parser.add_argument("--window", type=int, default=64, help="tokens each side (25 tokens per second)")
    parser.add_argument("--global-tokens", type=int, default=4)
    parser.add_argument("--part", choices=["encoder", "fusion"], default="encoder")
    args = parser.parse_args(argv)
    if args.part == "encoder":
        print(
            f"audio encoder (spoken recipe's), one clip; windowed: window {args.window}, {args.global_tokens} globals"
        )
    else:
        print(
            f"fusion blocks (2 x width 128) on one clip's audio tokens + 8 text tokens; windowed: window {args.window}"
        )
    print(f"{'clip s':>7s} {'tokens':>7s} | {'full s':>8s} {'full MB':>9s} | {'window s':>9s} {'window MB':>10s} | "
          f"{'time x':>7s} {'memory x':>8s}")  # fmt: skip
    for seconds in args.seconds:
        full = run_case(seconds, 0, 0, args.part)
        local = run_case(seconds, args.window, args.global_tokens, args.part)
        if "error" in full or "error" in local:
            print(f"{seconds:7g} full: {full.get('error', 'ok')}; windowed: {local.get('error', 'ok')}")
            continue
        print(
            f"{seconds:7g} {local['tokens']:7d} | {full['wall_s']:8.3f} {full['peak_mb']:9.1f} | "
            f"{local['wall_s']:9.3f} {local['peak_mb']:10.1f} | {full['wall_s'] / local['wall_s']:7.2f} "
            f"{full['peak_mb'] / max(local['peak_mb'], 1e-3):8.2f}"
        )


if __name__ == "__main__":
    main()
