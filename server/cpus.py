"""How many cores this server may use: its CPU affinity, capped by a container's CPU quota.

TensorFlow sizes its thread pools from the cores the process may be scheduled on, which in a Kubernetes pod is
every core of the node, not the pod's `limits.cpu`: a pod limited to 2 CPUs on a 64-core node would run 64
intra-op threads and spend its quota being throttled. kerve reads the cgroup quota (v2 `cpu.max`, v1
`cpu.cfs_quota_us` / `cpu.cfs_period_us`, both as mounted in the container at /sys/fs/cgroup) and sizes the pools
from the smaller of the two. No TensorFlow here, so the arithmetic is testable on its own.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> float | None:
    """The container's CPU quota in cores (1.5 = one and a half cores), None when there is none."""
    v2 = _read(root / "cpu.max")  # "max 100000" or "<quota> <period>"
    if v2 is not None:
        quota, _, period = v2.partition(" ")
        return None if quota == "max" else _ratio(quota, period or "100000")
    quota = _read(root / "cpu" / "cpu.cfs_quota_us")
    period = _read(root / "cpu" / "cpu.cfs_period_us")
    if quota is None or period is None or quota.startswith("-"):  # -1: no quota
        return None
    return _ratio(quota, period)


def _ratio(quota: str, period: str) -> float | None:
    try:
        limit = int(quota) / int(period)
    except (ValueError, ZeroDivisionError):
        return None
    return limit if limit > 0 else None


def schedulable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def usable_cores(root: Path = CGROUP_ROOT) -> int:
    """Cores to size thread pools for: the affinity, capped by the quota rounded up (1.5 cores -> 2)."""
    cores = schedulable_cores()
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        cores = min(cores, math.ceil(limit))
    return max(1, cores)
