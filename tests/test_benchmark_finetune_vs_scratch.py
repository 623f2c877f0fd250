"""benchmarks/finetune_vs_scratch.py reading its scratch half from a finished run (``--scratch-run``). A real tiny
``omnifuse fit`` makes the run (its CSV log and the config.yaml LightningCLI saves); the benchmark must read that run's
curve and test metrics, and refuse runs whose settings or data differ from the recipe's."""

from __future__ import annotations

import csv
import importlib.util
import os
from pathlib import Path

import pytest
import yaml

from omnifuse.app.cli import cli_main

from .test_finetune_support import build_tiny_easyvqa, write_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("finetune_vs_scratch", ROOT / "benchmarks" / "finetune_vs_scratch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _recipe(data: Path, run: Path) -> dict:
    path = write_config(
        run.parent / f"{run.name}.yaml",
        {
            "trainer": {
                "max_steps": 2,
                "val_check_interval": 1,
                "check_val_every_n_epoch": None,
                "default_root_dir": str(run),
                "logger": {
                    "class_path": "lightning.pytorch.loggers.CSVLogger",
                    "init_args": {"save_dir": str(run), "name": "csv"},
                },
                "callbacks": [
                    {
                        "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                        "init_args": {"dirpath": str(run / "ckpt"), "monitor": "val/vqa_accuracy", "mode": "max"},
                    }
                ],
            },
            "data": {
                **{f"{s}_manifest": str(data / f"vqa_{s}.jsonl") for s in ("train", "val", "test")},
                "limit_val": 4,
                "limit_test": 4,
            },
        },
    )
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[dict, Path]:
    data = build_tiny_easyvqa(tmp_path_factory.mktemp("easyvqa"))
    run = tmp_path_factory.mktemp("runs") / "scratch"
    recipe = _recipe(data, run)
    path = run.parent / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    cli_main(["fit", "--config", str(path)])  # trains 2 steps, validates at both, tests the best checkpoint
    return recipe, run


def _logged(run: Path) -> list[dict]:
    return list(csv.DictReader((run / "csv" / "version_0" / "metrics.csv").open()))


def test_read_run_reads_the_runs_curve_and_test_metrics(bench, finished):
    recipe, run = finished
    curve, tested, monitor, mode = bench._read_run(recipe, run)
    rows = _logged(run)  # the reference: the CSV rows themselves
    assert (monitor, mode) == ("val/vqa_accuracy", "max")
    assert curve == [(int(r["step"]), float(r[monitor])) for r in rows if r.get(monitor)] and len(curve) == 2
    assert tested["test/vqa_accuracy"] == float(next(r["test/vqa_accuracy"] for r in rows if r["test/vqa_accuracy"]))

    # The recipe's run folders and callbacks are not settings: pointing them elsewhere still matches.
    moved = yaml.safe_load(yaml.safe_dump(recipe))
    moved["trainer"]["default_root_dir"] = "/elsewhere"
    moved["trainer"]["callbacks"] = []
    assert bench._read_run(moved, run)[0] == curve


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("data", "batch_size", 8),
        ("trainer", "max_steps", 3),
        ("data", "limit_train", 100),
        ("seed_everything", None, 1),
    ],
)
def test_read_run_refuses_other_settings_including_defaults(bench, finished, section, key, value):
    """Also a setting the recipe leaves at its default (limit_train): the run could have set it on the command line."""
    recipe, run = finished
    changed = yaml.safe_load(yaml.safe_dump(recipe))
    if key is None:
        changed[section] = value
    else:
        changed[section][key] = value
    named = section if key is None else f"{section}.{key}"
    with pytest.raises(bench.NotThisRun, match=named.replace(".", r"\.")):
        bench._read_run(changed, run)


def test_read_run_skips_test_only_logs_and_refuses_rebuilt_data(bench, finished, tmp_path):
    recipe, run = finished
    best = next((run / "ckpt").glob("*.ckpt"))
    config = tmp_path / "recipe.yaml"
    config.write_text(yaml.safe_dump(recipe))
    cli_main(["test", "--config", str(config), "--ckpt_path", str(best)])  # a newer, test-only log in the same run
    assert len(list(run.glob("csv/version_*/metrics.csv"))) == 2
    assert len(bench._read_run(recipe, run)[0]) == 2  # still the fit's curve

    train = Path(recipe["data"]["train_manifest"])
    later = (run / "csv" / "version_0" / "config.yaml").stat().st_mtime + 60
    os.utime(train, (later, later))  # the data was rebuilt after the run started
    with pytest.raises(bench.NotThisRun, match="rebuilt after that run started"):
        bench._read_run(recipe, run)


