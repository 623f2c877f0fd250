"""``omnifuse prepare <dataset> ...``: build dataset manifests. ``main`` takes the arguments after ``prepare``."""

from __future__ import annotations

import argparse
import logging
import sys
import time


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="omnifuse prepare", description="Build dataset manifests (JSONL).")
    sub = parser.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    ev = sub.add_parser(
        "easyvqa",
        help="easy-VQA from the easy-vqa package: vqa, spoken, caption and json parts",
        description="Build easy-VQA manifests ({part}_{train,val,test}.jsonl), images, audio and scene schema.",
    )
    ev.add_argument("--out", required=True, help="output folder (e.g. datasets/easyvqa)")
    ev.add_argument("--parts", default="vqa,spoken,caption,json", help="comma-separated parts (default: all)")
    ev.add_argument("--seed", type=int, default=0, help="seed of the validation split and spoken styles")
    ev.add_argument("--val-fraction", type=float, default=0.1, help="share of train images held out for validation")
    ev.add_argument("--limit-images", type=int, default=None, help="use only the first N images of each split")
    ev.add_argument("--workers", type=int, default=2, help="parallel espeak-ng processes (spoken part)")
    ev.add_argument("--force", action="store_true", help="rebuild parts that are already up to date")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command; prints the record count of every manifest and the elapsed time. Returns the exit status."""
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.dataset == "easyvqa":
        from omnifuse.data.easyvqa import manifest_counts, prepare_easyvqa

        start = time.perf_counter()
        try:
            paths = prepare_easyvqa(
                args.out,
                parts=args.parts,
                seed=args.seed,
                val_fraction=args.val_fraction,
                limit_images=args.limit_images,
                workers=args.workers,
                force=args.force,
            )
        except ValueError as e:
            print(f"omnifuse prepare: error: {e}", file=sys.stderr)
            return 2
        elapsed = time.perf_counter() - start
        for name, count in manifest_counts(paths).items():
            print(f"{name:16s} {count:8,d}  {paths[name]}")
        print(f"easy-VQA ready in {args.out} ({elapsed:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
