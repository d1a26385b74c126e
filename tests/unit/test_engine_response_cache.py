"""The response cache in the engine, with a fake model (no TF): a repeated request of a model that opted in is
answered without a model call and counted as Triton counts it (success, queue and cache_hit, no compute, no
inference_count); a miss is stored after it succeeds; failures, other inputs, other outputs and models that did not
opt in never hit; an unloaded version's entries go."""

from __future__ import annotations

import asyncio
import dataclasses
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry
from test_engine_calls import Manager, Model, count, inflight

from kerve.server.batcher import BatchingConfig
from kerve.server.errors import ErrorCode, ServingError
from kerve.server.inference import InferenceEngine
from kerve.server.manager import ModelVersion
from kerve.server.metrics import Metrics
from kerve.server.response_cache import ResponseCache
from kerve.server.types import InferRequest


def cached_engine(
    model: Model, opted_in: bool = True, cache_bytes: int = 1 << 20
) -> tuple[InferenceEngine, Manager, Metrics, ResponseCache]:
    entry = ModelVersion("m", 1, Path("/nowhere"))
    entry.servable = model
    entry.config = dataclasses.replace(entry.config, response_cache=opted_in)
    manager = Manager(entry)
    metrics = Metrics(CollectorRegistry())
    cache = ResponseCache(cache_bytes)
    engine = InferenceEngine(manager, ThreadPoolExecutor(2), metrics, BatchingConfig(), cache=cache)  # type: ignore[arg-type]
    return engine, manager, metrics, cache


def request(value: float, outputs: list[str] | None = None) -> InferRequest:
    return InferRequest(model="m", inputs={"x": np.full((1, 2), value, np.float32)}, outputs=outputs)


def lookups(metrics: Metrics, result: str) -> float:
    labels = {"model": "m", "result": result}
    return metrics.registry.get_sample_value("kerve_response_cache_lookups_total", labels) or 0.0


def test_a_repeated_request_is_answered_from_the_cache_without_a_model_call() -> None:
    model = Model()
    engine, manager, metrics, cache = cached_engine(model)

    async def main() -> None:
        first = await engine.infer(request(3.0))
        again = await engine.infer(request(3.0))
        other = await engine.infer(request(4.0))
        np.testing.assert_array_equal(first.outputs["y"], [[6.0, 6.0]])
        np.testing.assert_array_equal(again.outputs["y"], first.outputs["y"])
        assert (again.model, again.version, set(again.output_specs)) == ("m", 1, {"y"})
        np.testing.assert_array_equal(other.outputs["y"], [[8.0, 8.0]])

    asyncio.run(main())
    assert model.calls == [1, 1]  # the repeat never reached the model
    stats = manager.entry.stats
    assert (stats.cache_hit.count, stats.cache_miss.count) == (1, 2)
    assert stats.cache_hit.seconds > 0 and stats.cache_miss.seconds > 0
    assert stats.success.count == 3  # hits are successes
    assert stats.compute_infer.count == 2 and stats.execution_count == 2  # misses only
    assert stats.queue.count == 3  # Triton's queue statistics include cache hits (arrival to lookup)
    assert stats.inference_count == 2  # Triton: cache hits are not inferences
    assert (lookups(metrics, "hit"), lookups(metrics, "miss")) == (1, 2)
    assert metrics.registry.get_sample_value("kerve_response_cache_bytes") == cache.bytes > 0
    assert count(metrics, "OK") == 3 and inflight(metrics) == 0 and manager.entry.inflight == 0
    assert len(cache) == 2


def test_failures_are_not_stored_and_other_inputs_miss() -> None:
    model = Model()
    engine, manager, _, cache = cached_engine(model)

    async def main() -> None:
        model.fail = RuntimeError("boom")
        for _ in range(2):  # a failure is not stored: the retry runs the model again
            try:
                await engine.infer(request(1.0))
            except ServingError as exc:
                assert exc.code is ErrorCode.INTERNAL
        model.fail = None
        await engine.infer(request(1.0))
        await engine.infer(request(1.0, outputs=["y"]))  # naming the only output is the same selection: a hit
        await engine.infer(InferRequest(model="m", inputs={"x": np.full((2, 2), 1.0, np.float32)}))  # 2 rows

    asyncio.run(main())
    assert model.calls == [1, 1, 1, 2]
    stats = manager.entry.stats
    assert (stats.cache_hit.count, stats.cache_miss.count) == (1, 4)  # failed requests' lookups missed too
    assert len(cache) == 2 and stats.fail.count == 2


def test_a_model_that_did_not_opt_in_is_never_cached() -> None:
    model = Model()
    engine, manager, metrics, cache = cached_engine(model, opted_in=False)

    async def main() -> None:
        for _ in range(3):
            await engine.infer(request(2.0))

    asyncio.run(main())
    assert model.calls == [1, 1, 1] and len(cache) == 0
    assert manager.entry.stats.cache_hit.count == manager.entry.stats.cache_miss.count == 0
    assert lookups(metrics, "hit") == lookups(metrics, "miss") == 0


def test_a_hit_in_a_stream_and_an_unloaded_versions_entries() -> None:
    """A hit completes inside `start`, before the caller holds the call: the completion must take it then."""
    model = Model()
    engine, manager, _, cache = cached_engine(model)

    async def main() -> None:
        await engine.infer(request(5.0))
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        call = engine.start(request(5.0), future)  # type: ignore[arg-type]
        assert future.done() and call.finished
        assert model.calls == [1]

    asyncio.run(main())
    assert len(cache) == 1
    engine.forget(manager.entry)  # what the manager's forget hook does
    assert len(cache) == 0 and cache.bytes == 0
