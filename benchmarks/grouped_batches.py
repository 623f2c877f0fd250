"""Training step time with and without ``data.group_by: image``, side by side, on a recipe's real batches.

    python benchmarks/grouped_batches.py [--config configs/easyvqa.yaml] [--steps 30] [--group-size 4] [--threads N]

Builds the recipe's model and data module, takes the first ``--steps`` training batches of epoch 0 with a plain
(balanced) draw and with the same draw grouped by image, and times a full optimizer step (forward, backward, AdamW,
router-bias update) on each batch. The model encodes each distinct image of a batch once, so the image tower's share
of the step shrinks with the number of distinct images per batch. Figures, not pass/fail.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from omnifuse.app import threads
from omnifuse.app.cli import cli_main


def batches(config: str, steps: int, group_by: str | None, group_size: int) -> list:
    cli = cli_main(["--config", config, "--data.group_by", group_by or "null", "--data.group_size", str(group_size),
                    "--data.num_workers", "0"], run=False)  # fmt: skip
    data = cli.datamodule
    data.prepare_data()
    data.setup("fit")
    loader = data.train_dataloader()
    loader.sampler.set_epoch(0)
    out = []
    for batch in loader:
        out.append(batch)
        if len(out) == steps:
            break
    return out


def time_steps(config: str, batches: list) -> list[float]:
    torch.manual_seed(0)
    task = cli_main(["--config", config], run=False).model
    task.train()
    optimizer = torch.optim.AdamW(task.parameters(), lr=1e-3)
    times = []
    for batch in [batches[0]] + batches:  # the first step warms up
        start = time.perf_counter()
        losses, _, _ = task._losses(batch)
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
        task.model.decoder.update_router_biases()
        times.append(time.perf_counter() - start)
    return times[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/easyvqa.yaml")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: omnifuse's plan: usable CPUs; OMNIFUSE_THREADS / OMP_NUM_THREADS respected)")
    args = parser.parse_args()
    sys.argv = sys.argv[:1]  # LightningCLI below gets its arguments explicitly
    args.threads = threads.configure(args.threads).intra_op

    rows = {}
    for name, group_by in (("plain", None), (f"group_by image, size {args.group_size}", "image")):
        data = batches(args.config, args.steps, group_by, args.group_size)
        distinct = statistics.mean(len(torch.unique(b.image.flatten(1), dim=0)) for b in data)
        rows[name] = (distinct, statistics.median(time_steps(args.config, data)), len(data[0]))
    base = rows["plain"][1]
    print(f"{args.config}: {args.steps} training steps each, {args.threads} threads, median step time")
    print(f"{'batches':<24} {'batch':>5} {'images/batch':>12} {'s/step':>7} {'x plain':>7}")
    for name, (distinct, seconds, size) in rows.items():
        print(f"{name:<24} {size:>5} {distinct:>12.1f} {seconds:>7.3f} {base / seconds:>7.2f}")


if __name__ == "__main__":
    main()
