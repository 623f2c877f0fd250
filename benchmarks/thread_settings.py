"""Batch inference beside a running fit, under thread settings: does throughput collapse when the CPU is shared?

    python benchmarks/thread_settings.py --ckpt runs/easyvqa/latest/checkpoints/best.ckpt [--limit 100]

For each setting, `benchmarks/predict_throughput.py` runs in a fresh process (records/s at batch 64 and 1), once on
an idle machine and once while a fit of `--config` runs beside it; the fit's own training steps per second are
clocked alone and during each predict run. Settings:

* before: the library's OpenMP wait policy (threads spin), predict and fit at 2 threads each (the old default);
* passive, --threads 1 / 2: OMP_WAIT_POLICY=PASSIVE for both processes, predict at a fixed thread count;
* passive, omnifuse's plan: passive for both, the thread plan of app/threads.py (the default until the policy
  became load-aware);
* auto (default): what omnifuse does with no option given: each process looks at its CPUs when it starts (the fit
  finds them idle and keeps the library's spin-then-sleep policy; the predict, started beside the running fit, finds
  them busy and sleeps passively), and the thread plan.

Prints one table with the ratio of each to the best predict setting beside the fit. Figures, not pass/fail.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L

HERE = Path(__file__).resolve().parent

SETTINGS = {  # name -> (OMP_WAIT_POLICY, None: the library default, "auto": omnifuse decides; predict, fit --threads)
    "before (spin, 2 threads)": (None, 2, 2),
    "passive, --threads 1": ("PASSIVE", 1, None),
    "passive, --threads 2": ("PASSIVE", 2, None),
    "passive, omnifuse's plan": ("PASSIVE", None, None),
    "auto (the default)": ("auto", None, None),
}


class StepClock(L.Callback):
    """Appends `<monotonic time> <global step>` after every training step (read by the parent to clock the fit)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        with open(self.path, "a") as fh:
            fh.write(f"{time.monotonic()} {trainer.global_step}\n")


def _env(policy: str | None) -> dict[str, str]:
    unset = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "OMNIFUSE_THREADS", "OMNIFUSE_WAIT_POLICY", "OMNIFUSE_WAIT_POLICY_REASON")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    if policy == "auto":
        pass  # each process decides when it starts (app/threads.py)
    elif policy is not None:
        env["OMP_WAIT_POLICY"] = policy
    else:
        env["OMNIFUSE_WAIT_POLICY"] = "library"  # omnifuse leaves OMP_WAIT_POLICY unset: libgomp's own default
    return env


def _steps_per_second(clock: Path, start: float, end: float) -> float:
    rows = [tuple(map(float, line.split())) for line in clock.read_text().splitlines() if line.strip()]
    inside = [(t, s) for t, s in rows if start <= t <= end]
    if len(inside) < 2:
        return float("nan")
    return (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])


def _predict(args, policy: str | None, predict_threads: int | None) -> dict[int, float]:
    cmd = [sys.executable, str(HERE / "predict_throughput.py"), "--ckpt", args.ckpt, "--limit", str(args.limit)]
    if predict_threads is not None:
        cmd += ["--threads", str(predict_threads)]
    out = subprocess.run(cmd, env=_env(policy), capture_output=True, text=True, check=True).stdout
    return {int(m.group(1)): float(m.group(2)) for m in re.finditer(r"^\s*(\d+)\s+([\d.]+)\s", out, re.M)}


def _background_fit(args, policy: str | None, fit_threads: int | None, clock: Path, root: Path) -> subprocess.Popen:
    cmd = [sys.executable, __file__, "--background-fit", str(clock), "--config", args.config, "--root", str(root)]
    if fit_threads is not None:
        cmd += ["--fit-threads", str(fit_threads)]
    log = (root.parent / f"{root.name}.log").open("w")  # the fit's output, for when it fails
    return subprocess.Popen(cmd, env=_env(policy), stdout=log, stderr=subprocess.STDOUT)


def _run_fit(clock: str, config: str, root: str, fit_threads: int | None) -> None:
    from omnifuse.app import threads

    threads.prepare_process()  # what the omnifuse command does first (a no-op for the "before" setting)
    from omnifuse.app.cli import cli_main

    extra = ["--threads", str(fit_threads)] if fit_threads is not None else []
    cli_main(
        [
            "fit", "--config", config, "--run_dir", root, "--trainer.max_epochs", "1000",
            "--trainer.callbacks+=__main__.StepClock",
            f"--trainer.callbacks.path={clock}", *extra,
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", help="checkpoint to predict with")
    parser.add_argument("--config", default="configs/easyvqa.yaml", help="the recipe the background fit trains")
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds the fit runs before it is clocked")
    parser.add_argument("--background-fit", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--fit-threads", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.background_fit:
        return _run_fit(args.background_fit, args.config, args.root, args.fit_threads)
    if not args.ckpt:
        parser.error("--ckpt is required")

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (policy, predict_threads, fit_threads) in SETTINGS.items():
            idle = _predict(args, policy, predict_threads)
            clock = Path(tmp) / f"clock{len(rows)}.txt"
            clock.touch()
            fit = _background_fit(args, policy, fit_threads, clock, Path(tmp) / f"fit{len(rows)}")
            try:
                time.sleep(args.warmup)  # data preparation, model build, first steps
                if fit.poll() is not None:
                    raise SystemExit(f"the background fit stopped (exit {fit.returncode}): {Path(tmp) / f'fit{len(rows)}.log'}")
                alone_start = time.monotonic()
                time.sleep(20.0)
                fit_alone = _steps_per_second(clock, alone_start, time.monotonic())
                start = time.monotonic()
                beside = _predict(args, policy, predict_threads)
                fit_beside = _steps_per_second(clock, start, time.monotonic())
            finally:
                fit.terminate()
                fit.wait(timeout=60)
            rows.append((name, idle, beside, fit_alone, fit_beside))
            print(f"{name}: idle {idle}, beside a fit {beside}, fit {fit_alone:.2f} -> {fit_beside:.2f} steps/s",
                  flush=True)

    best = {bs: max(r[2].get(bs, 0.0) for r in rows) for bs in (64, 1)}
    print(f"\n{args.limit} records, predict records/s; 'x best' compares with the best setting beside the fit")
    print(f"{'setting':<28} {'idle b64':>9} {'idle b1':>8} {'fit b64':>8} {'x best':>7} {'fit b1':>7} {'x best':>7} "
          f"{'fit steps/s alone -> beside':>28}")
    for name, idle, beside, fit_alone, fit_beside in rows:
        print(
            f"{name:<28} {idle.get(64, 0):>9.1f} {idle.get(1, 0):>8.1f} {beside.get(64, 0):>8.1f} "
            f"{beside.get(64, 0) / best[64]:>7.2f} {beside.get(1, 0):>7.1f} {beside.get(1, 0) / best[1]:>7.2f} "
            f"{fit_alone:>13.2f} -> {fit_beside:.2f} ({fit_alone / fit_beside:.1f}x slower)"
        )


if __name__ == "__main__":
    main()
