"""A request's life through the engine, with a fake model (no TF call, no server): whichever way it ends (outputs,
model error, rejection, client cancellation, a stream torn down), the version is released, the in-flight gauge
drops once, the right status is counted, and an abandoned request never reaches the model."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from kerve.server.batcher import BatchingConfig
from kerve.server.errors import ErrorCode, ServingError, not_found
from kerve.server.inference import InferenceEngine
from kerve.server.manager import ModelVersion
from kerve.server.metrics import UNKNOWN_MODEL, Metrics
from kerve.server.serial_traffic import SERIAL_RUN
from kerve.server.trace import Tracer
from kerve.server.types import InferRequest, TensorSpec

SPEC_IN = {"x": TensorSpec("x", np.dtype(np.float32), (None, 2))}
SPEC_OUT = {"y": TensorSpec("y", np.dtype(np.float32), (None, 2))}


class Model:
    """Doubles its input; `gate` (when set) holds every call until released, so requests stay in flight."""

    def __init__(self, batched: bool = True) -> None:
        self.key = "serving_default"
        self.inputs = SPEC_IN if batched else {"x": TensorSpec("x", np.dtype(np.float32), (3, 2))}
        self.outputs = SPEC_OUT
        self.runner_devices = ["cpu"]
        self.calls: list[int] = []
        self.seen: list[float] = []  # every row's first value, in the order the model ran them
        self.gate: threading.Event | None = None
        self.fail: Exception | None = None

    def signature(self, key: str | None = None) -> Model:
        return self

    def runners(self, key: str) -> list[Any]:
        return [self.run]

    def run(self, inputs: Mapping[str, np.ndarray], output_names: Any = None) -> dict[str, np.ndarray]:
        self.calls.append(len(inputs["x"]))
        self.seen += [float(v) for v in inputs["x"][:, 0]]
        if self.gate is not None:
            assert self.gate.wait(10)
        if self.fail is not None:
            raise self.fail
        return {"y": inputs["x"] * 2}


class Manager:
    def __init__(self, entry: ModelVersion) -> None:
        self.entry = entry
        self.released = 0

    def knows(self, model: str) -> bool:
        return model == self.entry.model

    def acquire(self, model: str, version: int | None = None, label: str | None = None) -> ModelVersion:
        if model != self.entry.model:
            raise not_found(f"model {model!r} not found")
        self.entry.inflight += 1
        return self.entry

    def release(self, entry: ModelVersion) -> None:
        entry.inflight -= 1
        self.released += 1

    def snapshot(self) -> list[ModelVersion]:
        return [self.entry]


def setup(
    model: Model, batching: BatchingConfig | None = BatchingConfig(), inline_call_max_s: float = 0.0
) -> tuple[InferenceEngine, Manager, Metrics]:
    entry = ModelVersion("m", 1, Path("/nowhere"))
    entry.servable = model
    manager = Manager(entry)
    metrics = Metrics(CollectorRegistry())
    engine = InferenceEngine(
        manager,  # type: ignore[arg-type]
        ThreadPoolExecutor(2),
        metrics,
        batching,
        inline_call_max_s=inline_call_max_s,
    )
    return engine, manager, metrics


def count(metrics: Metrics, code: str, version: str = "1", model: str = "m") -> float:
    """As a scrape reads it (which pushes the engine's tallies first)."""
    labels = {"model": model, "version": version, "protocol": "v2", "code": code}
    return metrics.registry.get_sample_value("kerve_requests_total", labels) or 0.0


def inflight(metrics: Metrics) -> float:
    return metrics.registry.get_sample_value("kerve_inflight_requests", {"model": "m"}) or 0.0


def request(rows: int = 1, model: str = "m", deadline: float | None = None) -> InferRequest:
    return InferRequest(model=model, inputs={"x": np.ones((rows, 2), np.float32)}, deadline=deadline)


@pytest.mark.parametrize("batched", [True, False])
def test_outputs_release_and_count_ok(batched: bool) -> None:
    model = Model(batched)
    engine, manager, metrics = setup(model)

    async def main() -> None:
        rows = 2 if batched else 3
        response = await engine.infer(request(rows))
        np.testing.assert_array_equal(response.outputs["y"], np.full((rows, 2), 2, np.float32))
        assert response.version == 1 and set(response.output_specs) == {"y"}

    asyncio.run(main())
    assert manager.entry.inflight == 0 and manager.released == 1
    assert count(metrics, "OK") == 1 and inflight(metrics) == 0
    assert manager.entry.stats.inference_count == (2 if batched else 3)
    assert manager.entry.stats.execution_count == 1  # the model call was recorded on either path


@pytest.mark.parametrize("batched", [True, False])
def test_model_error_is_internal_and_released(batched: bool) -> None:
    model = Model(batched)
    model.fail = RuntimeError("boom")
    engine, manager, metrics = setup(model)

    async def main() -> None:
        with pytest.raises(ServingError) as info:
            await engine.infer(request(2 if batched else 3))
        assert info.value.code is ErrorCode.INTERNAL and "boom" in info.value.message

    asyncio.run(main())
    assert manager.entry.inflight == 0 and count(metrics, "INTERNAL") == 1 and inflight(metrics) == 0
    assert manager.entry.stats.fail.count == 1 and manager.entry.stats.fail_reasons["BACKEND"] == 1


def test_rejections_raise_from_start_and_are_counted() -> None:
    model = Model()
    model.gate = threading.Event()
    engine, manager, metrics = setup(model, BatchingConfig(max_queued=4))

    async def main() -> None:
        with pytest.raises(ServingError) as info:  # unknown model: no version was acquired
            engine.start(request(model="nope"), asyncio.get_running_loop().create_future())
        assert info.value.code is ErrorCode.NOT_FOUND
        bad = InferRequest(model="m", inputs={"x": np.ones((1, 3), np.float32)})
        with pytest.raises(ServingError) as info:  # wrong shape: released again
            engine.start(bad, asyncio.get_running_loop().create_future())
        assert info.value.code is ErrorCode.INVALID_ARGUMENT and "'x'" in info.value.message
        running = asyncio.ensure_future(engine.infer(request(rows=3)))  # holds the replica
        while not model.calls:
            await asyncio.sleep(0.001)
        queued = asyncio.ensure_future(engine.infer(request(rows=2)))
        await asyncio.sleep(0)
        with pytest.raises(ServingError) as info:  # more rows than the queue has room for
            engine.start(request(rows=3), asyncio.get_running_loop().create_future())
        assert info.value.code is ErrorCode.RESOURCE_EXHAUSTED
        model.gate.set()
        await asyncio.gather(running, queued)

    asyncio.run(main())
    assert count(metrics, "NOT_FOUND", version="", model=UNKNOWN_MODEL) == 1
    assert count(metrics, "INVALID_ARGUMENT") == 1 and count(metrics, "RESOURCE_EXHAUSTED") == 1
    assert manager.entry.inflight == 0 and manager.released == 4 and inflight(metrics) == 0
    assert engine.traffic.live == 0  # a rejected request left the serial-traffic count too
    reasons = manager.entry.stats.fail_reasons  # Triton's: a full queue is the scheduler's rejection
    assert reasons == {"REJECTED": 1, "CANCELED": 0, "BACKEND": 0, "OTHER": 1}


def test_cancelled_requests_never_run_and_are_released() -> None:
    """One request occupies the only replica; the ones queued behind it are cancelled (a unary caller's task,
    and a stream dropping its pending calls): they never reach the model, and each is counted CANCELLED once."""
    model = Model()
    model.gate = threading.Event()
    engine, manager, metrics = setup(model, BatchingConfig(max_batch_size=1))
    engine._executor = ThreadPoolExecutor(1)

    async def main() -> None:
        running = asyncio.ensure_future(engine.infer(request()))
        while not model.calls:  # the first request is in the model
            await asyncio.sleep(0.001)
        unary = asyncio.ensure_future(engine.infer(request()))
        streamed = engine.start(request(), asyncio.get_running_loop().create_future())
        await asyncio.sleep(0.01)
        unary.cancel()
        streamed.cancel()
        streamed.cancel()  # twice is harmless
        with pytest.raises(asyncio.CancelledError):
            await unary
        assert streamed.completion.cancelled()
        assert manager.entry.inflight == 1 and inflight(metrics) == 1  # only the running one is left
        model.gate.set()
        await running

    asyncio.run(main())
    assert model.calls == [1]  # the cancelled requests never ran
    assert count(metrics, "CANCELLED") == 2 and count(metrics, "OK") == 1
    assert manager.entry.inflight == 0 and manager.released == 3 and inflight(metrics) == 0
    assert engine.traffic.live == 0
    stats = manager.entry.stats  # failures in ModelStatistics, as Triton counts a cancelled request
    assert stats.fail.count == 2 and stats.fail_reasons["CANCELED"] == 2 and stats.success.count == 1


def test_a_requests_priority_orders_the_queue() -> None:
    """InferRequest.priority reaches the batcher: with the model's priority levels, level 1 runs first."""
    model = Model()
    model.gate = threading.Event()
    engine, manager, _ = setup(model, BatchingConfig(max_batch_size=1, priority_levels=2))

    def valued(value: float, priority: int) -> InferRequest:
        return InferRequest(model="m", inputs={"x": np.full((1, 2), value, np.float32)}, priority=priority)

    async def main() -> None:
        running = asyncio.ensure_future(engine.infer(valued(0, 0)))
        while not model.calls:
            await asyncio.sleep(0.001)
        queued = [asyncio.ensure_future(engine.infer(valued(v, p))) for v, p in ((1, 0), (2, 2), (3, 1))]
        (batcher,) = manager.entry.batchers.values()
        while batcher.queued_samples < 3:
            await asyncio.sleep(0.001)
        model.gate.set()
        await asyncio.gather(running, *queued)

    asyncio.run(main())
    assert model.seen == [0, 3, 1, 2]  # no priority: the default level, the lowest (2), in arrival order


@pytest.mark.parametrize("batched", [True, False])
def test_a_traced_request_records_its_timestamps_in_order(batched: bool, tmp_path: Path) -> None:
    """Batched or run alone, a traced request's seven timestamps come out in Triton's order; a failed one has its
    start and end."""
    model = Model(batched)
    engine, _, _ = setup(model)
    engine.tracer = Tracer(tmp_path / "trace.json", level="TIMESTAMPS", rate=1)

    async def main() -> None:
        await engine.infer(request(2 if batched else 3))
        model.fail = RuntimeError("boom")
        with pytest.raises(ServingError):
            await engine.infer(request(2 if batched else 3))

    asyncio.run(main())
    engine.tracer.close()
    ok, failed = json.loads((tmp_path / "trace.json").read_text())
    names = [
        "REQUEST_START", "QUEUE_START", "COMPUTE_START", "COMPUTE_INPUT_END", "COMPUTE_OUTPUT_START", "COMPUTE_END",
        "REQUEST_END",
    ]  # fmt: skip
    assert [t["name"] for t in ok["timestamps"]] == names
    times = [t["ns"] for t in ok["timestamps"]]
    assert times == sorted(times) and times[2] > times[0]  # the model's call, not zeros
    assert (ok["model_name"], ok["model_version"]) == ("m", 1)
    assert [t["name"] for t in failed["timestamps"]] == ["REQUEST_START", "REQUEST_END"]


def test_deadline_passed_in_the_queue() -> None:
    model = Model()
    model.gate = threading.Event()
    engine, manager, metrics = setup(model, BatchingConfig(max_batch_size=1))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        running = asyncio.ensure_future(engine.infer(request()))
        while not model.calls:
            await asyncio.sleep(0.001)
        late = engine.start(request(deadline=loop.time() + 0.01), asyncio.get_running_loop().create_future())
        await asyncio.sleep(0.05)
        model.gate.set()  # the replica frees up after the deadline: the queued request is failed, not run
        await running
        with pytest.raises(ServingError) as info:
            await late.completion
        assert info.value.code is ErrorCode.DEADLINE_EXCEEDED

    asyncio.run(main())
    assert model.calls == [1] and count(metrics, "DEADLINE_EXCEEDED") == 1
    assert manager.entry.inflight == 0 and inflight(metrics) == 0
    assert manager.entry.stats.fail_reasons["REJECTED"] == 1  # expired in the queue: the scheduler's


def test_statistics_count_queue_and_compute_per_request_and_executions_per_batch() -> None:
    """Triton's ModelStatistics semantics: inference_stats.queue / compute_input / compute_infer / compute_output
    count requests (each its own wait until its batch's execution, and that execution's phases); execution_count and
    batch_stats count model calls."""
    model = Model()
    model.gate = threading.Event()
    engine, manager, _ = setup(model, BatchingConfig(max_batch_size=4))

    async def main() -> float:
        running = asyncio.ensure_future(engine.infer(request()))
        while not model.calls:
            await asyncio.sleep(0.001)
        queued = [asyncio.ensure_future(engine.infer(request())) for _ in range(3)]
        (batcher,) = manager.entry.batchers.values()
        while batcher.queued_samples < 3:
            await asyncio.sleep(0.001)
        all_queued = time.monotonic()
        await asyncio.sleep(0.02)  # a measurable wait in the queue (and in the first call), not a wait for an event
        released = time.monotonic()
        model.gate.set()
        await asyncio.gather(running, *queued)
        return released - all_queued

    held = asyncio.run(main())
    stats = manager.entry.stats
    assert model.calls == [1, 3]
    phases = (stats.compute_input, stats.compute_infer, stats.compute_output)
    assert stats.success.count == stats.queue.count == 4 and [d.count for d in phases] == [4, 4, 4]
    assert stats.execution_count == 2
    for durations in (stats.batch_sizes[1], stats.batch_sizes[3]):
        per_batch = (durations.compute_input, durations.compute_infer, durations.compute_output)
        assert [d.count for d in per_batch] == [1, 1, 1]
        assert durations.compute_input.seconds > 0 and durations.compute_output.seconds > 0
    assert sorted(stats.batch_sizes) == [1, 3]
    assert stats.batch_sizes[1].compute_infer.seconds >= held  # the first call was held
    assert stats.queue.seconds >= 3 * held  # the three queued requests each waited at least that long
    assert stats.compute_infer.seconds >= held  # the first request's call was held at least as long
    assert stats.compute_input.seconds > 0 and stats.compute_output.seconds > 0  # measured, not zeros
    assert stats.success.seconds >= stats.queue.seconds + sum(d.seconds for d in phases)
    assert abs(stats.last_inference_ms / 1000 - time.time()) < 5


def test_a_requests_timeout_reaches_the_batchers_queue_policy() -> None:
    """InferRequest.timeout_s: under a queue policy that allows overrides it is the request's queue timeout, so the
    request is answered when it strikes, while the model is still busy; without one it is a deadline."""
    model = Model()
    model.gate = threading.Event()
    policy = {"timeout_s": 60.0, "allow_timeout_override": True}
    engine, manager, metrics = setup(model, BatchingConfig(max_batch_size=1, queue_policy=policy))

    async def main() -> None:
        running = asyncio.ensure_future(engine.infer(request()))
        while not model.calls:
            await asyncio.sleep(0.001)
        timed = InferRequest(model="m", inputs={"x": np.ones((1, 2), np.float32)}, timeout_s=0.01)
        with pytest.raises(ServingError) as info:
            await asyncio.wait_for(engine.infer(timed), 10)
        assert info.value.code is ErrorCode.DEADLINE_EXCEEDED and "in the queue" in info.value.message
        assert not running.done()
        model.gate.set()
        await running

    asyncio.run(main())
    assert model.calls == [1] and count(metrics, "DEADLINE_EXCEEDED") == 1
    assert manager.entry.inflight == 0 and inflight(metrics) == 0
    timeouts = {"model": "m", "action": "reject"}
    assert metrics.registry.get_sample_value("kerve_queue_timeouts_total", timeouts) == 1


def test_a_request_its_queue_policy_sheds_fails_unavailable_and_counts_as_rejected() -> None:
    """A queue policy's timeout (reject) sheds the request: UNAVAILABLE to the caller (retryable), Triton's
    REJECTED in the statistics (nv_inference_request_failure), not OTHER."""
    model = Model()
    model.gate = threading.Event()
    engine, manager, _metrics = setup(model, BatchingConfig(max_batch_size=1, queue_policy={"timeout_s": 0.01}))

    async def main() -> None:
        running = asyncio.ensure_future(engine.infer(request()))
        while not model.calls:
            await asyncio.sleep(0.001)
        with pytest.raises(ServingError) as info:
            await asyncio.wait_for(engine.infer(request()), 10)
        assert info.value.code is ErrorCode.UNAVAILABLE and "queue policy's timeout" in info.value.message
        model.gate.set()
        await running

    asyncio.run(main())
    assert manager.entry.stats.fail_reasons == {"REJECTED": 1, "CANCELED": 0, "BACKEND": 0, "OTHER": 0}


def test_cancelling_a_request_that_runs_alone_takes_it_off_the_executor() -> None:
    """Unbatchable requests go straight to the worker pool; one cancelled while queued there never runs."""
    model = Model(batched=False)
    model.gate = threading.Event()
    engine, manager, metrics = setup(model)
    engine._executor = ThreadPoolExecutor(1)

    async def main() -> None:
        running = asyncio.ensure_future(engine.infer(request(3)))
        while not model.calls:
            await asyncio.sleep(0.001)
        queued = engine.start(request(3), asyncio.get_running_loop().create_future())
        queued.cancel()
        model.gate.set()
        await running
        engine._executor.shutdown(wait=True)  # the worker drained its queue: the cancelled call was not in it

    asyncio.run(main())
    assert model.calls == [3]
    assert count(metrics, "CANCELLED") == 1 and count(metrics, "OK") == 1
    assert manager.entry.inflight == 0 and inflight(metrics) == 0


def test_a_request_cancelled_while_its_model_call_runs_holds_its_version_until_the_call_returns() -> None:
    """An unload drains a version's in-flight requests before closing the servable: a running call that nobody
    waits for any more must still count, or the session (or a device) is freed under it."""
    model = Model(batched=False)
    model.gate = threading.Event()
    engine, manager, metrics = setup(model)

    async def main() -> None:
        call = engine.start(request(3), asyncio.get_running_loop().create_future())
        deadline = time.monotonic() + 10
        while not model.calls:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.001)
        call.cancel()
        await asyncio.sleep(0)
        assert count(metrics, "CANCELLED") == 1 and inflight(metrics) == 0  # the caller is answered at once
        assert manager.entry.inflight == 1  # the version is not: its model call still runs
        model.gate.set()
        while manager.entry.inflight:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.001)

    asyncio.run(main())
    assert manager.released == 1 and count(metrics, "OK") == 0


