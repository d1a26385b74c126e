"""Triton's metrics under Triton's names (server/triton_metrics.py), without TensorFlow: read from the versions'
statistics at each push, exposed without a `_total` suffix, failures by Triton's reasons, cache families only for
models that use the cache, a re-placed version's two copies counted once, an unloaded version's series gone, and a
failing update that cannot break a scrape."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from kerve.server.metrics import Metrics
from kerve.server.model_config import ModelConfig
from kerve.server.stats import VersionStats
from kerve.server.triton_metrics import TritonMetrics


@dataclass
class Version:
    model: str
    version: int
    stats: VersionStats = field(default_factory=VersionStats)
    pending: int = 0
    config: ModelConfig = field(default_factory=ModelConfig)


def sample(metrics: Metrics, name: str, model: str = "m", version: str = "1") -> float | None:
    return metrics.registry.get_sample_value(name, {"model": model, "version": version})


def served(*versions: Version) -> tuple[Metrics, list[Version]]:
    metrics = Metrics(CollectorRegistry())
    serving = list(versions)
    metrics.add_pusher(TritonMetrics(metrics.registry, lambda: serving).update)
    return metrics, serving


def test_statistics_appear_under_tritons_names_and_units() -> None:
    stats = VersionStats()
    for _ in range(3):
        stats.record_success(0.010, 4, 0.002, 0.0001, 0.005, 0.0002, 1.0)
    stats.record_failure(0.001, "BACKEND")
    stats.record_failure(0.001, "REJECTED")
    stats.record_failure(0.001, "REJECTED")
    stats.record_execution(8, 0.0001, 0.005, 0.0002)
    stats.record_execution(4, 0.0001, 0.005, 0.0002)
    metrics, _ = served(Version("m", 1, stats, pending=2))
    text = generate_latest(metrics.registry).decode()  # a scrape: pushes first
    assert 'nv_inference_request_success{model="m",version="1"} 3.0' in text  # Triton's name, no _total
    failures = {
        reason: metrics.registry.get_sample_value(
            "nv_inference_request_failure", {"model": "m", "version": "1", "reason": reason}
        )
        for reason in ("REJECTED", "CANCELED", "BACKEND", "OTHER")
    }
    assert failures == {"REJECTED": 2, "CANCELED": 0, "BACKEND": 1, "OTHER": 0}  # Triton's reasons, all shown
    assert sample(metrics, "nv_inference_count") == 12 and sample(metrics, "nv_inference_exec_count") == 2
    assert sample(metrics, "nv_inference_request_duration_us") == pytest.approx(30_000)
    assert sample(metrics, "nv_inference_queue_duration_us") == pytest.approx(6_000)
    assert sample(metrics, "nv_inference_compute_input_duration_us") == pytest.approx(300)
    assert sample(metrics, "nv_inference_compute_infer_duration_us") == pytest.approx(15_000)
    assert sample(metrics, "nv_inference_compute_output_duration_us") == pytest.approx(600)
    assert sample(metrics, "nv_inference_pending_request_count") == 2
    assert sample(metrics, "nv_cache_num_hits_per_model") is None  # the model does not use the cache
    stats.record_success(0.010, 1, 0.002, 0.0001, 0.005, 0.0002, 2.0)
    metrics.push()  # values follow the statistics at every push
    assert sample(metrics, "nv_inference_request_success") == 4


def test_cache_families_for_models_that_use_the_cache() -> None:
    stats = VersionStats()
    stats.record_cache_hit(0.001, 0.00002, 1.0)
    stats.cache_miss.add(0.00005)
    metrics, _ = served(Version("m", 1, stats, config=ModelConfig(response_cache=True)))
    metrics.push()
    assert sample(metrics, "nv_cache_num_hits_per_model") == 1
    assert sample(metrics, "nv_cache_num_misses_per_model") == 1
    assert sample(metrics, "nv_cache_hit_duration_per_model") == pytest.approx(20)
    assert sample(metrics, "nv_cache_miss_duration_per_model") == pytest.approx(50)
    assert sample(metrics, "nv_inference_count") == 0  # a hit is no inference


def test_a_re_placed_version_counts_once_and_an_unloaded_one_disappears() -> None:
    shared = VersionStats()
    shared.record_success(0.01, 1, 0.001, 0.0, 0.005, 0.0, 1.0)
    old, new = Version("m", 1, shared, pending=1), Version("m", 1, shared, pending=3)
    other = Version("n", 2, config=ModelConfig(response_cache=True))
    metrics, serving = served(old, new, other)
    metrics.push()
    assert sample(metrics, "nv_inference_request_success") == 1  # the copies share their statistics
    assert sample(metrics, "nv_inference_pending_request_count") == 4  # requests waiting on both copies
    assert sample(metrics, "nv_cache_num_hits_per_model", "n", "2") == 0
    serving[:] = [new]
    metrics.push()
    assert sample(metrics, "nv_inference_pending_request_count") == 3
    assert sample(metrics, "nv_inference_request_success", "n", "2") is None
    assert sample(metrics, "nv_cache_num_hits_per_model", "n", "2") is None
    assert sample(metrics, "nv_inference_pending_request_count", "n", "2") is None
    gone = {"model": "n", "version": "2", "reason": "OTHER"}
    assert metrics.registry.get_sample_value("nv_inference_request_failure", gone) is None


def test_a_failing_update_is_logged_and_the_scrape_still_answers(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics(CollectorRegistry())

    def broken() -> list[Any]:
        raise RuntimeError("manager gone")

    metrics.add_pusher(TritonMetrics(metrics.registry, broken).update)
    metrics.observe_request("m", "1", "v2", "OK", 0.01)
    with caplog.at_level(logging.ERROR, logger="kerve.server.metrics"):
        text = generate_latest(metrics.registry).decode()
    assert 'kerve_requests_total{code="OK",model="m",protocol="v2",version="1"} 1.0' in text
    assert "updating derived metrics failed" in caplog.text


def test_failures_sort_into_tritons_reasons() -> None:
    """Admission refusals and queue expiry are the scheduler's rejections; what the model's run raised is the
    backend's (its own RESOURCE_EXHAUSTED is running out of memory, not a full queue); bad inputs and unloading are
    other."""
    from kerve.server.errors import ErrorCode
    from kerve.server.stats import failure_reason

    assert failure_reason(ErrorCode.CANCELLED, False) == failure_reason(ErrorCode.CANCELLED, True) == "CANCELED"
    assert failure_reason(ErrorCode.RESOURCE_EXHAUSTED, False) == "REJECTED"  # queue full
    assert failure_reason(ErrorCode.DEADLINE_EXCEEDED, False) == "REJECTED"  # expired before it was queued
    assert failure_reason(ErrorCode.DEADLINE_EXCEEDED, True) == "REJECTED"  # expired in the queue
    assert failure_reason(ErrorCode.RESOURCE_EXHAUSTED, True) == "BACKEND"  # the model ran out of memory
    assert failure_reason(ErrorCode.INTERNAL, True) == failure_reason(ErrorCode.INVALID_ARGUMENT, True) == "BACKEND"
    assert failure_reason(ErrorCode.INVALID_ARGUMENT, False) == "OTHER"  # failed validation
    assert failure_reason(ErrorCode.UNAVAILABLE, True) == failure_reason(ErrorCode.NOT_FOUND, False) == "OTHER"
    assert failure_reason(ErrorCode.UNAVAILABLE, True, shed=True) == "REJECTED"  # a queue policy's timeout
    stats = VersionStats()
    stats.record_failure(0.5, "CANCELED")
    stats.record_failure(0.25)
    assert stats.fail.count == 2 and stats.fail.seconds == 0.75
    assert stats.fail_reasons == {"REJECTED": 0, "CANCELED": 1, "BACKEND": 0, "OTHER": 1}


def test_pending_counts_the_requests_waiting_in_a_versions_batchers_not_the_running_ones() -> None:
    """As Triton's nv_inference_pending_request_count: requests awaiting execution, read from the served
    ModelVersion's batchers (one per signature) from the thread that pushes metrics."""
    import asyncio
    import threading
    from pathlib import Path

    import numpy as np

    from kerve.server.batcher import Batcher, BatchingConfig
    from kerve.server.manager import ModelVersion, VersionState

    release, started = threading.Event(), threading.Event()

    def model(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        started.set()
        assert release.wait(5.0)
        return {"y": inputs["x"]}

    async def main() -> None:
        config = BatchingConfig(max_batch_size=4, max_queue_delay_s=0)
        entry = ModelVersion("m", 1, Path("."), state=VersionState.READY)
        entry.batchers = {"a": Batcher([model], config), "b": Batcher([model], config)}
        metrics, _ = served(entry)  # type: ignore[arg-type]
        one = np.zeros((1, 1), np.float32)
        running = asyncio.ensure_future(entry.batchers["a"].submit({"x": one}))
        assert await asyncio.to_thread(started.wait, 5.0)
        waiting = [asyncio.ensure_future(entry.batchers[key].submit({"x": one})) for key in "aab"]
        for _ in range(50):  # loop turns: the "b" request starts on its own idle batcher, the two "a" ones queue
            await asyncio.sleep(0)
        await asyncio.to_thread(metrics.push)  # from another thread, as the periodic push and scrapes do
        assert sample(metrics, "nv_inference_pending_request_count") == 2
        release.set()
        await asyncio.gather(running, *waiting)
        await asyncio.to_thread(metrics.push)
        assert sample(metrics, "nv_inference_pending_request_count") == 0
        for batcher in entry.batchers.values():
            await batcher.close()

    asyncio.run(asyncio.wait_for(main(), 10.0))
