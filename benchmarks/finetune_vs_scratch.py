"""Fine-tuning from a checkpoint vs training from scratch: the same recipe run twice, validation curves side by side.

    python benchmarks/finetune_vs_scratch.py --config configs/finetune_vqa_to_caption.yaml \\
        [--init-from runs/easyvqa/latest/checkpoints/best.ckpt] [--out runs/finetune_vs_scratch] [--threads N]

Runs ``omnifuse fit`` on the recipe twice with identical data, seed, optimizer and budget: once as written (or with
``--init-from``), once with ``model.init_from: null``. Both runs log to ``<out>/<recipe>/{finetune,scratch}``. Prints
the task's validation metric at every validation of both runs, and how many steps each trained before it reached the
scratch run's final value (the target; ``--target`` sets another). When the recipe has a test split, ``omnifuse fit``
tests each run's best checkpoint on it, and those test metrics are printed side by side too. Figures, not pass/fail.

``--scratch-run DIR`` reads the scratch half from a finished ``omnifuse fit`` run instead of training it again (e.g.
``runs/spoken_vqa`` for ``configs/finetune_vqa_to_spoken.yaml``, whose other settings are the spoken recipe's). Every
setting the scratch half would use, defaults included, must equal that run's saved ``config.yaml`` (run folders,
loggers and callbacks aside), and its manifests must not have been rebuilt since it started; otherwise the benchmark
stops and says why. A scratch run that was killed and resumed with ``--ckpt_path last`` is read across its logs.

``--seeds 0 1 2`` repeats the comparison once per seed (``seed_everything`` and ``data.seed``: initialisation of the
new weights, dropout, training order, and which records ``limit_*`` keeps), logging to
``<out>/<recipe>/seed_N/{finetune,scratch}``, and ends with one line per seed (steps trained to the target, test metric
of both halves), how many seeds fine-tuning reached the target sooner, tied or later, and the median ratio of steps.
One seed's early curve is noisy enough to flip which half gets there first.

``--resume`` reads a half that ``<out>`` already holds finished, with the same settings on unchanged data and the same
start checkpoint (not replaced since), instead of training it again (the checks of ``--scratch-run``); a benchmark
killed part-way continues where it stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import importlib
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

from omnifuse.app import threads
from omnifuse.app.cli import cli_main


def _as_list(value: object) -> list:
    """A config entry that may be one item or a list of them (``logger``, ``callbacks``)."""
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _retarget(config: dict, root: Path) -> None:
    """Point the recipe's run folder, loggers and checkpoints at ``root``: ``run_dir`` makes the CLI write into
    ``root`` itself (not a new ``root/version_N``); folders a config sets explicitly are moved there too."""
    config["run_dir"] = str(root)
    trainer = config["trainer"]
    trainer["default_root_dir"] = str(root)
    for logger in _as_list(trainer.get("logger")):
        if isinstance(logger, dict):  # not `logger: true/false` (the default logger writes under default_root_dir)
            logger.setdefault("init_args", {})["save_dir"] = str(root)
    for callback in _as_list(trainer.get("callbacks")):
        if isinstance(callback, dict) and "dirpath" in (callback.get("init_args") or {}):  # ModelCheckpoint & co
            callback["init_args"]["dirpath"] = str(root / "checkpoints")


def _curve(root: Path, metric: str, log: Path | None = None) -> list[tuple[int, float]]:
    rows = list(csv.DictReader(((log or _newest_log(root)) / "metrics.csv").open()))
    return [(int(r["step"]), float(r[metric])) for r in rows if r.get(metric)]


def _logs(root: Path) -> list[Path]:
    """A run's CSV log folders (``csv/version_N``), newest first."""
    logs = [p.parent for p in root.glob("csv/version_*/metrics.csv")]
    return sorted(logs, key=lambda p: int(p.name.split("_")[1]), reverse=True)


def _newest_log(root: Path) -> Path:
    logs = _logs(root)
    if not logs:
        raise SystemExit(f"{root}: no csv/version_*/metrics.csv (a run logged by the recipe's CSVLogger)")
    return logs[0]


# Settings that say where a run writes, not what it trains; ckpt_path must be null in a reused run (a fresh fit).
_NOT_COMPARED = {"trainer.default_root_dir", "trainer.logger", "trainer.callbacks", "ckpt_path", "weights_only", "run_dir"}