def test_a_cancelled_stream_cancels_every_call_it_started() -> None:
    """grpc cancels a stream's handler when the client goes away: the message in the model and those queued behind
    it are each counted CANCELLED and released, and the queued ones never run. (Imports the V2 servicer, which
    imports TensorFlow; nothing here calls it.)"""
    from kerve import codecs
    from kerve.protos import grpc_service_pb2 as pb
    from kerve.server.v2_service import V2Servicer

    model = Model()
    model.gate = threading.Event()
    engine, manager, metrics = setup(model, BatchingConfig(max_batch_size=1))
    engine._executor = ThreadPoolExecutor(1)
    servicer = V2Servicer(manager, engine, lambda: True)  # type: ignore[arg-type]
    tensor = pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[1, 2])
    message = pb.ModelInferRequest(
        model_name="m", inputs=[tensor], raw_input_contents=[codecs.encode_raw(np.ones((1, 2), np.float32))]
    )

    class Context:
        def time_remaining(self) -> None:
            return None

    async def main() -> None:
        async def requests() -> Any:
            for _ in range(5):
                yield message
            await asyncio.Event().wait()  # the client keeps the stream open

        responses = servicer.ModelStreamInfer(requests(), Context())  # type: ignore[arg-type]
        first = asyncio.ensure_future(anext(responses))
        while inflight(metrics) < 5:  # all five read and started: one in the model, four queued
            await asyncio.sleep(0.001)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        await responses.aclose()
        assert inflight(metrics) == 0 and manager.entry.inflight == 0
        model.gate.set()
        batcher = manager.entry.batchers["serving_default"]
        while batcher.in_flight_batches:  # the running batch ends; its answer goes nowhere
            await asyncio.sleep(0.001)

    asyncio.run(main())
    assert model.calls == [1]
    assert count(metrics, "CANCELLED") == 5 and count(metrics, "OK") == 0


