"""Early exit against the full depth on checkpoints trained with exit heads: layers per token, speed, accuracy.

    python benchmarks/recipe_seeds.py --seeds 0 1 2 --out runs/early_exit -- \\
        --model.init_args.decoder.n_layers 4 --model.init_args.decoder.exit_layers [1,2] \\
        --model.init_args.decoder.exit_loss_coef 0.5                       # 4-layer decoders with two exits
    python benchmarks/early_exit.py --ckpts runs/early_exit/seed_{0,1,2}/version_0/checkpoints/best.ckpt \\
        [--thresholds 0.9 0.99 0.999] [--max-drop 0.3]

The caption model (``--task caption``: greedy captions, BLEU-4 in points as the accuracy, CIDEr-D beside it):

    omnifuse fit --config configs/easyvqa_caption.yaml --seed_everything N --trainer.max_epochs 8 \\
        --trainer.default_root_dir runs/early_exit_caption/seed_N --model.init_args.decoder.n_layers 4 \\
        --model.init_args.decoder.exit_layers [1,2] --model.init_args.decoder.exit_loss_coef 0.5
    python benchmarks/early_exit.py --task caption --ckpts runs/early_exit_caption/seed_{0,1,2}/version_0/checkpoints/best.ckpt

One record at a time (``--batch-size 1``, e.g. with ``--limit 200 --thresholds 0.9``): a token that exits then skips
its later blocks outright; in a batch those blocks still run, for the rows that stay in.

Each checkpoint is rebuilt with ``decoder.exit_threshold`` set (what ``--model.init_args.decoder.exit_threshold T`` on
``omnifuse predict`` does) and run by the batch job (batch 64 unless ``--batch-size``, greedy, 12 new tokens;
captions 64): on the validation split for every threshold (accuracy, MoE layers run per generated token), the threshold chosen there (fewest layers within
``--max-drop`` points of the full depth on every checkpoint), then on the test split the full depth and the chosen
threshold timed alternately (generated tokens per second of the whole pass, encoders and the generation loop included,
and per second spent in the decoder's decoding steps, which is what an exit can shorten). Prints one table with the median and
worst over the checkpoints. Run it alone: the speed is a wall-clock figure. A measured table, never pass/fail.
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict
from pathlib import Path

from adaptive_routing import ANSWER_TYPES, build, choose_on_validation, evaluate


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpts", nargs="+", required=True, help="checkpoints trained with decoder.exit_layers")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.9, 0.99, 0.999])
    parser.add_argument("--max-drop", type=float, default=0.3, help="validation points a threshold may lose")
    parser.add_argument("--task", default="vqa", choices=("vqa", "caption"),
                        help="caption: greedy captions, BLEU-4 (points) as the accuracy, CIDEr-D beside it")  # fmt: skip
    parser.add_argument("--val", default=None, help="default: datasets/easyvqa/<task>_val.jsonl")
    parser.add_argument("--test", default=None, help="default: datasets/easyvqa/<task>_test.jsonl")
    parser.add_argument("--limit", type=int, default=None, help="the first N records of each split (a quick look)")
    parser.add_argument(
        "--batch-size", type=int, default=64,
        help="records decoded together; at 1 a token that exits skips its later blocks outright, where at 64 they "
        "still run for the rows of the batch that stay in",
    )  # fmt: skip
    args = parser.parse_args(argv)
    args.val = args.val or f"datasets/easyvqa/{args.task}_val.jsonl"
    args.test = args.test or f"datasets/easyvqa/{args.task}_test.jsonl"
    kinds = ANSWER_TYPES if args.task == "vqa" else ()
    settings: list[float | None] = [None, *args.thresholds]
    label = {t: ("full depth" if t is None else f"exit at {t:g}") for t in settings}

    val: dict[float | None, list[dict]] = defaultdict(list)
    for n, ckpt in enumerate(args.ckpts):
        for t in settings:
            r = evaluate(
                build(Path(ckpt), exit_threshold=t),
                Path(args.val),
                limit=args.limit,
                task=args.task,
                batch_size=args.batch_size,
            )
            val[t].append(r)
            print(
                f"checkpoint {n} val {label[t]:14s} acc {r['accuracy']:.2f} layers/token {r['layers/all']:.3f}",
                flush=True,
            )
    chosen = choose_on_validation(val, args.thresholds, "layers/all", args.max_drop)
    print(f"chosen on validation: {label[chosen] if chosen is not None else 'none within the limit'}", flush=True)

    test: dict[float | None, list[dict]] = defaultdict(list)
    for n, ckpt in enumerate(args.ckpts):
        models = {t: build(Path(ckpt), exit_threshold=t) for t in dict.fromkeys([None, chosen])}
        evaluate(models[None], Path(args.val), limit=args.limit, task=args.task, batch_size=args.batch_size)  # warm-up
        for t in list(models) if n % 2 == 0 else list(reversed(models)):
            r = evaluate(models[t], Path(args.test), limit=args.limit, task=args.task, batch_size=args.batch_size)
            r["tokens_s"] = r["tokens"] / r["wall_s"]
            r["decode_tokens_s"] = r["tokens"] / r["decode_s"]
            test[t].append(r)
            print(f"checkpoint {n} test {label[t]:14s} acc {r['accuracy']:.2f} layers/token {r['layers/all']:.3f} "
                  f"{r['tokens_s']:.1f} tokens/s, {r['decode_tokens_s']:.1f} per second of decoding steps",
                  flush=True)  # fmt: skip

    def mw(rows: list[dict], key: str, worst=min) -> str:
        values = [r[key] for r in rows if r.get(key) is not None]
        return f"{statistics.median(values):7.2f} / {worst(values):6.2f}" if values else "-"

    print(f"\nearly exit, {len(args.ckpts)} checkpoints (median / worst); threshold chosen on {args.val}")
    metric = "accuracy %" if args.task == "vqa" else "BLEU-4 x100"
    extra = " ".join(f"{'layers ' + k:>13s}" for k in kinds) if kinds else f"{'CIDEr-D':>16s}"
    print(f"{'split':5s} {'setting':14s} {metric:>16s} {'layers/token':>16s} " + extra)
    for split, table in (("val", val), ("test", test)):
        for t, rows in table.items():
            print(f"{split:5s} {label[t]:14s} {mw(rows, 'accuracy')} {mw(rows, 'layers/all', max)} "
                  + (" ".join(f"{statistics.median(r.get(f'layers/{k}', 0.0) for r in rows):13.3f}" for k in kinds)
                     if kinds else mw(rows, "cider_d")))  # fmt: skip
    if chosen is not None:
        speed = [a["tokens_s"] / b["tokens_s"] for a, b in zip(test[chosen], test[None], strict=True)]
        steps = [a["decode_tokens_s"] / b["decode_tokens_s"] for a, b in zip(test[chosen], test[None], strict=True)]
        drop = [b["accuracy"] - a["accuracy"] for a, b in zip(test[chosen], test[None], strict=True)]
        print(f"\ntest, {label[chosen]} against the full depth: generated tokens/s x{statistics.median(speed):.3f} "
              f"(worst x{min(speed):.3f}) over the whole pass (encoders included), x{statistics.median(steps):.3f} "
              f"(worst x{min(steps):.3f}) over the decoding steps; accuracy change median "
              f"{-statistics.median(drop):+.2f} points, worst {-max(drop):+.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