def test_read_run_checks_every_manifest_of_a_list(bench, finished, tmp_path):
    """A run trained on a list of manifests is refused when any of them, not only the first, was rebuilt later."""
    import shutil

    recipe, run = finished
    train = Path(recipe["data"]["train_manifest"])
    extra = tmp_path / "extra_train.jsonl"
    extra.write_text(train.read_text().replace('"id": "', '"id": "extra-'))
    listed = yaml.safe_load(yaml.safe_dump(recipe))
    listed["data"]["train_manifest"] = [str(train), str(extra)]
    other = tmp_path / "listed_run"
    shutil.copytree(run / "csv" / "version_0", other / "csv" / "version_0")
    saved = other / "csv" / "version_0" / "config.yaml"
    config = yaml.safe_load(saved.read_text())
    config["data"]["train_manifest"] = [str(train), str(extra)]
    saved.write_text(yaml.safe_dump(config))
    started = saved.stat().st_mtime
    for path in (train, extra):
        os.utime(path, (started - 100, started - 100))
    assert len(bench._read_run(listed, other)[0]) == 2  # same settings, data older than the run
    os.utime(extra, (started + 60, started + 60))  # the second manifest was rebuilt after the run started
    with pytest.raises(bench.NotThisRun, match="extra_train.jsonl was rebuilt"):
        bench._read_run(listed, other)


def test_read_run_reads_a_killed_and_resumed_run_across_its_logs(bench, finished, tmp_path):
    """The same run as if killed after its first validation and resumed with --ckpt_path last: the curve and test
    metrics read from the two logs equal the uninterrupted run's log; an older run's log and a later test-only log
    change nothing."""
    recipe, run = finished
    source = run / "csv" / "version_0"
    rows = list(csv.DictReader((source / "metrics.csv").open()))
    fields = list(rows[0])
    reference = bench._read_run(recipe, run)
    config = yaml.safe_load((source / "config.yaml").read_text())
    other = tmp_path / "resumed_run"

    def log(version: int, kept: list[dict], ckpt_path: str | None, junk: dict | None = None, **data) -> None:
        folder = other / "csv" / f"version_{version}"
        folder.mkdir(parents=True)
        with (folder / "metrics.csv").open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields)
            writer.writeheader()
            writer.writerows(kept + ([junk] if junk else []))
        saved = {**config, "ckpt_path": ckpt_path, "data": {**config["data"], **data}}
        (folder / "config.yaml").write_text(yaml.safe_dump(saved))

    first_val = min(int(r["step"]) for r in rows if r.get("val/vqa_accuracy"))
    before = [r for r in rows if int(r["step"]) <= first_val and not any(k.startswith("test/") and r[k] for k in r)]
    after = [r for r in rows if int(r["step"]) > first_val]
    # The killed log also holds a validation the resumed fit redoes (logged after the checkpoint it resumes from).
    stale = {k: "" for k in fields} | {"step": str(after[0]["step"]), "val/vqa_accuracy": "0.0"}
    # An older, unrelated fresh fit in the same folder (an earlier run that this one replaced) is not read.
    older = [{**r, "val/vqa_accuracy": "0.25"} if r.get("val/vqa_accuracy") else r for r in rows]
    log(0, older, None, batch_size=3)
    log(1, before, None, junk=stale)
    log(2, after, "last")
    # A later test-only log (e.g. `omnifuse test` on another manifest) with other test figures is not the fit's.
    other_test = {k: ("0.5" if k.startswith("test/") else "") for k in fields} | {"step": rows[-1]["step"]}
    log(3, [other_test], "best.ckpt")
    curve, tested, monitor, mode = bench._read_run(recipe, other)
    assert (curve, tested, monitor, mode) == reference
    assert len(curve) == 2 and after and before


def _first_at_or_above(log: Path, metric: str, target: float) -> int | None:
    """Independent reading of a run's CSV log: the first logged step whose ``metric`` reaches ``target``."""
    rows = csv.DictReader((log / "metrics.csv").open())
    return next((int(r["step"]) for r in rows if r.get(metric) and float(r[metric]) >= target), None)