def _resolved(config: dict) -> dict:
    """The full config LightningCLI builds from ``config``, defaults filled in (what ``--print_config`` prints and
    what a run saves as ``config.yaml``)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed), contextlib.suppress(SystemExit):
            cli_main(["fit", "--config", str(path), "--print_config"])
    return yaml.safe_load(printed.getvalue())


def _mismatches(here: object, run: object, key: str = "") -> list[str]:
    """Dotted keys whose values differ between ``here`` and ``run``, both ways. A key only one side has counts as None
    there: a parameter added to the code after the run, left at its default None, does not make the run different."""
    if isinstance(here, dict) and isinstance(run, dict):
        keys = list(here) + [k for k in run if k not in here]
        names = {k: f"{key}.{k}" if key else k for k in keys}
        return [
            m for k in keys if names[k] not in _NOT_COMPARED for m in _mismatches(here.get(k), run.get(k), names[k])
        ]
    return [] if here == run else [f"{key}: {here!r} here, {run!r} in the run"]


def _newest_mtime(path: Path) -> float:
    """Modification time of a file, or of the newest file in a folder (a ``save_pretrained`` folder)."""
    if path.is_dir():
        return max((p.stat().st_mtime for p in path.rglob("*") if p.is_file()), default=path.stat().st_mtime)
    return path.stat().st_mtime


class NotThisRun(Exception):
    """A run folder that does not hold a finished fit of the given settings on today's data (the message says why)."""


def _read_run(config: dict, run: Path) -> tuple[list[tuple[int, float]], dict[str, float], str, str]:
    """Curve, test metrics, monitor and mode of a finished run that trained exactly ``config``'s settings (all of
    them, defaults and command-line overrides included) on data that has not changed since; ``NotThisRun`` otherwise.

    A run that was killed and resumed with ``--ckpt_path`` logs its continuation in later ``csv/version_N`` folders:
    those are read too (a later log with the same settings, a ``ckpt_path`` and validation rows), and each one replaces
    what the earlier logs held from its first step on. Test-only logs (no validation rows) are skipped."""
    fits = [log for log in reversed(_logs(run)) if (log / "config.yaml").is_file()]  # oldest first
    configs = {log: yaml.safe_load((log / "config.yaml").read_text()) for log in fits}
    fresh = [log for log in fits if configs[log].get("ckpt_path") is None]
    if not fresh:
        raise NotThisRun(f"{run}: no log of a fresh fit (csv/version_*/config.yaml with ckpt_path null)")
    log = fresh[-1]  # the newest fresh fit: an older one in the same folder is an earlier run the newer replaced
    saved = configs[log]
    resolved = _resolved(config)
    diff = _mismatches(resolved, saved)
    if diff:
        raise NotThisRun(f"{run} trained other settings:\n  " + "\n  ".join(diff))
    started = (log / "config.yaml").stat().st_mtime  # written when the fit started, after the data was prepared
    for split in ("train", "val", "test"):
        manifests = saved["data"].get(f"{split}_manifest") or []
        for manifest in [manifests] if isinstance(manifests, str) else manifests:  # one path or a list
            if Path(manifest).is_file() and Path(manifest).stat().st_mtime > started:
                raise NotThisRun(
                    f"{run}: {manifest} was rebuilt after that run started; its numbers are for other data"
                )
    start = (saved.get("model", {}).get("init_args") or {}).get("init_from")
    if start and Path(start).exists() and _newest_mtime(Path(start)) > started:  # retrained at the same path since
        raise NotThisRun(f"{run}: {start} was replaced after that run started; it fine-tuned another checkpoint")
    module, _, name = saved["model"]["class_path"].rpartition(".")
    task = getattr(importlib.import_module(module), name)  # the task class names its monitored metric
    monitor, mode = task.monitor, task.monitor_mode
    points: dict[int, float] = {}
    tested: dict[str, float] = {}
    for part in fits[fits.index(log) :]:
        rows = list(csv.DictReader((part / "metrics.csv").open()))
        resumed = part is not log
        if resumed and (
            not any(r.get(monitor) for r in rows)  # a test-only log
            or _mismatches(resolved, configs[part])
        ):
            continue
        if resumed and rows:  # the resumed fit restarts at its checkpoint: drop what the killed one logged after it
            first = min(int(r["step"]) for r in rows)
            points = {step: value for step, value in points.items() if step < first}
        points.update(_curve(run, monitor, part))
        tested = {k: float(v) for r in rows for k, v in r.items() if k.startswith("test/") and v} or tested
    curve = sorted(points.items())
    if not curve or not tested:
        raise NotThisRun(f"{run}: {log / 'metrics.csv'} has no {monitor} curve or no test/ metrics; did it finish?")
    return curve, tested, monitor, mode


