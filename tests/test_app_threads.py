"""The thread plan (app/threads.py) follows what the process may really use: its CPU affinity and cgroup quota, shared
among DDP ranks and loader workers; the user's overrides win in a fixed order; the OpenMP wait policy follows the load
(spin-then-sleep on idle CPUs, passive on busy ones) unless the user chose one, and only where torch is not loaded yet."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from omnifuse.app import threads

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_overrides(monkeypatch):
    for name in ("OMNIFUSE_THREADS", "OMP_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)


def _child(code: str, env: dict[str, str] | None = None) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in ("OMNIFUSE_THREADS", "OMP_NUM_THREADS", "OMP_WAIT_POLICY", "OMNIFUSE_WAIT_POLICY")}
    result = subprocess.run([sys.executable, "-c", code], env={**clean, **(env or {})}, capture_output=True, text=True,
                            check=True, timeout=120)
    return result.stdout.strip()


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs Linux CPU affinity")
def test_the_plan_follows_cpu_affinity_in_a_fresh_process():
    cpus = sorted(os.sched_getaffinity(0))
    code = (
        "import os, json; os.sched_setaffinity(0, {cpu}); "
        "from omnifuse.app import threads; p = threads.plan(); "
        "print(json.dumps([threads.usable_cpus(), p.intra_op]))"
    )
    assert json.loads(_child(code.format(cpu={cpus[0]}))) == [1, 1]
    if len(cpus) >= 2:
        assert json.loads(_child(code.format(cpu=set(cpus[:2])))) == [2, 2]


def test_a_cgroup_quota_caps_the_cpus(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # cgroup v2: 1.5 CPUs -> 2 threads' worth
    assert threads.usable_cpus(tmp_path) == 2
    (tmp_path / "cpu.max").write_text("max 100000\n")  # no quota
    assert threads.usable_cpus(tmp_path) == 8
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("300000\n")  # cgroup v1: 3 CPUs
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert threads.usable_cpus(tmp_path) == 3
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert threads.usable_cpus(tmp_path) == 8


def test_cpus_are_shared_among_ranks_and_loader_workers(no_overrides):
    assert threads.plan(cpus=16).intra_op == 16
    assert threads.plan(cpus=16, ranks_per_host=4).intra_op == 4
    assert threads.plan(cpus=16, ranks_per_host=4, loader_workers=1).intra_op == 4  # one light worker shares
    assert threads.plan(cpus=16, ranks_per_host=4, loader_workers=3).intra_op == 2  # each further one takes a CPU
    assert threads.plan(cpus=2, loader_workers=1).intra_op == 2  # the main recipe on this project's machine
    assert threads.plan(cpus=2, ranks_per_host=4, loader_workers=2).intra_op == 1  # never below one
    assert "4 ranks on this host" in threads.plan(cpus=16, ranks_per_host=4).reason


def test_overrides_win_in_order(monkeypatch, no_overrides):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert (threads.plan(cpus=16).intra_op, threads.plan(cpus=16).reason) == (3, "OMP_NUM_THREADS")
    monkeypatch.setenv("OMNIFUSE_THREADS", "5")
    assert threads.plan(cpus=16).intra_op == 5
    assert threads.plan(7, cpus=16).intra_op == 7
    monkeypatch.setenv("OMNIFUSE_THREADS", "two")
    with pytest.raises(ValueError, match="OMNIFUSE_THREADS='two'"):
        threads.plan(cpus=16)
    with pytest.raises(threads.ThreadSettingError, match="--threads='0'"):
        threads.plan(0, cpus=16)


def test_a_bad_thread_setting_is_one_line_from_the_command(monkeypatch, capsys):
    from omnifuse.app.cli import main

    monkeypatch.setenv("OMNIFUSE_THREADS", "many")
    assert main(["prepare", "--help"]) == 1  # the plan is made before the verb runs
    assert "OMNIFUSE_THREADS='many': expected a positive whole number of threads" in capsys.readouterr().err


def test_apply_sets_torch_and_announces_once(capsys, monkeypatch, no_overrides):
    import torch

    monkeypatch.setattr(threads, "_announced", set())  # forget what earlier tests of this process printed
    before = torch.get_num_threads()
    try:
        threads.configure(1)
        threads.configure(1)
        assert torch.get_num_threads() == 1
        lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("omnifuse threads:")]
        assert lines == ["omnifuse threads: 1 intra-op, 1 inter-op (--threads); OpenMP wait policy " +
                         threads.describe_wait_policy()]
    finally:
        torch.set_num_threads(before)


def test_wait_policy_is_set_before_torch_loads_and_the_user_choice_wins():
    code = "import omnifuse, os; print(os.environ.get('OMP_WAIT_POLICY'))"
    assert _child(code, {"OMNIFUSE_WAIT_POLICY": "PASSIVE"}) == "PASSIVE"
    assert _child("import omnifuse, os; print(os.environ['OMP_WAIT_POLICY'])", {"OMP_WAIT_POLICY": "ACTIVE"}) == "ACTIVE"
    # auto (the default) decides in the child itself and says how in the thread line.
    line = _child("import omnifuse; from omnifuse.app import threads; print(threads.describe_wait_policy())")
    assert line.endswith("CPUs busy at start)") and line.split(" (")[0] in ("PASSIVE", "library default")
    assert _child("import omnifuse, os; print(os.environ.get('OMP_WAIT_POLICY'))", {"OMNIFUSE_WAIT_POLICY": "library"}) == "None"
    # torch already loaded: its OpenMP runtime has read the environment, so setting it now would be a lie.
    assert _child("import torch, omnifuse, os; print(os.environ.get('OMP_WAIT_POLICY'))") == "None"


def _stat(per_cpu: dict[int, tuple[int, int]]) -> str:
    """A /proc/stat text with, per CPU, ``(busy, idle)`` jiffies (busy split over user and system)."""
    lines = ["cpu  1 1 1 1 1 0 0 0 0 0"]
    for cpu, (busy, idle) in per_cpu.items():
        lines.append(f"cpu{cpu} {busy // 2} 0 {busy - busy // 2} {idle} 0 0 0 0 0 0")
    return "\n".join(lines + ["intr 0", "ctxt 0"]) + "\n"


def test_busy_cpus_reads_proc_stat_over_the_interval(tmp_path, monkeypatch):
    stat = tmp_path / "stat"
    snapshots = iter([
        _stat({0: (100, 900), 1: (50, 950), 2: (0, 0)}),
        # Over the interval CPU 0 was fully busy (100 busy jiffies), CPU 1 a quarter (25 of 100); CPU 2 is not ours.
        _stat({0: (200, 900), 1: (75, 1025), 2: (500, 0)}),
    ])
    stat.write_text(next(snapshots))
    monkeypatch.setattr("time.sleep", lambda _: stat.write_text(next(snapshots)))
    assert threads.busy_cpus(stat=stat, cpus={0, 1}) == pytest.approx(1.25)
    assert threads.busy_cpus(stat=tmp_path / "missing", cpus={0}) is None
    # None, not "idle", where nothing can be told: CPUs the file does not list, counters that do not move, junk.
    monkeypatch.setattr("time.sleep", lambda _: None)
    assert threads.busy_cpus(stat=stat, cpus={7}) is None
    assert threads.busy_cpus(stat=stat, cpus={0}) is None
    stat.write_text("cpu0 1 2\n")
    assert threads.busy_cpus(stat=stat, cpus={0}) is None


def test_auto_wait_policy_spins_on_idle_cpus_and_sleeps_on_busy_ones(monkeypatch):
    monkeypatch.setattr(threads, "_torch_loaded", lambda: False)  # as if torch were not loaded yet
    for busy, omp in ((0.02, None), (1.9, "PASSIVE"), (None, "PASSIVE")):
        monkeypatch.setattr(threads, "_decided", None)  # a fresh process
        monkeypatch.setenv("OMP_WAIT_POLICY", "x")  # set, then deleted: monkeypatch restores the test's environment
        monkeypatch.delenv("OMP_WAIT_POLICY")
        monkeypatch.delenv("OMNIFUSE_WAIT_POLICY", raising=False)
        threads.prepare_process(measure=lambda busy=busy: busy)
        assert os.environ.get("OMP_WAIT_POLICY") == omp
        reason = "not measured" if busy is None else f"{busy:.1f} CPUs busy at start"
        assert threads.describe_wait_policy() == f"{omp or 'library default (spin, then sleep)'} (auto: {reason})"
        # Once per process: a second call (the command after `import omnifuse`) does not measure again.
        threads.prepare_process(measure=lambda: pytest.fail("measured twice"))
    # The user's choice wins and is not measured.
    monkeypatch.setattr(threads, "_decided", None)
    monkeypatch.setenv("OMNIFUSE_WAIT_POLICY", "PASSIVE")
    monkeypatch.setenv("OMP_WAIT_POLICY", "x")
    monkeypatch.delenv("OMP_WAIT_POLICY")
    threads.prepare_process(measure=lambda: pytest.fail("measured a fixed policy"))
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE" and threads.describe_wait_policy() == "PASSIVE"