def _run_bench(bench, monkeypatch, capsys, *args: str) -> str:
    import sys

    import torch

    monkeypatch.setattr(sys, "argv", ["finetune_vs_scratch.py", "--threads", "1", *args])
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # leave the test process's thread count alone
    bench.main()
    return capsys.readouterr().out


def test_seeds_run_one_comparison_per_seed_and_resume_reads_them(bench, finished, tmp_path, monkeypatch, capsys):
    """--seeds 3 5: each seed trains both halves with that seed (global and data module), and the closing table's
    steps to the target agree with the runs' own CSV logs. Run again with --resume, nothing trains and the same
    figures come out."""
    import torch

    recipe, run = finished
    source = next((run / "ckpt").glob("*.ckpt"))
    ft = yaml.safe_load(yaml.safe_dump(recipe))
    ft["model"]["init_args"]["init_from"] = str(source)
    path = tmp_path / "tiny_ft.yaml"
    path.write_text(yaml.safe_dump(ft))
    out = tmp_path / "out"
    args = ("--config", str(path), "--out", str(out), "--seeds", "3", "5")
    printed = _run_bench(bench, monkeypatch, capsys, *args)

    # The recipe validates after every step of 2: the curve is printed at 1 and 2 steps trained.
    seed_3 = printed[printed.index("seed 3: ") : printed.index("seed 5: ")].splitlines()
    table = seed_3[seed_3.index(next(line for line in seed_3 if line.split()[:1] == ["steps"])) + 1 :][:3]
    assert [line.split()[0] for line in table[:2]] == ["1", "2"] and table[2].startswith("target")

    summary = printed[printed.index("all seeds:") :].splitlines()
    rows = {int(line.split()[0]): line.split() for line in summary[2:4]}
    assert set(rows) == {3, 5}
    weights = {}
    for seed in (3, 5):
        for half in ("finetune", "scratch"):
            folder = out / "tiny_ft" / f"seed_{seed}" / half
            saved = yaml.safe_load((folder / "csv" / "version_0" / "config.yaml").read_text())  # what the fit used
            assert saved["seed_everything"] == seed and saved["data"]["seed"] == seed
            assert saved["model"]["init_args"]["init_from"] == (str(source) if half == "finetune" else None)
            best = torch.load(next((folder / "checkpoints").glob("*.ckpt")), weights_only=False)["state_dict"]
            weights[seed, half] = best
        scratch_log = out / "tiny_ft" / f"seed_{seed}" / "scratch" / "csv" / "version_0"
        target = [float(r["val/vqa_accuracy"]) for r in csv.DictReader((scratch_log / "metrics.csv").open())
                  if r.get("val/vqa_accuracy")][-1]  # fmt: skip
        for column, half in ((1, "finetune"), (2, "scratch")):
            log = out / "tiny_ft" / f"seed_{seed}" / half / "csv" / "version_0"
            logged = _first_at_or_above(log, "val/vqa_accuracy", target)
            assert rows[seed][column] == (str(logged + 1) if logged is not None else "-")  # steps trained
    # Different seeds train different scratch models (both settings differ; the saved configs above say which).
    name = next(k for k in weights[3, "scratch"] if k.endswith("weight") and weights[3, "scratch"][k].numel() > 16)
    assert not torch.equal(weights[3, "scratch"][name], weights[5, "scratch"][name])

    def no_training(args: list[str]):  # reading a run resolves its settings with --print_config; fitting is refused
        if "--print_config" not in args:
            raise AssertionError("--resume trained a half that was already finished")
        return cli_main(args)

    monkeypatch.setattr(bench, "cli_main", no_training)
    again = _run_bench(bench, monkeypatch, capsys, *args, "--resume")
    assert again.count("a finished run of the same settings (--resume)") == 4
    assert again[again.index("all seeds:") :] == printed[printed.index("all seeds:") :]


