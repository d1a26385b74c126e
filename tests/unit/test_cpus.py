"""Cores for TF's thread pools: the CPU affinity capped by a container's cgroup CPU quota (v2 and v1 layouts)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kerve.server import cpus


def _v2(root: Path, text: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "cpu.max").write_text(text + "\n")
    return root


def _v1(root: Path, quota: str, period: str = "100000") -> Path:
    (root / "cpu").mkdir(parents=True, exist_ok=True)
    (root / "cpu" / "cpu.cfs_quota_us").write_text(quota + "\n")
    (root / "cpu" / "cpu.cfs_period_us").write_text(period + "\n")
    return root


@pytest.mark.parametrize(
    ("text", "limit"), [("max 100000", None), ("200000 100000", 2.0), ("150000 100000", 1.5), ("50000", 0.5)]
)
def test_cgroup_v2_quota(tmp_path: Path, text: str, limit: float | None) -> None:
    assert cpus.cgroup_cpu_limit(_v2(tmp_path, text)) == limit


@pytest.mark.parametrize(("quota", "period", "limit"), [("-1", "100000", None), ("400000", "100000", 4.0)])
def test_cgroup_v1_quota(tmp_path: Path, quota: str, period: str, limit: float | None) -> None:
    assert cpus.cgroup_cpu_limit(_v1(tmp_path, quota, period)) == limit


def test_no_cgroup_files_or_garbage_mean_no_quota(tmp_path: Path) -> None:
    assert cpus.cgroup_cpu_limit(tmp_path) is None
    assert cpus.cgroup_cpu_limit(_v2(tmp_path / "bad", "lots 100000")) is None
    assert cpus.cgroup_cpu_limit(_v1(tmp_path / "zero", "100000", "0")) is None


def test_usable_cores_rounds_the_quota_up_and_never_exceeds_the_affinity(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cpus, "schedulable_cores", lambda: 8)
    assert cpus.usable_cores(tmp_path / "none") == 8
    assert cpus.usable_cores(_v2(tmp_path / "a", "150000 100000")) == 2
    assert cpus.usable_cores(_v2(tmp_path / "b", "10000 100000")) == 1
    assert cpus.usable_cores(_v2(tmp_path / "c", "1600000 100000")) == 8
