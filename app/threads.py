"""How many threads a process computes with: decided here, once, for every entry point.

Two measured problems this module exists for (docs/results.md, "Threads"):

* On a machine whose cores another process holds, OpenMP threads that *spin* while waiting for work oversubscribe
  the cores: predicting at 2 threads beside a running fit was 20-70x slower than at 1 thread. A *passive* wait policy
  (threads sleep instead of spinning) removes most of it. On an idle machine, though, passive threads cost 30-40 %:
  every parallel region wakes them through the kernel (easy-VQA fit: 3.1-3.7 steps/s passive, 4.9 spinning). So the
  default, ``auto``, looks before it leaps: it samples how busy this process's CPUs are (``/proc/stat``, 50 ms) and
  keeps the library's spin-then-sleep default when they are idle, the passive policy when another process is
  computing on them. libgomp, PyTorch's OpenMP runtime on Linux, reads the policy once, when torch is imported, so
  :func:`prepare_process` must run before that: the ``omnifuse`` command does it first thing (``app/launch.py``),
  and importing ``omnifuse`` does it when torch is not loaded yet. The cost of deciding at start, measured
  (docs/results.md, "Threads"): a fit that started on an idle machine keeps spinning when a predict arrives beside it,
  and then runs 2.8x slower (the predict, finding the CPUs busy, sleeps passively and keeps its speed at batch 64).
  On a machine shared by several jobs, ``OMNIFUSE_WAIT_POLICY=PASSIVE`` (or ``OMP_WAIT_POLICY``) fixes the policy.
* ``os.cpu_count()`` counts the machine, not what this process may use. :func:`usable_cpus` reads the CPU affinity
  mask and the cgroup CPU quota (containers, CI runners), and :func:`plan` divides them among the DDP ranks on the
  host and the data-loader worker processes.

Overrides, strongest first: ``--threads N`` (the verbs' option, ``Predictor(threads=N)``, benchmarks' ``--threads``),
then ``OMNIFUSE_THREADS``, then ``OMP_NUM_THREADS`` (the standard variable, respected as the user's choice).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

WAIT_POLICY_DEFAULT = "auto"
# Busy CPUs (summed over this process's CPUs) at or above which ``auto`` chooses the passive policy: half a CPU kept
# busy by others is a running job, not the noise of an idle machine (a few hundredths).
BUSY_CPUS_FOR_PASSIVE = 0.5
_CGROUP = Path("/sys/fs/cgroup")
_PROC_STAT = Path("/proc/stat")
_announced: set[str] = set()


def _cpu_times(cpus: set[int], stat: Path) -> tuple[int, int, int]:
    """(busy, total) jiffies summed over ``cpus`` from a ``/proc/stat`` snapshot (idle and iowait count as idle), and
    how many of ``cpus`` it listed."""
    busy = total = seen = 0
    for line in stat.read_text().splitlines():
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in cpus:
            continue
        values = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
        total += sum(values)
        busy += sum(values) - values[3] - values[4]
        seen += 1
    return busy, total, seen


def busy_cpus(interval: float = 0.05, stat: Path = _PROC_STAT, cpus: set[int] | None = None) -> float | None:
    """How many of this process's CPUs (its affinity mask, or ``cpus``) were busy over the next ``interval`` seconds,
    summed (0.0 idle .. the CPU count); None where it cannot be told: no readable ``/proc/stat``, none of the CPUs
    listed in it (containers may renumber them), or counters that did not move."""
    import time

    try:
        cpus = set(os.sched_getaffinity(0)) if cpus is None else cpus
        busy0, total0, seen0 = _cpu_times(cpus, stat)
        time.sleep(interval)
        busy1, total1, seen1 = _cpu_times(cpus, stat)
    except Exception:  # noqa: BLE001 (runs at `import omnifuse`: an odd /proc/stat must never stop the import)
        return None
    if not seen0 or seen0 != seen1 or total1 <= total0:
        return None
    return len(cpus) * (busy1 - busy0) / (total1 - total0)


def choose_wait_policy(busy: float | None) -> str:
    """``auto``'s choice: ``library`` (libgomp's spin-then-sleep default) on idle CPUs, ``PASSIVE`` on busy ones or
    when nothing could be measured."""
    return "library" if busy is not None and busy < BUSY_CPUS_FOR_PASSIVE else "PASSIVE"


_decided: str | None = None  # this process's own auto decision, for describe_wait_policy


def _torch_loaded() -> bool:
    return "torch" in sys.modules


def prepare_process(measure=busy_cpus) -> None:
    """Set the OpenMP wait policy for this process, unless the user chose one (``OMP_WAIT_POLICY``, or
    ``OMNIFUSE_WAIT_POLICY``: ``auto`` (default), ``library`` for libgomp's own, or a policy such as ``PASSIVE``).
    Only has an effect before torch is imported (libgomp reads it at load), and decides once per process.

    A passive decision is written to ``OMP_WAIT_POLICY``, so child processes (DDP ranks, anything launched later)
    inherit the safe choice; a spinning decision is not written down, so a child started later looks at the CPUs
    for itself (a predict launched from an idle notebook that has since started a fit must not inherit "idle")."""
    global _decided
    if _decided is not None or _torch_loaded() or "OMP_WAIT_POLICY" in os.environ:
        return
    policy = os.environ.get("OMNIFUSE_WAIT_POLICY", WAIT_POLICY_DEFAULT)
    if policy.lower() == "auto":
        busy = measure()
        policy = choose_wait_policy(busy)
        seen = "not measured" if busy is None else f"{busy:.1f} CPUs busy at start"
        _decided = f"auto: {seen}"
    if policy.lower() != "library":
        os.environ["OMP_WAIT_POLICY"] = policy


def _cgroup_cpus(root: Path = _CGROUP) -> float | None:
    """CPUs the cgroup quota allows (cgroup v2 ``cpu.max``, or v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``);
    None when there is no quota."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 or period <= 0 else quota / period
    except (OSError, ValueError):
        return None


def usable_cpus(cgroup_root: Path = _CGROUP) -> int:
    """CPUs this process may run on: its affinity mask, capped by the cgroup quota (rounded up), at least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    quota = _cgroup_cpus(cgroup_root)
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(1, cpus)


@dataclass(frozen=True)
class ThreadPlan:
    intra_op: int
    inter_op: int
    reason: str

    def describe(self) -> str:
        return (
            f"omnifuse threads: {self.intra_op} intra-op, {self.inter_op} inter-op ({self.reason}); "
            f"OpenMP wait policy {describe_wait_policy()}"
        )


def describe_wait_policy() -> str:
    """The policy in force, e.g. ``PASSIVE (auto: 1.9 CPUs busy at start)`` or ``library default (spin, then sleep)``."""
    policy = os.environ.get("OMP_WAIT_POLICY", "library default (spin, then sleep)")
    return f"{policy} ({_decided})" if _decided else policy


class ThreadSettingError(ValueError):
    """A thread override that is not a positive whole number; the message names the setting and its value."""


def _positive_int(value: str, name: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise ThreadSettingError(f"{name}={value!r}: expected a positive whole number of threads")
    return n


def plan(requested: int | None = None, ranks_per_host: int = 1, loader_workers: int = 0, cpus: int | None = None) -> ThreadPlan:
    """The thread counts for this process. Without an override: the usable CPUs divided among the ``ranks_per_host``
    processes of a DDP job on this host, less one CPU for each loader worker beyond the first, at least 1. The first
    worker shares: measured on the easy-VQA recipe, its one worker decodes a batch in ~18 ms of a ~180 ms step, and
    2 threads trained 1.68x faster than 1 (176 vs 296 ms a step, idle 2-CPU machine). Inter-op threads (parallel
    independent ops, rare in these models) get 1."""
    cpus = usable_cpus() if cpus is None else cpus
    if requested is not None:
        n, reason = _positive_int(str(requested), "--threads"), "--threads"
    elif os.environ.get("OMNIFUSE_THREADS"):
        n, reason = _positive_int(os.environ["OMNIFUSE_THREADS"], "OMNIFUSE_THREADS"), "OMNIFUSE_THREADS"
    elif os.environ.get("OMP_NUM_THREADS"):
        n, reason = _positive_int(os.environ["OMP_NUM_THREADS"], "OMP_NUM_THREADS"), "OMP_NUM_THREADS"
    else:
        ranks = max(1, ranks_per_host)
        n = max(1, cpus // ranks - max(0, loader_workers - 1))
        parts = [f"{cpus} usable CPU{'s' if cpus != 1 else ''}"]
        if ranks > 1:
            parts.append(f"{ranks} ranks on this host")
        if loader_workers > 1:
            parts.append(f"{loader_workers} loader workers per rank")
        reason = ", ".join(parts)
    return ThreadPlan(intra_op=n, inter_op=1, reason=reason)


def apply(thread_plan: ThreadPlan, announce: bool = True) -> ThreadPlan:
    """Set torch's thread counts to ``thread_plan`` and print it once per process (per distinct plan)."""
    import torch

    torch.set_num_threads(thread_plan.intra_op)
    # Settable once per process, before inter-op work starts; a later call (a second command in one process) raises.
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(thread_plan.inter_op)
    line = thread_plan.describe()
    if announce and line not in _announced:
        _announced.add(line)
        print(line, file=sys.stderr, flush=True)
    return thread_plan


def configure(requested: int | None = None, ranks_per_host: int = 1, loader_workers: int = 0,
              announce: bool = True) -> ThreadPlan:
    """:func:`plan` then :func:`apply`: what an entry point calls."""
    return apply(plan(requested, ranks_per_host, loader_workers), announce=announce)
