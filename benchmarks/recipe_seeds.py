"""Run a recipe over several seeds and print what each run gave: steps, wall time, test accuracy per answer type, and
the step at which validation yes/no accuracy first passed a threshold (99 % by default).

    python benchmarks/recipe_seeds.py --seeds 0 1 2 3 [--config configs/easyvqa.yaml] [--out runs/recipe_seeds]
        [-- extra omnifuse fit arguments, e.g. --trainer.max_steps 10]

Each seed runs ``omnifuse fit --config <config> --seed_everything N`` (fit, then test of the best checkpoint) in a
folder of its own, ``<out>/seed_N``: the config is copied there with every path under the recipe's
``trainer.default_root_dir`` (logger folders, checkpoint folders) moved under that folder, so runs never share files
and the recipe's own folder is left alone. Figures are read back from the run's CSV logger (``metrics.csv``, found
wherever the logger put it) and from the fit's final ``omnifuse test`` line. A measured table, never pass/fail.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

ANSWER_TYPES = ("yes_no", "color", "shape")


def relocate(value, old: str, new: str):
    """``value`` (parsed YAML) with every string path equal to ``old`` or under ``old/`` moved to ``new``."""
    if isinstance(value, dict):
        return {k: relocate(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [relocate(v, old, new) for v in value]
    if isinstance(value, str) and (value == old or value.startswith(old.rstrip("/") + "/")):
        return new + value[len(old.rstrip("/")) :]
    return value


def seed_config(config_path: Path, run_dir: Path) -> Path:
    """Copy of the recipe whose output paths all live in ``run_dir``."""
    config = yaml.safe_load(config_path.read_text())
    trainer = config.setdefault("trainer", {})
    root = trainer.get("default_root_dir")
    if root:
        config = relocate(config, str(root), str(run_dir))
    config["trainer"]["default_root_dir"] = str(run_dir)
    path = run_dir / "recipe.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    """Rows of the newest ``metrics.csv`` under ``run_dir`` (the CSV logger's file), or [] without one."""
    files = sorted(run_dir.rglob("metrics.csv"), key=lambda p: p.stat().st_mtime)
    if not files:
        return []
    with files[-1].open(newline="") as f:
        return list(csv.DictReader(f))


def summarize(rows: list[dict[str, str]], threshold: float) -> dict[str, float | int | None]:
    """Steps trained, test accuracy (overall and per answer type), and the first step whose validation yes/no
    accuracy was >= ``threshold`` (None: never)."""
    steps = [int(r["step"]) for r in rows if r.get("step") and any(k.startswith("train/") and r[k] for k in r)]
    out: dict[str, float | int | None] = {"steps": (max(steps) + 1) if steps else None, "bind_step": None}
    for r in rows:
        yes_no = r.get("val/vqa_accuracy/yes_no")
        if yes_no and out["bind_step"] is None and float(yes_no) >= threshold:
            out["bind_step"] = int(r["step"])
        if r.get("test/vqa_accuracy"):
            out["test"] = float(r["test/vqa_accuracy"])
            for kind in ANSWER_TYPES:
                if r.get(f"test/vqa_accuracy/{kind}"):
                    out[kind] = float(r[f"test/vqa_accuracy/{kind}"])
    return out


def parse_test_line(text: str) -> dict[str, float]:
    """Fallback: ``omnifuse test (...): vqa_accuracy=99.12%, vqa_accuracy/yes_no=...`` -> fractions (a percentage
    divided by 100; a plain value such as the caption task's ``bleu4=0.9232, cider_d=6.3816`` kept as it is)."""
    found = {}
    for line in text.splitlines():
        if line.startswith("omnifuse test"):
            for key, value, percent in re.findall(r"([\w/]+)=([\d.]+)(%?)", line):
                name = "test" if key == "vqa_accuracy" else key.removeprefix("vqa_accuracy/")
                found[name] = float(value) / 100 if percent else float(value)
    return found


def omnifuse_command(given: str | None = None) -> str:
    """The omnifuse command: ``given``, else the one installed next to this Python, else ``omnifuse`` on PATH."""
    command = given or str(Path(sys.executable).with_name("omnifuse"))
    return command if Path(command).exists() else "omnifuse"


def run_seed(
    command: str, config_path: Path, seed: int, out: Path, extra: list[str], threshold: float = 0.99
) -> dict:
    """``omnifuse fit`` (fit + test of the best checkpoint) of the recipe with one seed in ``out/seed_N``; returns
    seed, wall seconds, exit code, steps, test accuracy (overall and per answer type) and the binding step."""
    run_dir = out.resolve() / f"seed_{seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    config = seed_config(config_path, run_dir)
    cmd = [command, "fit", "--config", str(config), "--seed_everything", str(seed), *extra]
    print(f"seed {seed}: {' '.join(cmd)}", flush=True)
    start = time.perf_counter()
    with (run_dir / "fit.log").open("w") as log:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=os.environ.copy())
        log.write(proc.stdout)
    wall = time.perf_counter() - start
    row = {"seed": seed, "wall": wall, "rc": proc.returncode}
    row.update(parse_test_line(proc.stdout))
    row.update({k: v for k, v in summarize(read_metrics(run_dir), threshold).items() if v is not None})
    row.setdefault("bind_step", None)
    print(f"seed {seed}: exit {proc.returncode}, {wall / 60:.1f} min, log {run_dir / 'fit.log'}", flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--config", default="configs/easyvqa.yaml")
    parser.add_argument("--out", default="runs/recipe_seeds", help="one folder per seed is made under it")
    parser.add_argument("--threshold", type=float, default=0.99, help="validation yes/no accuracy to report")
    parser.add_argument("--omnifuse", default=None, help="the omnifuse command (default: next to this Python)")
    parser.add_argument("extra", nargs="*", help="after --: passed to every omnifuse fit")
    args = parser.parse_args(argv)

    command = omnifuse_command(args.omnifuse)
    results = [run_seed(command, Path(args.config), seed, Path(args.out), args.extra, args.threshold) for seed in args.seeds]

    def pct(v):
        return f"{100 * v:7.2f}" if isinstance(v, float) else f"{'-':>7}"

    header = f"{'seed':>4} {'steps':>6} {'wall':>8} {'test %':>7} " + " ".join(f"{k:>7}" for k in ANSWER_TYPES)
    header += f" {'val yes/no >= ' + format(100 * args.threshold, 'g') + ' % at step':>28}"
    print("\n" + header)
    for r in results:
        wall = f"{int(r['wall'] // 60)}:{int(r['wall'] % 60):02d}"
        bind = r["bind_step"] if r["bind_step"] is not None else "never"
        print(
            f"{r['seed']:>4} {r.get('steps', '-'):>6} {wall:>8} {pct(r.get('test'))} "
            + " ".join(pct(r.get(k)) for k in ANSWER_TYPES)
            + f" {bind:>28}"
            + ("" if r["rc"] == 0 else f"   (exit {r['rc']})")
        )
    tests = [r["test"] for r in results if "test" in r]
    if tests:
        walls = [r["wall"] for r in results]
        print(
            f"median test {100 * statistics.median(tests):.2f} %, worst {100 * min(tests):.2f} %; "
            f"median wall {statistics.median(walls) / 60:.1f} min, longest {max(walls) / 60:.1f} min"
        )
    return 0 if all(r["rc"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