def test_a_model_without_the_promised_output_fails_internal_and_releases() -> None:
    model = Model()
    model.run = lambda inputs, output_names=None: {"z": inputs["x"]}  # type: ignore[method-assign]
    engine, manager, metrics = setup(model)

    async def main() -> None:
        with pytest.raises(ServingError) as info:
            await engine.infer(request(2))
        assert info.value.code is ErrorCode.INTERNAL and "'y'" in info.value.message

    asyncio.run(main())
    assert manager.entry.inflight == 0 and count(metrics, "INTERNAL") == 1 and inflight(metrics) == 0


def test_a_stream_reads_no_further_ahead_than_its_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """A client writing faster than the model answers: the servicer stops reading once STREAM_WINDOW messages are
    unanswered (gRPC's flow control then holds the client), and every message is still answered, in order."""
    from kerve import codecs
    from kerve.protos import grpc_service_pb2 as pb
    from kerve.server import v2_service
    from kerve.server.v2_service import V2Servicer

    monkeypatch.setattr(v2_service, "STREAM_WINDOW", 3)
    model = Model()
    model.gate = threading.Event()
    engine, manager, metrics = setup(model, BatchingConfig(max_batch_size=1))
    servicer = V2Servicer(manager, engine, lambda: True)  # type: ignore[arg-type]
    tensor = pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[1, 2])
    pulled = 0

    class Context:
        def time_remaining(self) -> None:
            return None

    async def requests() -> Any:
        nonlocal pulled
        for i in range(10):
            pulled += 1
            raw = codecs.encode_raw(np.full((1, 2), i, np.float32))
            yield pb.ModelInferRequest(model_name="m", id=str(i), inputs=[tensor], raw_input_contents=[raw])

    async def main() -> list[pb.ModelStreamInferResponse]:
        responses = servicer.ModelStreamInfer(requests(), Context())  # type: ignore[arg-type]
        first = asyncio.ensure_future(anext(responses))
        for _ in range(200):  # loop turns: the reader runs until the window is full
            await asyncio.sleep(0)
        assert pulled == 3 and inflight(metrics) == 3
        model.gate.set()
        out = [await asyncio.wait_for(first, 10)]
        out += [r async for r in responses]
        return out

    out = asyncio.run(main())
    assert [r.infer_response.id for r in out] == [str(i) for i in range(10)]
    assert [np.frombuffer(r.infer_response.raw_output_contents[0], np.float32)[0] for r in out] == [
        2.0 * i for i in range(10)
    ]
    assert count(metrics, "OK") == 10 and manager.entry.inflight == 0


