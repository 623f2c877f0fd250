"""Expert parallelism: step time and memory per rank, one process against expert-parallel ranks, for a decoder with
many routed experts.

    python benchmarks/expert_parallel.py [--experts 64] [--top-k 6] [--steps 40] [--warmup 10] [--ranks 2]
        [--accelerator cpu] [--config configs/easyvqa.yaml]

Runs ``omnifuse fit`` of the recipe with ``decoder.n_routed_experts`` / ``top_k`` / ``d_expert`` changed (fine-grained
experts: ``d_expert = 4 * d_model / top_k``), the same global batch either way (one process: the recipe's batch;
``--ranks W``: ``batch / W`` per rank, ``--trainer.strategy expert_parallel``), no validation or test. A callback in
each process records the wall time of every training step (after ``--warmup``), the bytes of parameters, gradients
and optimizer state that process holds, and its peak resident memory. Prints one row per setting, per rank. On CPU
the ranks share this machine's cores (the thread plan divides them), so the time shows the cost of the exchange,
not a speed-up; the memory column shows what sharding buys. A measured figure, never pass/fail.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

PROBE = """
import json, resource, time
import lightning as L
import torch


class StepProbe(L.Callback):
    def __init__(self, out: str, warmup: int) -> None:
        self.out, self.warmup, self.times = out, warmup, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.times.append(time.perf_counter() - self.t0)

    def on_train_end(self, trainer, pl_module):
        params = sum(p.numel() * p.element_size() for p in pl_module.parameters())
        grads = sum(p.numel() * p.element_size() for p in pl_module.parameters() if p.requires_grad)
        state = 0
        for opt in trainer.optimizers:
            for s in opt.state.values():
                state += sum(v.numel() * v.element_size() for v in s.values() if torch.is_tensor(v))
        experts = sum(p.numel() for n, p in pl_module.named_parameters() if ".experts." in n)
        json.dump({"rank": trainer.global_rank, "world": trainer.world_size, "times": self.times[self.warmup:],
                   "model_bytes": params + grads + state, "expert_params": experts,
                   "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024},
                  open(f"{self.out}/rank{trainer.global_rank}.json", "w"))
"""


def run(config: str, ranks: int, args, batch: int, tmp: Path) -> list[dict]:
    out = tmp / f"ranks{ranks}"
    out.mkdir()
    d_model = 128
    cmd = [
        sys.executable, "-m", "omnifuse.app.cli", "fit", "--config", config,
        f"--model.init_args.decoder.n_routed_experts={args.experts}", f"--model.init_args.decoder.top_k={args.top_k}",
        f"--model.init_args.decoder.d_expert={4 * d_model // args.top_k}",
        f"--trainer.max_steps={args.warmup + args.steps}", "--trainer.limit_val_batches=0",
        f"--trainer.default_root_dir={out}",
        f"--trainer.accelerator={args.accelerator}", f"--trainer.devices={ranks}", "--data.test_manifest=null",
        f"--data.batch_size={batch // ranks}",
        "--trainer.callbacks+=ep_probe.StepProbe", f"--trainer.callbacks.out={out}",
        f"--trainer.callbacks.warmup={args.warmup}",
    ]  # fmt: skip
    if ranks > 1:
        cmd.append("--trainer.strategy=expert_parallel")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode:
        raise RuntimeError(f"{ranks} rank(s) failed:\n{proc.stdout[-3000:]}")
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(ranks)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/easyvqa.yaml")
    parser.add_argument("--experts", type=int, default=64)
    parser.add_argument("--top-k", type=int, default=6)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64, help="global batch (split over the ranks)")
    parser.add_argument("--accelerator", default="cpu")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "ep_probe.py").write_text(PROBE)
        rows = {
            1: run(args.config, 1, args, args.batch, tmp),
            args.ranks: run(args.config, args.ranks, args, args.batch, tmp),
        }
    print(f"decoder: {args.experts} routed experts, top-{args.top_k} (+1 shared); global batch {args.batch}; "
          f"{args.steps} steps timed after {args.warmup}; {args.accelerator}")  # fmt: skip
    print(
        f"{'setting':28s} {'rank':>4s} {'ms/step':>9s} {'expert params':>14s} {'params+grads+Adam MB':>21s} {'peak RSS MB':>12s}"
    )
    base = None
    for ranks, result in rows.items():
        label = "one process" if ranks == 1 else f"expert parallel, {ranks} ranks"
        for r in result:
            ms = 1000 * statistics.median(r["times"])
            base = ms if base is None else base
            print(f"{label:28s} {r['rank']:4d} {ms:9.1f} {r['expert_params']:14,d} {r['model_bytes'] / 2**20:21.1f} "
                  f"{r['peak_rss'] / 2**20:12.0f}")  # fmt: skip
    ep = statistics.median(statistics.median(r["times"]) for r in rows[args.ranks]) * 1000
    print(f"step time, {args.ranks} ranks / one process: x{ep / base:.2f}")


if __name__ == "__main__":
    main()
