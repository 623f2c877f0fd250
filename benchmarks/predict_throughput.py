"""Batch inference throughput: records/s at batch 64 and at batch 1 over the same easy-VQA test records.

    python benchmarks/predict_throughput.py --ckpt runs/easyvqa/latest/checkpoints/best.ckpt [--limit 2000] [--threads N]

Prints one table (records/s for each batch size and the ratio against batch 1) and checks that both batch sizes
predict the same answers. Figures, not pass/fail.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from omnifuse import Predictor
from omnifuse.app import threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="a .ckpt or save_pretrained folder")
    parser.add_argument("--manifest", default="datasets/easyvqa/vqa_test.jsonl")
    parser.add_argument("--limit", type=int, default=2000, help="first N records (the same N for every batch size)")
    parser.add_argument("--batch-sizes", default="64,1")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: omnifuse's plan: usable CPUs; OMNIFUSE_THREADS / OMP_NUM_THREADS respected)")
    parser.add_argument("--max-new-tokens", type=int, default=12)
    args = parser.parse_args()

    args.threads = threads.configure(args.threads).intra_op
    manifest = Path(args.manifest)
    records = [json.loads(line) for line in manifest.read_text().splitlines()[: args.limit]]
    results = {}
    for bs in (int(b) for b in args.batch_sizes.split(",")):
        predictor = Predictor.from_pretrained(args.ckpt, batch_size=bs)
        predictor.generation.max_new_tokens = args.max_new_tokens
        predictor.predict(records[: min(bs * 2, len(records))], root=manifest.parent)  # warm-up
        start = time.perf_counter()
        out = predictor.predict(records, root=manifest.parent)
        seconds = time.perf_counter() - start
        correct = sum(p["prediction"] == r["target"] for p, r in zip(out["predictions"], records))
        results[bs] = (len(records) / seconds, seconds, [p["prediction"] for p in out["predictions"]], correct)
    base = results[min(results)][0]
    print(f"{len(records)} records of {manifest}, {args.threads} threads, greedy, max_new_tokens={args.max_new_tokens}")
    print(f"{'batch':>6} {'records/s':>10} {'seconds':>8} {'x batch 1':>9} {'accuracy':>9}")
    for bs, (rate, seconds, _, correct) in sorted(results.items(), reverse=True):
        print(f"{bs:>6} {rate:>10.1f} {seconds:>8.1f} {rate / base:>9.1f} {correct / len(records):>9.2%}")
    answers = [r[2] for r in results.values()]
    same = sum(all(a[i] == answers[0][i] for a in answers) for i in range(len(records)))
    print(f"identical predictions across batch sizes: {same}/{len(records)}")


if __name__ == "__main__":
    main()