@pytest.mark.parametrize("outcome", ["ok", "alone", "model error", "cancelled"])
def test_a_finished_request_leaves_no_reference_cycle(outcome: str) -> None:
    """Each request's objects must go when its last reference does: a cycle per request (the call holding the
    batcher's request, which holds the call as its sink) left them to the cyclic collector, which then ran a young
    collection every hundred or so requests and promoted what was in flight towards the ~200 ms full passes."""
    import gc

    from kerve.server.batcher import Ticket
    from kerve.server.inference import Call

    model = Model(batched=outcome != "alone")
    if outcome == "model error":
        model.fail = RuntimeError("boom")
    if outcome == "cancelled":
        model.gate = threading.Event()
    engine, _manager, _metrics = setup(model)

    async def main() -> None:
        for _ in range(3):
            call_request = request(3 if outcome == "alone" else 1)
            task = asyncio.ensure_future(engine.infer(call_request))
            if outcome == "cancelled":
                while not model.calls:  # the first is in the model: the next two wait in the batcher's queue
                    await asyncio.sleep(0.001)
                task.cancel()
            with contextlib.suppress(ServingError, asyncio.CancelledError):
                await task
        if model.gate is not None:
            model.gate.set()
        batcher = _manager.entry.batchers.get("serving_default")
        while batcher is not None and batcher.in_flight_batches:
            await asyncio.sleep(0.001)

    gc.collect()
    gc.disable()
    try:
        asyncio.run(main())
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        leaked = [type(o).__name__ for o in gc.garbage if isinstance(o, (Call, Ticket, InferRequest))]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert leaked == []