def _steps_to(curve: list[tuple[int, float]], target: float, higher: bool) -> int | None:
    """Optimizer steps trained when ``curve`` first meets ``target``. Lightning validates before it counts the batch
    the validation follows (validation after 56 steps is logged as step 55; the same at an epoch's end), hence the + 1.
    With ``accumulate_grad_batches`` > 1 and a validation in the middle of an accumulation window, one too many."""
    return next((step + 1 for step, value in curve if (value >= target if higher else value <= target)), None)


def _seeded(config: dict, seed: int) -> None:
    """Set the run's seed: the global one (initialisation of new weights, dropout) and the data module's (training
    order, and which records ``limit_*`` keeps)."""
    config["seed_everything"] = seed
    data = config.setdefault("data", {})
    (data.setdefault("init_args", {}) if "class_path" in data else data)["seed"] = seed


def _pair(args: argparse.Namespace, init_from: str, out: Path, seed: int | None) -> dict:
    """Both halves of one comparison (one seed): curves, test metrics, wall times, monitored metric and its mode."""
    result: dict = {"curves": {}, "tested": {}, "seconds": {}}
    for name, start in (("finetune", init_from), ("scratch", None)):
        config = yaml.safe_load(Path(args.config).read_text())
        config["model"]["init_args"]["init_from"] = start
        if seed is not None:
            _seeded(config, seed)
        if start is None:  # nothing is loaded, so nothing is skipped (init_skip without init_from is an error)
            config["model"]["init_args"].pop("init_skip", None)
        read, why = None, None
        if start is None and args.scratch_run:
            try:
                read = _read_run(config, args.scratch_run)
            except NotThisRun as error:
                raise SystemExit(f"--scratch-run: {error}") from None
            print(f"scratch: read from {args.scratch_run} (same settings)")
        elif args.resume:
            try:
                read = _read_run(config, out / name)
                print(f"{name}: read from {out / name}, a finished run of the same settings (--resume)")
            except NotThisRun as error:
                why = error
        if read is not None:
            result["curves"][name], result["tested"][name], result["monitor"], result["mode"] = read
            continue
        if why is not None and (out / name).exists():
            print(f"{name}: training; {out / name} holds no finished run of these settings ({why})")
        _retarget(config, out / name)
        (out / name).mkdir(parents=True, exist_ok=True)
        path = out / name / "config.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        begin = time.perf_counter()
        cli = cli_main(["fit", "--config", str(path)])
        result["seconds"][name] = time.perf_counter() - begin
        result["monitor"], result["mode"] = cli.model.monitor, cli.model.monitor_mode
        result["curves"][name] = _curve(out / name, result["monitor"])
        result["tested"][name] = {k: float(v) for k, v in cli.trainer.callback_metrics.items() if k.startswith("test/")}
    return result


def _target(args: argparse.Namespace, result: dict) -> float:
    return args.target if args.target is not None else result["curves"]["scratch"][-1][1]


def _reach(args: argparse.Namespace, result: dict) -> dict[str, int | None]:
    """Steps each half trained before it met the target (None: never)."""
    higher = result["mode"] == "max"
    return {n: _steps_to(c, _target(args, result), higher) for n, c in result["curves"].items()}


def _report(args: argparse.Namespace, init_from: str, result: dict, title: str) -> None:
    """Print one comparison's curves, steps to the target and test metrics."""
    curves, tested, monitor = result["curves"], result["tested"], result["monitor"]
    higher = result["mode"] == "max"
    print(f"\n{title}{args.config}: {monitor} on validation, fine-tuned from {init_from} vs from scratch")
    steps = sorted({s for c in curves.values() for s, _ in c})
    print(f"{'steps':>6} {'finetune':>9} {'scratch':>9}   (steps trained: the step logged + 1, as in _steps_to)")
    for step in steps:
        row = [dict(curves[n]).get(step) for n in ("finetune", "scratch")]
        print(f"{step + 1:>6} " + " ".join(f"{v:>9.4f}" if v is not None else f"{'-':>9}" for v in row))
    reach = _reach(args, result)
    print(f"target {monitor} {'>=' if higher else '<='} {_target(args, result):.4f}: " + ", ".join(
        f"{n} after {s} steps" if s is not None else f"{n} not reached" for n, s in reach.items()
    ))  # fmt: skip
    if reach["finetune"] is not None and reach["scratch"] is not None:
        print(f"steps to target, scratch / finetune: {reach['scratch'] / reach['finetune']:.2f}")
    if any(tested.values()):
        print(f"\n{'test, best checkpoint':<36} {'finetune':>9} {'scratch':>9}")
        for key in sorted(set(tested["finetune"]) | set(tested["scratch"])):
            row = [tested[n].get(key) for n in ("finetune", "scratch")]
            print(f"{key:<36} " + " ".join(f"{v:>9.4f}" if v is not None else f"{'-':>9}" for v in row))
    if result["seconds"]:
        print("wall time (fit and test): " + ", ".join(f"{n} {s / 60:.1f} min" for n, s in result["seconds"].items()))


