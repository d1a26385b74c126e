"""Replica placement over devices (server/placement.py), without TensorFlow."""

from __future__ import annotations

import threading

import pytest

from kerve.server.placement import Placer

GPUS = ("/device:GPU:0", "/device:GPU:1", "/device:GPU:2")


def test_no_count_or_a_count_above_the_devices_means_every_device() -> None:
    placer = Placer(GPUS)
    assert placer.acquire(None) == list(GPUS)
    assert placer.acquire(5) == list(GPUS)
    assert placer.held() == dict.fromkeys(GPUS, 2)


def test_single_replica_models_spread_over_the_least_occupied_devices() -> None:
    placer = Placer(GPUS)
    assert placer.acquire(1) == [GPUS[0]]
    assert placer.acquire(1) == [GPUS[1]]
    assert placer.acquire(2) == [GPUS[0], GPUS[2]]  # GPU:2 is empty; GPU:0 wins the tie on order
    assert placer.held() == {GPUS[0]: 2, GPUS[1]: 1, GPUS[2]: 1}
    assert placer.acquire(1) == [GPUS[1]]


def test_release_returns_devices_for_the_next_load() -> None:
    placer = Placer(GPUS[:2])
    first = placer.acquire(1)
    second = placer.acquire(1)
    assert first != second
    placer.release(first)
    assert placer.acquire(1) == first  # the version that replaced it goes where room was freed
    placer.release(first)
    placer.release(second)
    assert placer.held() == dict.fromkeys(GPUS[:2], 0)
    with pytest.raises(ValueError, match="holds no replica"):
        placer.release(first)


def test_invalid_requests() -> None:
    with pytest.raises(ValueError, match="at least one device"):
        Placer(())
    with pytest.raises(ValueError, match="replicas must be >= 1"):
        Placer(GPUS).acquire(0)


def test_concurrent_loads_each_get_a_device() -> None:
    """Versions load on several executor threads at once: every acquire must see the others' placements."""
    placer = Placer(tuple(f"/device:CPU:{i}" for i in range(8)))
    barrier = threading.Barrier(8)
    got: list[list[str]] = []

    def load() -> None:
        barrier.wait(timeout=10)
        got.append(placer.acquire(1))

    threads = [threading.Thread(target=load) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert sorted(d for devices in got for d in devices) == sorted(placer.devices)
