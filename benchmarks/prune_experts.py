"""Expert pruning on the main recipe: accuracy, size and speed before and after, with and without a recovery fine-tune.

    python benchmarks/prune_experts.py --ckpts runs/recipe_2500/seed_{0,1,2}/version_0/checkpoints/best.ckpt \\
        [--fractions 0.25 0.5] [--channel-fractions 0.25 0.5] [--recovery-steps 250]

For each checkpoint (one per seed) and each fraction of experts dropped (``--drop-experts``) or of every expert's
hidden channels removed (``--expert-channels``): ``omnifuse prune`` on the validation split (calibration), the
test accuracy of the pruned model, then a recovery fine-tune (``omnifuse fit`` of the main recipe with ``init_from``
the pruned folder and the new expert count, ``--recovery-steps`` steps) and its test accuracy. Also parameters, size
on disk and records/s of batch inference (batch 64, the test split's first ``--speed-records``). Prints one table
with the median and worst over the checkpoints. A measured figure, never pass/fail.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path


def _omnifuse(*args: str, log: Path) -> None:
    command = [sys.executable, "-m", "omnifuse.app.launch", *args]
    with log.open("w") as fh:
        done = subprocess.run(command, stdout=fh, stderr=subprocess.STDOUT)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed; see {log}")


def evaluate(model_path: Path, test: Path, speed_records: int) -> dict:
    """Test accuracy (the batch job's predictions, scored like ``omnifuse score``) and batch-64 records/s."""
    import tempfile

    from omnifuse.app.predictor import Predictor
    from omnifuse.app.score import score_records
    from omnifuse.data.records import read_manifest
    from omnifuse.tasks.config import GenerationConfig

    # The same decoding for every model (an export folder carries no generation settings; the recipe's are these).
    predictor = Predictor.from_pretrained(model_path, batch_size=64, generation=GenerationConfig(max_new_tokens=12))
    records = [r for r in read_manifest(test) if not isinstance(r, Exception)]
    out = predictor.predict(test)
    predictions = {row["id"]: row["prediction"] for row in out["predictions"]}
    accuracy = score_records("vqa", [r for r in records if r.id in predictions], predictions)["vqa_accuracy"]
    subset = [{"id": r.id, "task": r.task, "image": r.image.name, "text": r.text} for r in records[:speed_records]]
    root = records[0].image.parent
    predictor.predict(subset[:128], root=root)  # warm-up
    start = time.perf_counter()
    predictor.predict(subset, root=root)
    speed = len(subset) / (time.perf_counter() - start)
    model = predictor.model
    with tempfile.TemporaryDirectory() as tmp:  # size on disk as an export (a .ckpt also holds optimizer state)
        mb = (Path(model.save_pretrained(Path(tmp) / "m")) / "model.safetensors").stat().st_size / 2**20
    return {
        "accuracy": 100 * accuracy,
        "errors": len(out["errors"]),
        "params": sum(p.numel() for p in model.parameters()),
        "mb": mb,
        "rec_s": speed,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpts", nargs="+", required=True, help="one main-recipe checkpoint per seed")
    parser.add_argument("--config", default="configs/easyvqa.yaml", help="the recipe the checkpoints came from")
    parser.add_argument("--fractions", type=float, nargs="*", default=[0.25, 0.5], help="of routed experts dropped")
    parser.add_argument(
        "--channel-fractions", type=float, nargs="*", default=[], help="of every expert's hidden channels removed"
    )
    parser.add_argument("--recovery-steps", type=int, default=250, help="0: no recovery fine-tune")
    parser.add_argument("--recovery-lr", type=float, default=3e-4)
    parser.add_argument("--calib", default="datasets/easyvqa/vqa_val.jsonl")
    parser.add_argument("--test", default="datasets/easyvqa/vqa_test.jsonl")
    parser.add_argument("--speed-records", type=int, default=1024)
    parser.add_argument("--out", default="runs/prune_experts")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[dict]] = {}
    for n, ckpt in enumerate(args.ckpts):
        ckpt = Path(ckpt)
        base = evaluate(ckpt, Path(args.test), args.speed_records)
        rows.setdefault("original", []).append(base)
        print(f"checkpoint {n} ({ckpt}): original {base}", flush=True)
        cases = [("drop", f, ["--drop-experts", str(f)]) for f in args.fractions]
        cases += [("channels", f, ["--expert-channels", str(f)]) for f in args.channel_fractions]
        for kind, fraction, flags in cases:
            name = f"{kind} {fraction:g}"
            folder = out / f"ckpt{n}_{kind}{fraction:g}"
            _omnifuse(
                "prune", str(ckpt), "--calib", args.calib, *flags, "--out", str(folder),
                log=out / f"ckpt{n}_{kind}{fraction:g}.prune.log",
            )  # fmt: skip
            pruned = evaluate(folder, Path(args.test), args.speed_records)
            rows.setdefault(name, []).append(pruned)
            print(f"checkpoint {n}: {name} {pruned}", flush=True)
            if args.recovery_steps:
                run = out / f"ckpt{n}_{kind}{fraction:g}_recovery"
                decoder = json.loads((folder / "config.json").read_text())["decoder"]
                shape = [
                    f"--model.init_args.decoder.{k}={decoder[k]}"
                    for k in ("n_routed_experts", "d_expert", "d_shared")
                    if decoder.get(k) is not None
                ]  # the pruned shape, so init_from loads every tensor
                _omnifuse(
                    "fit", "--config", args.config, "--seed_everything", str(n),
                    "--model.init_args.init_from", str(folder), *shape,
                    "--model.init_args.optimizer.lr", str(args.recovery_lr),
                    "--model.init_args.optimizer.warmup_steps", "10",
                    "--trainer.max_steps", str(args.recovery_steps),
                    "--trainer.val_check_interval", str(args.recovery_steps),
                    "--trainer.default_root_dir", str(run), "--data.test_manifest", "null",
                    log=out / f"ckpt{n}_{kind}{fraction:g}_recovery.log",
                )  # fmt: skip
                best = next(run.glob("version_*/checkpoints/best.ckpt"))
                recovered = evaluate(best, Path(args.test), args.speed_records)
                rows.setdefault(f"{name} + {args.recovery_steps} steps", []).append(recovered)
                print(f"checkpoint {n}: {name} + recovery {recovered}", flush=True)

    print(f"\nexpert pruning, {len(args.ckpts)} checkpoints (median / worst over them); test split {args.test}")
    print(f"{'model':28s} {'test acc %':>18s} {'params':>10s} {'MB':>6s} {'records/s b64':>14s}")
    for name, results in rows.items():
        accs = [r["accuracy"] for r in results]
        print(
            f"{name:28s} {statistics.median(accs):8.2f} / {min(accs):6.2f}  {statistics.median(r['params'] for r in results):10,.0f} "
            f"{statistics.median(r['mb'] for r in results):6.2f} {statistics.median(r['rec_s'] for r in results):14.1f}"
        )


if __name__ == "__main__":
    main()