def test_a_stream_message_that_hits_a_server_defect_fails_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """An unexpected exception while a streamed message is taken (a defect of ours, not a bad input) fails that
    message with INTERNAL in the stream; the stream goes on and answers the messages after it."""
    from kerve import codecs
    from kerve.protos import grpc_service_pb2 as pb
    from kerve.server import v2_codec
    from kerve.server.v2_service import V2Servicer

    engine, manager, _metrics = setup(Model())
    servicer = V2Servicer(manager, engine, lambda: True)  # type: ignore[arg-type]
    decode = v2_codec.decode_request

    def flaky(message: pb.ModelInferRequest, *args: Any) -> Any:
        if message.id == "1":
            raise OverflowError("a defect")
        return decode(message, *args)

    monkeypatch.setattr(v2_codec, "decode_request", flaky)
    tensor = pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[1, 2])

    class Context:
        def time_remaining(self) -> None:
            return None

    async def requests() -> Any:
        for i in range(3):
            raw = codecs.encode_raw(np.full((1, 2), i, np.float32))
            yield pb.ModelInferRequest(model_name="m", id=str(i), inputs=[tensor], raw_input_contents=[raw])

    async def main() -> list[pb.ModelStreamInferResponse]:
        return [r async for r in servicer.ModelStreamInfer(requests(), Context())]  # type: ignore[arg-type]

    responses = asyncio.run(asyncio.wait_for(main(), 10))
    assert [(r.infer_response.id, r.error_message[:9]) for r in responses] == [("0", ""), ("1", "INTERNAL:"), ("2", "")]
    assert "a defect" in responses[1].error_message


