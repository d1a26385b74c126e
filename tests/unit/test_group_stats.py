"""ModelStatistics over a --processes group (server/group_stats.py, stats.summed), without a server: a process's
counts survive the trip through its file, the others' add up with a process's own, a process never counts its own
file, unchanged counts are not written again, and an unreadable file is logged and skipped."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from kerve.server.group_stats import GroupStats
from kerve.server.stats import DURATIONS, REJECTED, VersionStats, summed


def served(requests: int, batch: int, last: float) -> VersionStats:
    stats = VersionStats()
    for _ in range(requests):
        stats.record_success(0.01, 2, 0.002, 0.001, 0.005, 0.001, now=last)
    stats.record_execution(batch, 0.001, 0.005, 0.001)
    stats.record_failure(0.003, REJECTED)
    stats.record_cache_hit(0.0005, 0.0001, now=last)
    return stats


def test_counts_survive_the_record_round_trip() -> None:
    stats = served(3, 4, last=100.0)
    back = VersionStats.from_record(stats.to_record())
    assert back == stats


def test_summed_adds_every_count_and_keeps_the_latest_inference() -> None:
    a, b = served(3, 4, last=100.0), served(2, 8, last=250.0)
    total = summed([a, b])
    assert total.success.count == 3 + 1 + 2 + 1  # cache hits are successes too
    assert total.success.seconds == pytest.approx(a.success.seconds + b.success.seconds)
    assert total.inference_count == 6 + 4 and total.execution_count == 2
    assert sorted(total.batch_sizes) == [4, 8]
    assert total.batch_sizes[4].compute_infer.count == 1 and total.batch_sizes[8].compute_infer.count == 1
    assert total.fail_reasons[REJECTED] == 2 and total.cache_hit.count == 2
    assert total.last_inference_monotonic == 250.0
    for name in DURATIONS:
        assert getattr(total, name).count == getattr(a, name).count + getattr(b, name).count
    assert summed([VersionStats()]).last_inference_monotonic is None  # none yet stays none
    assert a.success.count == 4 and a.batch_sizes[4].compute_infer.count == 1  # the parts are not touched


def test_a_process_reads_the_others_files_not_its_own(tmp_path: Path) -> None:
    p0, p1, p2 = (GroupStats(tmp_path, i) for i in range(3))
    assert p0.others() == {}  # nothing published yet
    p0.publish([("cnn", 1, served(1, 1, last=1.0))])
    p1.publish([("cnn", 1, served(2, 2, last=2.0)), ("cnn", 2, served(5, 8, last=3.0))])
    p2.publish([])
    seen = p0.others()
    assert sorted(seen) == [("cnn", 1), ("cnn", 2)]
    assert [s.success.count for s in seen[("cnn", 1)]] == [3]  # p1's only: p0's own counts are live
    assert sorted(s.success.count for s in p2.others()[("cnn", 1)]) == [2, 3]


def test_unchanged_counts_are_not_written_again(tmp_path: Path) -> None:
    p0 = GroupStats(tmp_path, 0)
    stats = served(1, 1, last=1.0)
    p0.publish([("cnn", 1, stats)])
    path = tmp_path / "stats.p0.json"
    path.write_text("[]")  # a marker: a second write would replace it
    p0.publish([("cnn", 1, stats)])
    assert path.read_text() == "[]"
    stats.record_failure(0.1)
    p0.publish([("cnn", 1, stats)])
    assert GroupStats(tmp_path, 1).others()[("cnn", 1)][0].fail.count == 2
    assert not list(tmp_path.glob("*.tmp"))  # written whole, then renamed


def test_an_unreadable_file_is_logged_and_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    GroupStats(tmp_path, 1).publish([("cnn", 1, served(2, 2, last=2.0))])
    (tmp_path / "stats.p2.json").write_text('[{"model": "cnn"')  # cut short
    with caplog.at_level(logging.ERROR, logger="kerve.server.group_stats"):
        seen = GroupStats(tmp_path, 0).others()
    assert [s.success.count for s in seen[("cnn", 1)]] == [3]
    assert "stats.p2.json" in caplog.text
