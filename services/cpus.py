"""How many CPUs this process may use: the cgroup's CPU quota, else its CPU affinity.

A container started with ``--cpus 2`` (or a Kubernetes CPU limit of ``2``) sees every CPU of
the host in ``os.cpu_count()``, but the kernel throttles it to two CPUs' worth of time: the
quota is in ``/sys/fs/cgroup/cpu.max`` (cgroup v2, ``"200000 100000"``, or ``"max 100000"``
without a limit) or ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (cgroup v1, ``-1`` without
one). A fractional quota is rounded up (1.5 CPUs: two workers, which together still get 1.5
CPUs of time; one would leave half a CPU idle), and never beyond the CPUs in the affinity set
(``--cpuset-cpus``).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")


def available_cpus(cgroup: Path = CGROUP) -> int:
    """CPUs this process may use: ``ceil(quota)`` capped by the affinity set, at least 1."""
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    cpus = affinity or os.cpu_count() or 1
    quota = cgroup_quota(cgroup)
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(1, cpus)


def cgroup_quota(cgroup: Path = CGROUP) -> float | None:
    """The cgroup's CPU quota in CPUs (``2.0`` for ``--cpus 2``), or None when unlimited."""
    try:
        quota, period = (cgroup / "cpu.max").read_text().split()[:2]
        if quota == "max":
            return None
        return _ratio(int(quota), int(period))
    except (OSError, ValueError):
        pass
    for folder in (cgroup / "cpu", cgroup / "cpu,cpuacct"):
        try:
            quota_us = int((folder / "cpu.cfs_quota_us").read_text())
            period_us = int((folder / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return _ratio(quota_us, period_us)
    return None


def _ratio(quota: int, period: int) -> float | None:
    return quota / period if quota > 0 and period > 0 else None