def test_queue_depth_is_every_batchers_queued_rows_and_falls_when_requests_leave_without_a_batch() -> None:
    """kerve_queue_depth: the rows waiting in all of a model's batchers (one per signature), read at each scrape;
    a cancelled request's rows leave it at once, not at the next batch."""
    model = Model()
    model.gate = threading.Event()
    engine, manager, metrics = setup(model, BatchingConfig(max_batch_size=8))

    def depth() -> float | None:
        return metrics.registry.get_sample_value("kerve_queue_depth", {"model": "m"})

    async def main() -> None:
        running = asyncio.ensure_future(engine.infer(request(1)))
        while not model.calls:
            await asyncio.sleep(0.001)
        queued = [asyncio.ensure_future(engine.infer(request(rows))) for rows in (2, 3)]
        other = manager.entry.batchers["serving_default"]
        manager.entry.batchers["other"] = other  # a second signature's batcher (the same one twice: 2 x 5 rows)
        for _ in range(50):
            await asyncio.sleep(0)
        assert await asyncio.to_thread(depth) == 10
        del manager.entry.batchers["other"]
        queued[1].cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued[1]
        assert await asyncio.to_thread(depth) == 2  # no batch ran since
        model.gate.set()
        await asyncio.gather(running, queued[0])
        assert await asyncio.to_thread(depth) == 0

    asyncio.run(main())


