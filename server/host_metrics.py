"""Triton's CPU metrics (`serve --triton-metrics`): `nv_cpu_utilization`, `nv_cpu_memory_total_bytes` and
`nv_cpu_memory_used_bytes`, read from /proc as Triton reads them, so a dashboard's host panels read kerve too.

Utilization is the share of all cores' time that was not idle (idle and iowait) between two pushes (each scrape,
and every second in a `--processes` group), Triton's "since last interval"; the first push has no earlier reading
and reports the share since boot. Used memory is MemTotal - MemAvailable (what the kernel could not hand out without
swapping). Both are the whole host's, or the container's where /proc is virtualized (lxcfs). In a group, each
process reads the same host: the parent reports the most recent reading, not a sum. Linux only: elsewhere the
gauges are not created (`available`).
"""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge

PROC = Path("/proc")
_IDLE_FIELDS = (3, 4)  # idle, iowait in the `cpu` line of /proc/stat (after user, nice, system)
_COUNTED_FIELDS = 8  # user .. steal; guest and guest_nice are already counted in user and nice


def cpu_times(stat: str) -> tuple[int, int]:
    """(busy, total) jiffies of all cores together, from /proc/stat's aggregate `cpu` line."""
    for line in stat.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu":
            values = [int(value) for value in fields[1 : 1 + _COUNTED_FIELDS]]
            total = sum(values)
            idle = sum(values[i] for i in _IDLE_FIELDS if i < len(values))
            return total - idle, total
    raise ValueError("no aggregate cpu line in /proc/stat")


def utilization(before: tuple[int, int], after: tuple[int, int]) -> float:
    """The busy share of the time between two `cpu_times` readings, in [0, 1] (0 when no time passed)."""
    busy, total = after[0] - before[0], after[1] - before[1]
    if total <= 0:
        return 0.0
    return min(1.0, max(0.0, busy / total))


def memory(meminfo: str) -> tuple[int, int]:
    """(total, used) bytes from /proc/meminfo: used = MemTotal - MemAvailable."""
    kib: dict[str, int] = {}
    for line in meminfo.splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts:
            kib[name] = int(parts[0])
    total = kib["MemTotal"] * 1024
    available = kib.get("MemAvailable", kib.get("MemFree", 0)) * 1024  # MemAvailable: Linux 3.14+
    return total, max(0, total - available)


def available(proc: Path = PROC) -> bool:
    return (proc / "stat").is_file() and (proc / "meminfo").is_file()


class HostMetrics:
    """The three gauges, set from /proc at each push by `update`."""

    def __init__(self, registry: CollectorRegistry, proc: Path = PROC) -> None:
        self._proc = proc
        self._last = (0, 0)  # the first reading is measured against boot
        self._utilization = Gauge(
            "nv_cpu_utilization",
            "Total CPU utilization rate [0.0 - 1.0]",
            registry=registry,
            multiprocess_mode="livemostrecent",
        )
        self._total = Gauge(
            "nv_cpu_memory_total_bytes",
            "Total CPU memory (RAM), in bytes",
            registry=registry,
            multiprocess_mode="livemostrecent",
        )
        self._used = Gauge(
            "nv_cpu_memory_used_bytes",
            "Used CPU memory (RAM), in bytes",
            registry=registry,
            multiprocess_mode="livemostrecent",
        )

    def update(self) -> None:
        times = cpu_times((self._proc / "stat").read_text())
        self._utilization.set(utilization(self._last, times))
        self._last = times
        total, used = memory((self._proc / "meminfo").read_text())
        self._total.set(total)
        self._used.set(used)