def _summary(args: argparse.Namespace, seeds: list[int], results: list[dict]) -> None:
    """One line per seed: steps to the target and the monitored metric on test, both halves; then how many seeds
    fine-tuning won, tied and lost, and the median ratio of steps."""
    monitor, higher = results[0]["monitor"], results[0]["mode"] == "max"
    tested = monitor.replace("val/", "test/", 1)
    sign = ">=" if higher else "<="
    goal = f"{monitor} {sign} {args.target}" if args.target is not None else f"each seed's final scratch {monitor}"
    print(f"\nall seeds: steps trained to reach the target ({goal}), and {tested} of the best checkpoint")
    print(f"{'seed':>6} {'finetune':>9} {'scratch':>9} {'ratio':>7} {'test ft':>9} {'test scr':>9}")
    ratios, sooner, tied, later = [], 0, 0, 0
    for seed, result in zip(seeds, results, strict=True):
        reach = _reach(args, result)
        ft, scr = reach["finetune"], reach["scratch"]
        ratio = scr / ft if ft is not None and scr is not None else None
        if ratio is not None:
            ratios.append(ratio)
        # A half that never reached the target took longer than any that did; neither reaching it is a tie.
        ft_key, scr_key = (float("inf") if v is None else v for v in (ft, scr))
        sooner, tied, later = sooner + (ft_key < scr_key), tied + (ft_key == scr_key), later + (ft_key > scr_key)
        cells = [f"{v:>9}" if v is not None else f"{'-':>9}" for v in (ft, scr)]
        cells.append(f"{ratio:>7.2f}" if ratio is not None else f"{'-':>7}")
        cells += [
            f"{v:>9.4f}" if v is not None else f"{'-':>9}"
            for v in (result["tested"]["finetune"].get(tested), result["tested"]["scratch"].get(tested))
        ]
        print(f"{seed:>6} " + " ".join(cells))
    print(
        f"fine-tuned reached the target sooner with {sooner} of {len(seeds)} seeds, tied with {tied}, later with {later}"
    )
    if ratios:
        print(f"steps to target, scratch / finetune: median {statistics.median(ratios):.2f} over {len(ratios)} seeds")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="a fine-tuning recipe (sets model.init_from)")
    parser.add_argument("--init-from", help="checkpoint to fine-tune from (default: the recipe's model.init_from)")
    parser.add_argument("--out", default="runs/finetune_vs_scratch")
    parser.add_argument("--target", type=float, help="metric value to reach (default: the scratch run's last value)")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: omnifuse's plan: usable CPUs; OMNIFUSE_THREADS / OMP_NUM_THREADS respected)")
    parser.add_argument("--scratch-run", type=Path, help="a finished scratch run to read instead of training one")
    parser.add_argument(
        "--seeds", type=int, nargs="+", help="run the comparison once per seed (seed_everything and data.seed)"
    )
    parser.add_argument(
        "--resume", action="store_true", help="read halves already finished in --out with the same settings"
    )
    args = parser.parse_args()
    sys.argv = sys.argv[:1]  # LightningCLI below gets its arguments explicitly
    if args.seeds and args.scratch_run:
        parser.error("--seeds trains the scratch half once per seed; it cannot be read from one --scratch-run")
    if args.seeds and len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds lists a seed twice: {args.seeds}")
    args.threads = threads.configure(args.threads).intra_op

    recipe = yaml.safe_load(Path(args.config).read_text())
    init_from = args.init_from or recipe["model"]["init_args"].get("init_from")
    if not init_from:
        raise SystemExit(f"{args.config} has no model.init_from; pass --init-from")
    out = Path(args.out) / Path(args.config).stem
    if not args.seeds:
        _report(args, init_from, _pair(args, init_from, out, None), "")
        return
    results = []
    for seed in args.seeds:  # each seed's figures are printed as soon as it is done
        results.append(_pair(args, init_from, out / f"seed_{seed}", seed))
        _report(args, init_from, results[-1], f"seed {seed}: ")
    _summary(args, args.seeds, results)


if __name__ == "__main__":
    main()