def test_resume_trains_a_half_whose_settings_changed(bench, finished, tmp_path, monkeypatch, capsys):
    """A finished half of other settings in --out is not read: it is trained again, and says why."""
    recipe, run = finished
    ft = yaml.safe_load(yaml.safe_dump(recipe))
    ft["model"]["init_args"]["init_from"] = str(next((run / "ckpt").glob("*.ckpt")))
    path = tmp_path / "tiny_ft.yaml"
    path.write_text(yaml.safe_dump(ft))
    out = tmp_path / "out"
    _run_bench(bench, monkeypatch, capsys, "--config", str(path), "--out", str(out))
    ft["data"]["batch_size"] = 3
    path.write_text(yaml.safe_dump(ft))
    printed = _run_bench(bench, monkeypatch, capsys, "--config", str(path), "--out", str(out), "--resume")
    assert printed.count("holds no finished run of these settings") == 2 and "data.batch_size" in printed
    for half in ("finetune", "scratch"):
        saved = yaml.safe_load((out / "tiny_ft" / half / "csv" / "version_1" / "config.yaml").read_text())
        assert saved["data"]["batch_size"] == 3


def _result(ft: list[float], scratch: list[float], test: tuple[float, float]) -> dict:
    """A comparison as _pair returns it: validation logged at steps 9, 19, 29, ... (after 10, 20, 30 steps)."""
    curve = lambda values: [(10 * i + 9, v) for i, v in enumerate(values)]  # noqa: E731
    tested = {"finetune": {"test/cider_d": test[0]}, "scratch": {"test/cider_d": test[1]}}
    return {"curves": {"finetune": curve(ft), "scratch": curve(scratch)}, "tested": tested, "seconds": {},
            "monitor": "val/cider_d", "mode": "max"}  # fmt: skip


def test_summary_counts_wins_ties_and_losses_and_the_median_ratio(bench, capsys):
    """Steps counted by hand from the made-up curves below (target 2.0): sooner, tie, later, never reached."""
    import argparse

    results = [
        _result([2.5, 3.0], [1.0, 2.1], (6.0, 6.2)),  # 10 vs 20 steps: ratio 2.0
        _result([1.0, 2.0], [0.5, 2.0], (5.0, 5.1)),  # 20 vs 20: a tie, ratio 1.0
        _result([0.1, 0.5, 2.2], [2.0, 2.0, 2.0], (4.0, 4.1)),  # 30 vs 10: ratio 0.333
        _result([0.1, 2.0], [0.1, 0.2], (3.0, 3.1)),  # 20 vs never: sooner, no ratio
        _result([0.1, 0.2], [0.1, 0.2], (2.0, 2.1)),  # neither reaches it: a tie, no ratio
    ]
    args = argparse.Namespace(target=2.0)
    bench._summary(args, [0, 1, 2, 3, 4], results)
    lines = capsys.readouterr().out.strip().splitlines()
    rows = [line.split() for line in lines[2:7]]
    assert [r[:4] for r in rows] == [
        ["0", "10", "20", "2.00"],
        ["1", "20", "20", "1.00"],
        ["2", "30", "10", "0.33"],
        ["3", "20", "-", "-"],
        ["4", "-", "-", "-"],
    ]
    assert [r[4:] for r in rows][0] == ["6.0000", "6.2000"]
    assert "sooner with 2 of 5 seeds, tied with 2, later with 1" in lines[7]
    assert lines[8].endswith("median 1.00 over 3 seeds")


@pytest.mark.parametrize("layout", ["flat", "class_path"])
def test_seeded_sets_the_global_and_the_data_modules_seed(bench, layout):
    data = {"batch_size": 4} if layout == "flat" else {"class_path": "x.DataModule", "init_args": {"batch_size": 4}}
    config = {"seed_everything": 0, "data": data}
    bench._seeded(config, 7)
    args = config["data"] if layout == "flat" else config["data"]["init_args"]
    assert config["seed_everything"] == 7 and args == {"batch_size": 4, "seed": 7}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--seeds", "1", "1"], "lists a seed twice"),
        (["--seeds", "1", "2", "--scratch-run", "runs/x"], "cannot be read from one --scratch-run"),
    ],
    ids=["twice", "scratch-run"],
)
def test_seeds_refuses_a_repeated_seed_and_a_shared_scratch_run(bench, monkeypatch, capsys, extra, message):
    import sys

    monkeypatch.setattr(sys, "argv", ["finetune_vs_scratch.py", "--config", "recipe.yaml", *extra])
    with pytest.raises(SystemExit) as raised:
        bench.main()
    assert raised.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "logger",
    [True, {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "a"}}],
    ids=["default", "one"],
)
def test_retarget_points_one_or_many_loggers_and_callbacks_at_the_run(bench, logger):
    callback = {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"dirpath": "a/ckpt"}}
    for callbacks in (callback, [callback, {"class_path": "lightning.pytorch.callbacks.RichProgressBar"}]):
        config = yaml.safe_load(yaml.safe_dump({"trainer": {"logger": logger, "callbacks": callbacks}}))
        bench._retarget(config, Path("/runs/x"))
        trainer = config["trainer"]
        assert trainer["default_root_dir"] == "/runs/x"
        if isinstance(logger, dict):
            assert trainer["logger"]["init_args"]["save_dir"] == "/runs/x"
        else:
            assert trainer["logger"] is True
        first = trainer["callbacks"] if isinstance(callbacks, dict) else trainer["callbacks"][0]
        assert first["init_args"]["dirpath"] == "/runs/x/checkpoints"