@pytest.mark.parametrize("by", ["deadline", "timeout parameter"])
def test_a_request_that_runs_alone_and_waits_past_its_deadline_never_runs(by: str) -> None:
    """Requests without a batcher wait in the worker pool: one whose deadline (gRPC's, or Triton's `timeout`
    parameter) passed meanwhile ran anyway and answered OK after its timeout."""
    model = Model(batched=False)
    model.gate = threading.Event()
    engine, manager, metrics = setup(model)
    engine._executor = ThreadPoolExecutor(1)

    async def main() -> None:
        running = asyncio.ensure_future(engine.infer(request(3)))
        while not model.calls:
            await asyncio.sleep(0.001)
        late = request(3)
        if by == "deadline":
            late.deadline = time.monotonic() + 0.05
        else:
            late.timeout_s = 0.05
        waiting = asyncio.ensure_future(engine.infer(late))
        passed = time.monotonic() + 0.06
        while time.monotonic() < passed:  # until its deadline is behind it (a clock condition, bounded)
            await asyncio.sleep(0.01)
        model.gate.set()
        await running
        with pytest.raises(ServingError) as info:
            await waiting
        assert info.value.code is ErrorCode.DEADLINE_EXCEEDED

    asyncio.run(main())
    assert model.calls == [3]  # the late one never reached the model
    assert count(metrics, "DEADLINE_EXCEEDED") == 1 and manager.entry.inflight == 0


