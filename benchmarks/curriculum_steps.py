"""Steps to a validation target with and without a curriculum (``data.curriculum``), over seeds.

    python benchmarks/curriculum_steps.py --seeds 0 1 [--config configs/spoken_vqa.yaml] [--target 0.95]
        [--val-every 250] [--reference-steps 500] [--start 0.25 --epochs 2 --schedule sqrt] [--out runs/curriculum]

1. A reference model: the recipe trained for ``--reference-steps`` steps with its own seed (``--reference-seed``, never
   one of the measured seeds), then ``omnifuse predict --model.init_args.generation.with_loss true`` over the training
   manifest writes each record's teacher-forced loss: that loss is the record's difficulty.
2. Per seed, two arms of the same recipe: ``plain`` and ``curriculum`` (``data.curriculum: {score: file:<the
   reference's predictions.jsonl>, start, epochs, schedule}``, easiest records first). Both validate every
   ``--val-every`` steps and stop at the first validation whose ``val/vqa_accuracy`` reaches ``--target`` (Lightning's
   ``EarlyStopping(stopping_threshold=...)``); the learning-rate schedule is the recipe's (it follows
   ``trainer.max_steps``), so the arms differ only in the order of the data. No test run: the figure is the step.

Prints a table (seed, arm, first step at or above the target, validation accuracy at each check) and, per arm, the
median and the worst step. A measured table, never pass/fail. Steps, not wall time, are the figure, so other jobs may
share the machine.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recipe_seeds import omnifuse_command, seed_config  # noqa: E402

ARMS = ("plain", "curriculum")


def run_config(config: Path, run_dir: Path, *, val_every: int, target: float | None, curriculum: dict | None) -> Path:
    """The recipe copied into ``run_dir`` with validation every ``val_every`` steps, no test split, a stop at
    ``target`` (None: no stop) and ``curriculum`` (None: off)."""
    path = seed_config(config, run_dir)
    cfg = yaml.safe_load(path.read_text())
    trainer = cfg["trainer"]
    trainer["val_check_interval"] = val_every
    trainer["check_val_every_n_epoch"] = None
    if target is not None:
        trainer.setdefault("callbacks", []).append(
            {
                "class_path": "lightning.pytorch.callbacks.EarlyStopping",
                "init_args": {
                    "monitor": "val/vqa_accuracy",
                    "mode": "max",
                    "stopping_threshold": target,
                    "patience": 1_000_000,  # stop at the target only, never for a plateau
                    "check_on_train_epoch_end": False,
                },
            }
        )
    data = cfg.setdefault("data", {})
    data["test_manifest"] = None
    if curriculum is not None:
        data["curriculum"] = curriculum
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def fit(
    command: str, config: Path, run_dir: Path, seed: int, extra: list[str], resume: bool = False
) -> tuple[int, float]:
    """``omnifuse fit`` of ``config`` in ``run_dir``; ``resume``: from the newest run's last.ckpt there, if any (a run
    cut short goes on from its last checkpoint instead of starting again)."""
    cmd = [command, "fit", "--config", str(config), "--seed_everything", str(seed), *extra]
    resume = resume and (run_dir / "latest" / "checkpoints" / "last.ckpt").is_file()
    if resume:
        cmd += ["--ckpt_path", "last"]
    print(" ".join(cmd), flush=True)
    start = time.perf_counter()
    with (run_dir / "fit.log").open("a" if resume else "w") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
    return rc, time.perf_counter() - start


def validation_curve(run_dir: Path) -> list[tuple[int, float]]:
    """(step, val/vqa_accuracy) of every validation the run logged, in step order, over all its metrics files (a
    resumed run logs into a new one; a step logged twice keeps its newest value)."""
    by_step: dict[int, float] = {}
    for path in sorted(run_dir.rglob("metrics.csv"), key=lambda p: p.stat().st_mtime):
        with path.open(newline="") as f:
            by_step.update(
                (int(r["step"]), float(r["val/vqa_accuracy"])) for r in csv.DictReader(f) if r.get("val/vqa_accuracy")
            )
    return sorted(by_step.items())


def first_step(curve: list[tuple[int, float]], target: float) -> int | None:
    """The first logged step whose validation accuracy is >= ``target`` (None: never)."""
    return next((step for step, acc in curve if acc >= target), None)


def _has_losses(path: Path) -> bool:
    """Whether every row of a predictions file carries its teacher-forced ``loss`` (the curriculum's score)."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return bool(rows) and all(isinstance(r.get("loss"), (int, float)) for r in rows)


def reference_losses(command: str, config: Path, out: Path, seed: int, steps: int, val_every: int) -> Path:
    """Train the reference model and write each training record's loss; returns the predictions file."""
    run_dir = out.resolve() / "reference"
    losses = run_dir / "losses" / "predictions.jsonl"
    if losses.is_file() and _has_losses(losses):
        print(f"reference: reusing {losses}", flush=True)
        return losses
    run_dir.mkdir(parents=True, exist_ok=True)
    recipe = run_config(config, run_dir, val_every=min(val_every, steps), target=None, curriculum=None)
    rc, wall = fit(command, recipe, run_dir, seed, ["--trainer.max_steps", str(steps)])
    if rc:
        raise SystemExit(f"reference fit failed (exit {rc}): {run_dir / 'fit.log'}")
    best = sorted(run_dir.rglob("best.ckpt"), key=lambda p: p.stat().st_mtime)[-1]
    train_manifest = yaml.safe_load(recipe.read_text())["data"]["train_manifest"]
    cmd = [
        command, "predict", "--config", str(recipe), "--ckpt_path", str(best),
        "--data.predict_manifest", train_manifest, "--model.init_args.generation.with_loss", "true",
        "--output", str(losses.parent),
    ]  # fmt: skip
    print(" ".join(cmd), flush=True)
    with (run_dir / "predict.log").open("w") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
    if rc or not losses.is_file() or not _has_losses(losses):
        raise SystemExit(f"reference predict failed (exit {rc}, or rows without a loss): {run_dir / 'predict.log'}")
    print(f"reference: {steps} steps in {wall / 60:.1f} min, losses in {losses}", flush=True)
    return losses


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--config", default="configs/spoken_vqa.yaml")
    parser.add_argument("--out", default="runs/curriculum")
    parser.add_argument("--target", type=float, default=0.95, help="validation vqa_accuracy to reach")
    parser.add_argument("--val-every", type=int, default=250, help="validate every N training steps")
    parser.add_argument("--reference-steps", type=int, default=500)
    parser.add_argument("--reference-seed", type=int, default=100)
    parser.add_argument("--start", type=float, default=0.25, help="curriculum: fraction of records in the first epoch")
    parser.add_argument("--epochs", type=int, default=2, help="curriculum: epochs until every record is in")
    parser.add_argument("--schedule", default="sqrt", choices=("linear", "sqrt"))
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument(
        "--resume", action="store_true", help="a run folder with a last.ckpt goes on from it (a run that was cut short)"
    )
    parser.add_argument("--omnifuse", default=None, help="the omnifuse command (default: next to this Python)")
    parser.add_argument("extra", nargs="*", help="after --: passed to every measured omnifuse fit")
    args = parser.parse_args(argv)
    if args.reference_seed in args.seeds:
        parser.error("--reference-seed must not be one of the measured seeds")

    command = omnifuse_command(args.omnifuse)
    config, out = Path(args.config), Path(args.out)
    curriculum = None
    if "curriculum" in args.arms:
        losses = reference_losses(command, config, out, args.reference_seed, args.reference_steps, args.val_every)
        curriculum = {"score": f"file:{losses}", "start": args.start, "epochs": args.epochs, "schedule": args.schedule}

    rows = []
    for seed in args.seeds:  # arms interleaved per seed: a run cut short leaves pairs, not one arm only
        for arm in args.arms:
            run_dir = out.resolve() / arm / f"seed_{seed}"
            run_dir.mkdir(parents=True, exist_ok=True)
            recipe = run_config(
                config, run_dir, val_every=args.val_every, target=args.target,
                curriculum=curriculum if arm == "curriculum" else None,
            )  # fmt: skip
            rc, wall = fit(command, recipe, run_dir, seed, args.extra, resume=args.resume)
            curve = validation_curve(run_dir)
            rows.append({"seed": seed, "arm": arm, "rc": rc, "wall": wall, "curve": curve,
                         "step": first_step(curve, args.target)})  # fmt: skip
            print(f"seed {seed} {arm}: exit {rc}, {wall / 60:.1f} min, reached at {rows[-1]['step']}", flush=True)

    print(f"\n{'seed':>4} {'arm':>10} {'step >= ' + format(100 * args.target, 'g') + ' %':>14}  validation accuracy")
    for r in rows:
        curve = " ".join(f"{100 * acc:.1f}@{step}" for step, acc in r["curve"])
        step = r["step"] if r["step"] is not None else "never"
        print(f"{r['seed']:>4} {r['arm']:>10} {step:>14}  {curve}" + ("" if r["rc"] == 0 else f"   (exit {r['rc']})"))
    for arm in args.arms:
        steps = [r["step"] for r in rows if r["arm"] == arm]
        reached = [s for s in steps if s is not None]
        if reached:
            worst = "never" if len(reached) < len(steps) else max(reached)
            print(
                f"{arm}: median {statistics.median(reached):g} steps over {len(reached)} of {len(steps)}, worst {worst}"
            )
    return 0 if all(r["rc"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
