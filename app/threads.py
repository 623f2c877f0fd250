"""How many threads a process computes with: decided here, once, for every entry point.

Two measured problems this module exists for (docs/results.md, "Threads"):

* On a machine whose cores another process holds, OpenMP threads that *spin* while waiting for work oversubscribe
  the cores: predicting at 2 threads beside a running fit was 20-70x slower than at 1 thread. A *passive* wait policy
  (threads sleep instead of spinning) removes most of it. libgomp, PyTorch's OpenMP runtime on Linux, reads the
  policy once, when torch is imported, so :func:`prepare_process` must run before that: the ``omnifuse`` command does
  it first thing (``app/launch.py``), and importing ``omnifuse`` sets it as a default when torch is not loaded yet.
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

WAIT_POLICY_DEFAULT = "PASSIVE"
_CGROUP = Path("/sys/fs/cgroup")
_announced: set[str] = set()


def prepare_process() -> None:
    """Set the OpenMP wait policy for this process and its children, unless the user chose one (``OMP_WAIT_POLICY``;
    ``OMNIFUSE_WAIT_POLICY=library`` keeps the library's own). Only has an effect before torch is imported (libgomp
    reads it at load)."""
    policy = os.environ.get("OMNIFUSE_WAIT_POLICY", WAIT_POLICY_DEFAULT)
    if "torch" not in sys.modules and policy.lower() != "library":
        os.environ.setdefault("OMP_WAIT_POLICY", policy)


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
        policy = os.environ.get("OMP_WAIT_POLICY", "library default (spinning)")
        return (
            f"omnifuse threads: {self.intra_op} intra-op, {self.inter_op} inter-op ({self.reason}); "
            f"OpenMP wait policy {policy}"
        )


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
