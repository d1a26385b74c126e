"""SerialTraffic: only a run of arrivals that each found the server empty counts as serial traffic."""

from __future__ import annotations

import pytest

from kerve.server.serial_traffic import SERIAL_RUN, SerialTraffic


def serial(traffic: SerialTraffic, requests: int) -> list[bool]:
    """`requests` one after another, each ending before the next arrives."""
    seen = []
    for _ in range(requests):
        seen.append(traffic.arrive())
        traffic.leave()
    return seen


def test_requests_one_at_a_time_count_after_a_run_of_them() -> None:
    traffic = SerialTraffic(needed=3)
    assert serial(traffic, 6) == [False, False, False, True, True, True]
    assert traffic.live == 0


def test_an_overlap_starts_the_run_again_and_an_overlapping_request_is_never_alone() -> None:
    traffic = SerialTraffic(needed=2)
    assert serial(traffic, 3)[-1]
    first = traffic.arrive()
    assert first and not traffic.arrive()  # the second arrives while the first is in flight
    traffic.leave()
    traffic.leave()
    assert serial(traffic, 3) == [False, False, True]


def test_the_default_run_and_its_validation() -> None:
    assert serial(SerialTraffic(), SERIAL_RUN + 2) == [False] * SERIAL_RUN + [True, True]
    with pytest.raises(ValueError, match="needed must be >= 1"):
        SerialTraffic(needed=0)