def test_resume_trains_a_half_killed_before_its_test_and_one_from_a_replaced_checkpoint(
    bench, finished, tmp_path, monkeypatch, capsys
):
    """--resume reads only finished halves of the same start: a half whose log has no test metrics (killed before
    `omnifuse fit` tested it) is trained again, and so is a fine-tuned half whose init_from file was replaced later."""
    import shutil

    recipe, run = finished
    source = tmp_path / "start.ckpt"
    shutil.copy(next((run / "ckpt").glob("*.ckpt")), source)
    ft = yaml.safe_load(yaml.safe_dump(recipe))
    ft["model"]["init_args"]["init_from"] = str(source)
    path = tmp_path / "tiny_ft.yaml"
    path.write_text(yaml.safe_dump(ft))
    out = tmp_path / "out"
    args = ("--config", str(path), "--out", str(out))
    _run_bench(bench, monkeypatch, capsys, *args)

    # The scratch half as if killed before its test: its log keeps the validations, loses the test row.
    log = out / "tiny_ft" / "scratch" / "csv" / "version_0" / "metrics.csv"
    rows = list(csv.DictReader(log.open()))
    with log.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(r for r in rows if not any(k.startswith("test/") and r[k] for k in r))
    printed = _run_bench(bench, monkeypatch, capsys, *args, "--resume")
    assert "finetune: read from" in printed and "did it finish?" in printed
    assert (out / "tiny_ft" / "scratch" / "csv" / "version_1" / "metrics.csv").is_file()
    assert not (out / "tiny_ft" / "finetune" / "csv" / "version_1").exists()

    # The start checkpoint retrained at the same path after the fine-tuned half ran: that half is not reused.
    started = (out / "tiny_ft" / "finetune" / "csv" / "version_0" / "config.yaml").stat().st_mtime
    os.utime(source, (started + 60, started + 60))
    printed = _run_bench(bench, monkeypatch, capsys, *args, "--resume")
    assert "start.ckpt was replaced after that run started" in printed
    assert (out / "tiny_ft" / "finetune" / "csv" / "version_1" / "metrics.csv").is_file()
    assert "scratch: read from" in printed  # the retrained scratch half (version_1) is finished now


@pytest.mark.parametrize(("interval", "expected"), [(1.0, [4, 8]), (0.5, [2, 4, 6, 8])], ids=["epoch-end", "half"])
def test_curve_steps_are_optimizer_steps_for_float_intervals(bench, finished, tmp_path, monkeypatch, capsys, interval,
                                                              expected):  # fmt: skip
    """16 training records in batches of 4 are 4 steps an epoch; two epochs validated at each epoch's end, or every
    half epoch, are printed at these step counts (the +1 on Lightning's logged step holds for both schedules)."""
    recipe, run = finished
    ft = yaml.safe_load(yaml.safe_dump(recipe))
    ft["model"]["init_args"]["init_from"] = str(next((run / "ckpt").glob("*.ckpt")))
    ft["trainer"].update(max_steps=-1, max_epochs=2, val_check_interval=interval, check_val_every_n_epoch=1)
    ft["data"].update(limit_train=16, batch_size=4)
    path = tmp_path / "tiny_ft.yaml"
    path.write_text(yaml.safe_dump(ft))
    printed = _run_bench(bench, monkeypatch, capsys, "--config", str(path), "--out", str(tmp_path / "out"))
    lines = printed[printed.index(" steps  finetune") :].splitlines()[1:]
    table = lines[: next(i for i, line in enumerate(lines) if line.startswith("target"))]
    assert [int(line.split()[0]) for line in table] == expected
