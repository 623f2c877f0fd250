"""Batch-inference speed of a checkpoint and its pruned exports, side by side (records/s at batch 64).

    python benchmarks/prune_speed.py   # after benchmarks/prune_experts.py wrote runs/prune_experts/

The same easy-VQA test questions and decoding (12 new tokens) for every model, ``--rounds`` rounds in turn, median.
A measured figure, never pass/fail; run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

DEFAULT_MODELS = [
    "original=runs/recipe_2500/seed_0/version_0/checkpoints/best.ckpt",
    "drop 0.25=runs/prune_experts/ckpt0_drop0.25",
    "drop 0.5=runs/prune_experts/ckpt0_drop0.5",
]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS, help="NAME=PATH (a .ckpt or export folder)")
    parser.add_argument("--test", default="datasets/easyvqa/vqa_test.jsonl")
    parser.add_argument("--records", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)

    from omnifuse.app.predictor import Predictor
    from omnifuse.data.records import read_manifest
    from omnifuse.tasks.config import GenerationConfig

    records = read_manifest(Path(args.test))[: args.records]
    subset = [{"id": r.id, "task": r.task, "image": r.image.name, "text": r.text} for r in records]
    root = records[0].image.parent
    models = dict(spec.split("=", 1) for spec in args.models)
    predictors = {
        name: Predictor.from_pretrained(path, batch_size=64, generation=GenerationConfig(max_new_tokens=12))
        for name, path in models.items()
    }
    speeds: dict[str, list[float]] = {name: [] for name in models}
    for predictor in predictors.values():
        predictor.predict(subset[:128], root=root)  # warm-up
    for _ in range(args.rounds):
        for name, predictor in predictors.items():
            start = time.perf_counter()
            predictor.predict(subset, root=root)
            speeds[name].append(len(subset) / (time.perf_counter() - start))
    for name, values in speeds.items():
        rounds = ", ".join(f"{v:.1f}" for v in values)
        print(f"{name:12s} records/s (batch 64): {statistics.median(values):7.1f}   rounds: {rounds}")


if __name__ == "__main__":
    main()
