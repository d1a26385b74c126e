"""Triton's CPU metrics (server/host_metrics.py) from /proc text, without TensorFlow: busy share between two
readings, memory used as MemTotal - MemAvailable, and the gauges a push sets."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from kerve.server.host_metrics import HostMetrics, available, cpu_times, memory, utilization

STAT = """cpu  {user} 0 {system} {idle} {iowait} 0 0 0 {guest} 0
cpu0 1 2 3 4 5 6 7 8 9 10
intr 12345
"""
MEMINFO = """MemTotal:       24576000 kB
MemFree:         1000000 kB
MemAvailable:   20000000 kB
Buffers:          100000 kB
"""


def stat(user: int, system: int, idle: int, iowait: int = 0, guest: int = 0) -> str:
    return STAT.format(user=user, system=system, idle=idle, iowait=iowait, guest=guest)


def test_cpu_times_count_idle_and_iowait_as_idle_and_guest_once() -> None:
    assert cpu_times(stat(100, 50, 800, 50, guest=30)) == (150, 1000)  # guest is inside user already
    with pytest.raises(ValueError):
        cpu_times("intr 1\n")


def test_utilization_is_the_busy_share_between_two_readings() -> None:
    assert utilization((150, 1000), (450, 1400)) == pytest.approx(0.75)
    assert utilization((150, 1000), (150, 1000)) == 0.0  # no time passed
    assert utilization((0, 0), (150, 1000)) == pytest.approx(0.15)  # since boot
    assert utilization((500, 1000), (400, 1100)) == 0.0  # a counter that went back (never below 0)


def test_memory_used_is_what_the_kernel_could_not_hand_out() -> None:
    assert memory(MEMINFO) == (24576000 * 1024, (24576000 - 20000000) * 1024)
    assert memory("MemTotal: 1000 kB\nMemFree: 250 kB\n") == (1024000, 750 * 1024)  # no MemAvailable: old kernels


def test_a_push_sets_tritons_gauges_from_proc(tmp_path: Path) -> None:
    assert not available(tmp_path)
    (tmp_path / "stat").write_text(stat(100, 100, 800))
    (tmp_path / "meminfo").write_text(MEMINFO)
    assert available(tmp_path)
    registry = CollectorRegistry()
    metrics = HostMetrics(registry, tmp_path)
    metrics.update()
    assert registry.get_sample_value("nv_cpu_utilization") == pytest.approx(0.2)  # the first: since boot
    assert registry.get_sample_value("nv_cpu_memory_total_bytes") == 24576000 * 1024
    assert registry.get_sample_value("nv_cpu_memory_used_bytes") == 4576000 * 1024
    (tmp_path / "stat").write_text(stat(190, 110, 900))  # 100 busy of 200 since the last push
    metrics.update()
    assert registry.get_sample_value("nv_cpu_utilization") == pytest.approx(0.5)