def test_a_row_limit_without_a_batcher_still_marks_the_response_batched() -> None:
    """config.yaml `batching: {enabled: false, max_batch_size: N}` is Triton's max_batch_size > 0 without dynamic
    batching: classification must rank each row alone, as ModelConfig says the outputs lead with the batch."""
    from kerve.server.model_config import parse_model_config

    engine, manager, _ = setup(Model())
    manager.entry.config = parse_model_config({"batching": {"enabled": False, "max_batch_size": 8}})

    async def main() -> bool:
        return (await engine.infer(request(2))).batched

    assert asyncio.run(main()) is True
    plain, _, _ = setup(Model(), batching=None)

    async def unbatched() -> bool:
        return (await plain.infer(request(2))).batched

    assert asyncio.run(unbatched()) is False


def test_serial_requests_run_their_model_call_on_the_loop_and_concurrent_ones_never_do() -> None:
    """`--inline-call-max-ms`: once SERIAL_RUN requests in a row found the server empty (and a call in a worker
    measured the model), a lone batch-1 request's call runs on the event loop thread; two requests at once go to
    workers and start the run again."""
    model = Model()
    threads: list[int] = []
    run = model.run

    def recording(inputs: Mapping[str, np.ndarray], output_names: Any = None) -> dict[str, np.ndarray]:
        threads.append(threading.get_ident())
        return run(inputs, output_names)

    model.run = recording  # type: ignore[method-assign]
    engine, manager, metrics = setup(model, inline_call_max_s=1.0)
    on_loop: list[bool] = []

    async def main() -> None:
        loop_thread = threading.get_ident()
        for _ in range(SERIAL_RUN + 2):
            await engine.infer(request())
        await asyncio.gather(engine.infer(request()), engine.infer(request()))  # one batch of two
        await engine.infer(request())  # the run starts again
        on_loop.extend(thread == loop_thread for thread in threads)

    asyncio.run(main())
    assert on_loop == [False] * SERIAL_RUN + [True, True] + [False, False]
    assert count(metrics, "OK") == SERIAL_RUN + 5 and engine.traffic.live == 0
