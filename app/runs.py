"""Run folders: every command writes into a folder of its own, so nothing a user trained is replaced by the next one.

Under the recipe's root (``trainer.default_root_dir``, e.g. ``runs/easyvqa``)::

    runs/easyvqa/
      version_0/            one `omnifuse fit`: checkpoints/ (best.ckpt, last.ckpt), csv/, tensorboard/,
        checkpoints/        the resolved config (csv/version_0/config.yaml, saved by LightningCLI), run.json
        ...                 (the command) and test_results.json (the test of the best checkpoint after the fit)
      version_1/            the next fit: a new folder, version_0 is never touched
      latest -> version_1   the newest fit: `--ckpt_path best` / `last` and the fine-tuning configs' init_from use it
      test_0/ predict_0/    other verbs get folders of their own (predict writes predictions.jsonl there)

``--ckpt_path last`` on ``fit`` resumes the newest run in its own folder; ``--run_dir DIR`` names the folder
explicitly (the one way to write into an existing folder, e.g. to resume an older run). The folder is chosen once, in
the launching process; DDP worker processes, which Lightning starts by re-running the command, inherit the choice
through :data:`ENV` instead of choosing again.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

ENV = "OMNIFUSE_RUN_DIR"
PLACEHOLDER = "{run_dir}"  # in a config's logger/callback folders: "the run folder", filled in by the CLI
LATEST = "latest"
CHECKPOINT_ALIASES = ("best", "last")


class RunFolderError(ValueError):
    """A run folder or checkpoint alias that cannot be used; the message says what to do instead."""


def folder_prefix(verb: str) -> str:
    return "version" if verb == "fit" else verb


def next_run_dir(root: Path, verb: str) -> Path:
    """Create and return ``root/<prefix>_N`` with N one more than the largest taken (``mkdir`` without ``exist_ok``
    claims the number, so two commands started together get different folders)."""
    prefix = folder_prefix(verb)
    pattern = re.compile(rf"{re.escape(prefix)}_(\d+)")
    root.mkdir(parents=True, exist_ok=True)
    taken = [int(m.group(1)) for p in root.iterdir() if (m := pattern.fullmatch(p.name))]
    n = max(taken, default=-1) + 1
    while True:
        candidate = root / f"{prefix}_{n}"
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            n += 1


def latest_run(root: Path) -> Path:
    """The newest fit under ``root`` (what ``root/latest`` points at)."""
    link = root / LATEST
    if not link.exists():
        raise RunFolderError(f"{root} holds no run yet ({link} does not exist): train one with `omnifuse fit` first")
    return link.resolve()


def mark_latest(root: Path, run_dir: Path) -> None:
    """Point ``root/latest`` at ``run_dir`` (a relative symlink, replaced atomically)."""
    link = root / LATEST
    if run_dir.resolve().parent != root.resolve():
        return  # an explicit --run_dir elsewhere is not "the newest run of this recipe"
    tmp = root / f".{LATEST}.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(run_dir.name, target_is_directory=True)
    os.replace(tmp, link)


def resolve_checkpoint(ckpt_path: str | None, root: Path) -> str | None:
    """``best`` / ``last`` -> that checkpoint of the newest fit under ``root``; any other value unchanged."""
    if ckpt_path not in CHECKPOINT_ALIASES:
        return ckpt_path
    run = latest_run(root)
    path = run / "checkpoints" / f"{ckpt_path}.ckpt"
    if not path.is_file():
        raise RunFolderError(f"--ckpt_path {ckpt_path}: the newest run {run} has no checkpoints/{ckpt_path}.ckpt")
    return str(path)


def inherited_run_dir() -> Path | None:
    """The folder chosen by the process that launched this one (DDP workers), else None."""
    value = os.environ.get(ENV, "")
    parent, _, path = value.partition(":")
    if path and parent == str(os.getppid()):
        return Path(path)
    return None


def choose_run_dir(verb: str, root: Path, run_dir: str | None, ckpt_path: str | None) -> Path:
    """The folder this command writes into (created), following the rules in the module docstring."""
    inherited = inherited_run_dir()
    if inherited is not None:
        chosen = inherited
    elif run_dir:
        chosen = Path(run_dir)
        chosen.mkdir(parents=True, exist_ok=True)
    elif verb == "fit" and ckpt_path == "last" and (root / LATEST / "checkpoints" / "last.ckpt").is_file():
        chosen = latest_run(root)  # resume the newest run in its own folder
    else:  # (a `last` with no newest run to resume: Lightning looks in checkpoint folders the config names, or warns)
        chosen = next_run_dir(root, verb)
    os.environ[ENV] = f"{os.getpid()}:{chosen}"  # for the DDP workers this process may start
    return chosen


def write_run_record(run_dir: Path, verb: str, argv: list[str]) -> None:
    """``run.json``: the command that made the folder and when (appended to by a resumed fit)."""
    path = run_dir / "run.json"
    records = json.loads(path.read_text()) if path.is_file() else []
    records.append({"verb": verb, "argv": argv, "cwd": os.getcwd(), "started": time.strftime("%Y-%m-%dT%H:%M:%S")})
    path.write_text(json.dumps(records, indent=2) + "\n")
