"""The protocol-agnostic request path: resolve -> validate -> batch -> run on a device replica -> response.

Protocol adapters build an InferRequest and call `InferenceEngine.infer` (or `start`, to keep many requests of
one stream in flight without a task each); nothing here knows about protobuf. Signatures whose inputs all have a
variable leading dimension go through a per-version, per-signature Batcher; others run as they come, in a worker
thread. Either way a request is a `Call` that the batch's completion callback finishes on the event loop, so a
response costs one loop turn after its batch, not a task wake-up per layer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import functools
import logging
import time
from collections.abc import Mapping
from concurrent.futures import Executor
from typing import Any, Protocol

from .batcher import NO_SPAN, Batcher, BatchingConfig, BatchStats, Ticket
from .errors import ErrorCode, ServingError, invalid
from .log_settings import REQUESTS
from .manager import ModelManager, ModelVersion
from .metrics import UNKNOWN_MODEL, Metrics
from .model_config import ModelConfig
from .response_cache import Owner, ResponseCache
from .serial_traffic import SerialTraffic
from .slot_choice import SlotChoice, learns_slots
from .stats import CANCELED, failure_reason
from .trace import Tracer
from .types import InferRequest, InferResponse
from .validation import select_outputs, validate_inputs

log = logging.getLogger(__name__)


class Completion(Protocol):
    """Where a call's outcome lands: an asyncio.Future (``infer``), or a stream's own slot for the message, which
    wakes the stream's writer only when the answer at its head is ready instead of once per message."""

    def done(self) -> bool: ...

    def cancelled(self) -> bool: ...

    def set_result(self, result: InferResponse, /) -> None: ...

    def set_exception(self, exception: BaseException, /) -> None: ...

    def exception(self) -> BaseException | None: ...

    def cancel(self) -> bool: ...


def tpu_batch_sizes(max_batch_size: int) -> tuple[int, ...]:
    """Powers of two up to max_batch_size (which is always allowed): few static shapes for XLA."""
    sizes = []
    size = 1
    while size < max_batch_size:
        sizes.append(size)
        size *= 2
    return (*sizes, max_batch_size)


class InferenceEngine:
    def __init__(
        self,
        manager: ModelManager,
        executor: Executor,
        metrics: Metrics,
        batching: BatchingConfig | None = None,
        pad_batches: bool = False,
        tracer: Tracer | None = None,
        cache: ResponseCache | None = None,
        inline_call_max_s: float = 0.0,
        workers: int | None = None,
    ) -> None:
        self.manager = manager
        self.metrics = metrics
        self.tracer = tracer or Tracer()
        self.cache = cache
        """Shared by the models whose config.yaml sets `response_cache: true`; None: the server has none."""
        self._executor = executor
        self._pad_batches = pad_batches
        self._flags = batching  # the server's batching flags, as given: a model's config.yaml overrides them
        self.batching = self._padded(batching) if batching is not None else None
        """The server-wide batching knobs a model without its own `batching:` gets."""
        self._depths: set[str] = set()  # models whose kerve_queue_depth was set
        self._inline_call_max_s = inline_call_max_s
        self._workers = workers  # the executor's threads: a batch slot beyond them waits for one
        self._short_of_workers: set[str] = set()  # models warned about it
        self.traffic = SerialTraffic()
        """Requests in flight, and whether they arrive one at a time: a batcher may then run a batch-1 call on the
        event loop thread (`--inline-call-max-ms`)."""
        metrics.add_pusher(self._push_queue_depths)

    def _padded(self, config: BatchingConfig) -> BatchingConfig:
        """On TPU, batches are padded to powers of two up to the largest batch unless sizes are given."""
        if self._pad_batches and not config.allowed_batch_sizes:
            return dataclasses.replace(config, allowed_batch_sizes=tpu_batch_sizes(config.max_batch_size))
        return config

    def _push_queue_depths(self) -> None:
        """kerve_queue_depth: the rows waiting in all of a model's batchers (each version, each signature), read
        when metrics are pushed, so it also falls when requests leave the queue without a batch (cancelled,
        expired). Runs on the pushing thread: it only reads counts."""
        depths: dict[str, int] = dict.fromkeys(self._depths, 0)
        for entry in self.manager.snapshot():
            queued = sum(batcher.queued_samples for batcher in tuple(entry.batchers.values()))
            depths[entry.model] = depths.get(entry.model, 0) + queued
        for model, depth in depths.items():
            self.metrics.queue_depth.labels(model).set(depth)
        self._depths = {model for model, depth in depths.items() if depth}  # 0 stays shown; set once more

    async def infer(self, request: InferRequest) -> InferResponse:
        future: asyncio.Future[InferResponse] = asyncio.get_running_loop().create_future()
        call = self.start(request, future)
        try:
            return await future
        except asyncio.CancelledError:  # the client went away (or the server is stopping)
            call.cancel()
            raise

    def start(self, request: InferRequest, completion: Completion) -> Call:
        """Start a request without a coroutine: validated and queued (or sent to a worker) before this returns.

        The response (or a ServingError) lands on ``completion`` (an asyncio future, or a stream's slot) from the
        batch's completion callback, with no task per request and no extra loop turn: a stream can keep many
        requests in flight by holding their calls. A request rejected up front (unknown model, bad inputs, queue
        full) raises here and leaves ``completion`` untouched. Whoever stops waiting calls `Call.cancel`.
        """
        call = Call(self, request, completion)
        try:
            call.begin()
        except ServingError as exc:
            call.finish_error(exc, deliver=False)  # raised to the caller instead: nobody awaits the future
            raise
        return call

    def forget(self, entry: ModelVersion) -> None:
        """A version unloaded, or its config turned the response cache off: its cached responses go (the manager
        calls this)."""
        if self.cache is not None and self.cache.drop(_cache_owner(entry)):
            self.metrics.cache_gauges()[0].value = self.cache.bytes

    def count_rejected(self, model: str, protocol: str, error: ServingError) -> None:
        """Count a request an adapter rejected before it reached `infer` (it could not be decoded), so
        kerve_requests_total sees every request; no latency is observed for it."""
        model_label = model if self.manager.knows(model) else UNKNOWN_MODEL
        self.metrics.count_request(model_label, "", protocol, error.code.value)
        if REQUESTS.verbose:
            REQUESTS.logger.debug("%s request for %s rejected: %s: %s", protocol, model, error.code.value, error)

    def _run_alone(
        self, call: Call, signature: Any, inputs: dict[str, Any], output_names: list[str], deadline: float | None = None
    ) -> None:
        """A request that does not go through a batcher: one model call in a worker thread, one hop back. One
        whose `deadline` passed while it waited for a worker never runs (DEADLINE_EXCEEDED), as in a batcher."""
        loop = asyncio.get_running_loop()
        work = self._executor.submit(_timed, signature.run, inputs, output_names, deadline)
        call.work = work  # cancelling the call takes it off the executor's queue if it has not started

        def done(work: concurrent.futures.Future[tuple[dict[str, Any], float, float]]) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
                loop.call_soon_threadsafe(self._finish_alone, call, work)

        work.add_done_callback(done)

    def _finish_alone(self, call: Call, work: concurrent.futures.Future[tuple[dict[str, Any], float, float]]) -> None:
        if work.cancelled():  # by Call.cancel, which already finished the call
            return
        error = work.exception()
        if error is not None:
            call.set_exception(error)
            return
        outputs, compute_started, compute_s = work.result()
        if call.entry is not None:
            self._record_batch(call.entry, call.rows, compute_started - call.started, 0.0, compute_s, 0.0)
        ended = compute_started + compute_s
        call.compute = (compute_started, compute_started, ended, ended)  # no batch to assemble or cut
        call.set_result(outputs)

    def _batcher(self, entry: ModelVersion, signature: Any) -> Batcher | None:
        """The version's batcher for this signature, made on first use; None when it cannot batch."""
        key = signature.key
        batcher = entry.batchers.get(key)
        if batcher is not None:
            return batcher
        config = self.batching_for(entry, signature)
        if config is None:
            return None
        devices = entry.servable.runner_devices
        per_device = [self.metrics.device_batches(entry.model, device) for device in devices]
        self._check_workers(entry.model, len(per_device), config)
        name = f"{entry.model}:{entry.version}:{key}"

        def on_batch(stats: BatchStats) -> None:
            if stats.ok:
                self._record_batch(
                    entry, stats.batch_size, stats.queue_wait_s, stats.input_s, stats.compute_s, stats.output_s
                )
                per_device[stats.replica].value += 1

        batcher = Batcher(
            entry.servable.runners(key),
            config,
            executor=self._executor,
            name=name,
            on_batch=on_batch,
            on_timeout=functools.partial(self.metrics.count_queue_timeout, entry.model),
            inline_max_s=self._inline_call_max_s,
            slots=SlotChoice(len(devices), name) if learns_slots(devices) else None,
        )
        entry.batchers[key] = batcher
        return batcher

    def _check_workers(self, model: str, replicas: int, config: BatchingConfig) -> None:
        """Warn, once per model, when its config.yaml asks for more batches at once than there are workers: the
        extra batches wait for a thread, so the setting does less than it says. The server's own flags were
        checked at startup (app.py); this is for a model's own `batches_per_replica`."""
        slots = replicas * config.most_batches_per_replica
        own = self.batching is None or config.batches_per_replica != self.batching.batches_per_replica
        if self._workers is None or slots <= self._workers or not own or model in self._short_of_workers:
            return
        self._short_of_workers.add(model)
        log.warning(
            "model %r runs up to %d batches at once (%d replica(s) x batches_per_replica %s) on --workers %d: "
            "the rest wait for a worker; raise --workers",
            model, slots, replicas, config.batches_per_replica, self._workers,
        )  # fmt: skip

    def batching_for(self, entry: ModelVersion, signature: Any) -> BatchingConfig | None:
        """The knobs a version's signature is batched with; None when its requests run one by one (batching off
        for it, an input or output without a variable leading dimension, no input at all, or a servable without
        replicas)."""
        config = self.config_for(entry)
        if config is None or not _batchable(signature) or not hasattr(entry.servable, "runners"):
            return None
        return config

    def row_limit(self, entry: ModelVersion, signature: Any) -> int | None:
        """The most rows a request may carry when the version is served without a batcher: config.yaml's
        `batching: {enabled: false, max_batch_size: N}` (Triton's max_batch_size without dynamic_batching), for a
        signature whose inputs all have a batch dimension; None: no limit."""
        overrides = entry.config.batching
        limit = overrides.get("max_batch_size") if overrides.get("enabled") is False else None
        return int(limit) if limit is not None and _batchable(signature) else None

    def config_for(self, entry: ModelVersion) -> BatchingConfig | None:
        """Server-wide batching knobs, overridden key by key by the model's config.yaml `batching:` section."""
        return self.combined(entry.model, entry.config.batching)

    def check_config(self, config: ModelConfig) -> None:
        """The manager's check of a model's config before it takes it: FAILED_PRECONDITION when its batching
        does not combine with the server's flags (it would fail every request)."""
        self.combined("", config.batching)

    def combined(self, model: str, overrides: Mapping[str, Any]) -> BatchingConfig | None:
        """The server's batching flags overridden key by key by `overrides` (a config.yaml `batching:`); None
        when batching is off for the model."""
        if self._flags is None or self.batching is None or overrides.get("enabled") is False:
            return None
        if not overrides:
            return self.batching
        merged = {**dataclasses.asdict(self._flags), **{k: v for k, v in overrides.items() if k != "enabled"}}
        sizes = overrides.get("allowed_batch_sizes")
        if sizes and "max_batch_size" not in overrides:  # allowed sizes alone imply their largest (model_config)
            merged["max_batch_size"] = max(sizes)
        try:
            return self._padded(BatchingConfig.from_mapping(merged))
        except (TypeError, ValueError) as exc:  # valid alone, but not combined with this server's flags
            raise ServingError(
                ErrorCode.FAILED_PRECONDITION,
                (f"model {model!r}: config.yaml " if model else "")
                + f"batching does not combine with the server's batching flags: {exc}",
            ) from None

    def _record_batch(
        self, entry: ModelVersion, size: int, queue_s: float, input_s: float, compute_s: float, output_s: float
    ) -> None:
        entry.stats.record_execution(size, input_s, compute_s, output_s)
        self.metrics.observe_batch(entry.model, size, queue_s, compute_s)


def _release_when_done(work: concurrent.futures.Future[Any], manager: Any, entry: ModelVersion) -> None:
    """Hold the version until a model call nobody waits for has returned: an unload drains the version's
    in-flight requests before it closes the servable, which must not free a session (or give a device to another
    model) under a call still running on it. A batched request needs none of this: the batcher waits for its
    batches before the servable closes."""
    loop = asyncio.get_running_loop()

    def done(_: concurrent.futures.Future[Any]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: the server is gone, nothing to drain
            loop.call_soon_threadsafe(manager.release, entry)

    work.add_done_callback(done)


def _batchable(signature: Any) -> bool:
    """Whether requests can share a model call: every input and every output has a variable leading (batch)
    dimension. An output without one (a count, a fixed label list) belongs to the whole call: cut into rows it
    would hand each caller a piece of it."""
    tensors = (*signature.inputs.values(), *signature.outputs.values())
    return bool(signature.inputs) and all(spec.batched for spec in tensors)


def _cache_owner(entry: ModelVersion) -> Owner:
    return entry.model, entry.version, entry.fingerprint


def _runs_alone(config: BatchingConfig, rows: int) -> bool:
    """A request already larger than a full batch gains nothing from queueing (and would only count against
    max_queued): run it as it is, unless batches must be padded to fixed sizes, which needs the batcher's split.
    An empty request (0 rows) has nothing to share and no row to pad with: it runs as it is, and answers what the
    model answers unbatched (empty outputs), not an error that only batching would give."""
    return rows == 0 or (rows > config.max_batch_size and not config.allowed_batch_sizes)


def _batch_size(request: InferRequest) -> int:
    first = next(iter(request.inputs.values()), None)
    return int(first.shape[0]) if first is not None and first.ndim else 1


def _timed(
    run: Any, inputs: dict[str, Any], output_names: list[str], deadline: float | None = None
) -> tuple[dict[str, Any], float, float]:
    started = time.monotonic()
    if deadline is not None and started >= deadline:
        raise ServingError(ErrorCode.DEADLINE_EXCEEDED, "deadline exceeded waiting for a worker; the model did not run")
    outputs = run(inputs, output_names)
    return outputs, started, time.monotonic() - started


class Call:
    """One request through the engine, from acquire to release; also the batcher's sink for its outputs.

    Bookkeeping happens once, whichever way the request ends (outputs, error, cancellation): the version is
    released, its statistics and the request metrics are recorded, the in-flight gauge drops, and `completion` gets
    the InferResponse or the ServingError.
    """

    __slots__ = (
        "_engine",
        "_inflight",
        "_model_label",
        "_ticket",
        "alone",
        "batcher",
        "cache_key",
        "completion",
        "compute",
        "entry",
        "finished",
        "output_names",
        "queued",
        "request",
        "rows",
        "signature",
        "started",
        "traced",
        "work",
    )

    def __init__(self, engine: InferenceEngine, request: InferRequest, completion: Completion) -> None:
        self._engine = engine
        self.request = request
        self.completion = completion
        self.started = time.monotonic()
        self._model_label = request.model if engine.manager.knows(request.model) else UNKNOWN_MODEL
        self._inflight = engine.metrics.inflight_gauge(self._model_label)
        self._inflight.value += 1
        self.alone = engine.traffic.arrive()  # nothing else in flight, and the traffic has been serial
        self._ticket: Ticket | None = None
        self.batcher: Batcher | None = None
        self.entry: ModelVersion | None = None
        self.signature: Any = None
        self.output_names: list[str] = []
        self.rows = 1
        self.finished = False
        self.work: concurrent.futures.Future[Any] | None = None
        self.cache_key: bytes | None = None  # set on a response cache miss: where its answer is stored
        tracer = engine.tracer
        self.traced = tracer.on and tracer.sample(self._model_label, request.trace_context is not None)
        self.queued = self.started  # when traced: handed to the batcher or a worker
        self.compute = NO_SPAN  # run alone: its model call's Span, set before set_result

    def begin(self) -> None:
        engine, request = self._engine, self.request
        try:
            self.entry = entry = engine.manager.acquire(request.model, request.version, request.label)  # to release
            self.signature = signature = entry.servable.signature(request.signature)
            validate_inputs(request.model, request.inputs, signature.inputs)
            self.output_names = select_outputs(request.model, request.outputs, signature.outputs)
            if request.deadline is not None and time.monotonic() >= request.deadline:
                raise ServingError(ErrorCode.DEADLINE_EXCEEDED, "deadline passed before the request could run")
            self.rows = rows = _batch_size(request)
            if engine.cache is not None and entry.config.response_cache and self._from_cache(engine.cache, entry):
                return
            batcher = engine._batcher(entry, signature)
            if self.traced:
                self.queued = time.monotonic()
            if batcher is not None and not _runs_alone(batcher.config, rows):
                self.batcher = batcher
                self._ticket = batcher.enqueue(
                    request.inputs, request.deadline, self, request.priority, request.timeout_s, self.alone
                )
            else:
                limit = engine.row_limit(entry, signature)
                if limit is not None and rows > limit:  # Triton's max_batch_size without dynamic batching
                    raise invalid(f"inference request batch-size must be <= {limit} for {request.model!r}")
                deadline = request.deadline
                if request.timeout_s:  # Triton's `timeout` parameter: a deadline here, as in the batcher
                    own = time.monotonic() + request.timeout_s
                    deadline = own if deadline is None else min(deadline, own)
                engine._run_alone(self, signature, request.inputs, self.output_names, deadline)
        except ServingError:
            raise
        except Exception as exc:
            raise _model_failed(request.model, exc) from exc

    def _from_cache(self, cache: ResponseCache, entry: ModelVersion) -> bool:
        """Answer from the response cache if it holds this request's response; on a miss, keep the key to store
        the answer under."""
        began = time.monotonic()
        key = cache.key(_cache_owner(entry), self.signature.key, self.output_names, self.request.inputs)
        outputs = cache.get(key)
        lookup_s = time.monotonic() - began
        hits, misses = self._engine.metrics.cache_lookups_of(self._model_label)
        if outputs is None:
            misses.value += 1
            entry.stats.cache_miss.add(lookup_s)  # storing the answer adds its time, not a count
            self.cache_key = key
            return False
        hits.value += 1
        try:
            response = self._response(outputs)
        except Exception:  # cannot happen with what set_result stored; a request must never fail for the cache
            return False
        self._end()
        now = time.monotonic()
        seconds = now - self.started
        entry.stats.record_cache_hit(seconds, lookup_s, now, began - self.started)
        self._observe("OK", seconds)
        if self.traced:
            self._trace(outputs=response.outputs)
        if not self.completion.done():
            self.completion.set_result(response)
        return True

    def _store(self, entry: ModelVersion, outputs: Mapping[str, Any]) -> None:
        cache = self._engine.cache
        assert cache is not None and self.cache_key is not None
        began = time.monotonic()
        cache.put(self.cache_key, outputs, _cache_owner(entry))
        entry.stats.cache_miss.seconds += time.monotonic() - began
        held, evictions = self._engine.metrics.cache_gauges()
        held.value, evictions.value = cache.bytes, cache.evictions

    def _response(self, outputs: Mapping[str, Any]) -> InferResponse:
        entry = self.entry
        assert entry is not None
        signature = self.signature
        engine = self._engine  # batched as ModelConfig reports it: a batcher, or max_batch_size without one
        batched = (
            signature.key in entry.batchers
            or engine.batching_for(entry, signature) is not None
            or engine.row_limit(entry, signature) is not None
        )
        return InferResponse(
            model=entry.model,
            version=entry.version,
            outputs={name: outputs[name] for name in self.output_names},
            id=self.request.id,
            output_specs={n: self.signature.outputs[n] for n in self.output_names},
            class_labels=entry.class_labels.for_outputs(self.signature.outputs)
            if entry.class_labels is not None
            else None,
            batched=batched,
        )

    # ---- the batcher's sink protocol (and the worker's, for requests that run alone)

    def done(self) -> bool:
        return self.finished

    def set_result(self, outputs: Mapping[str, Any], /) -> None:
        if self.finished:
            return
        entry = self.entry
        assert entry is not None
        try:  # everything that can fail before the bookkeeping: the batcher's sink must not raise
            response = self._response(outputs)
        except Exception as exc:
            self.set_exception(ServingError(ErrorCode.INTERNAL, f"model output missing or unusable: {exc!r}"))
            return
        self._end()
        now = time.monotonic()
        seconds = now - self.started
        start, input_end, output_start, end = self.batcher.last_compute if self.batcher is not None else self.compute
        entry.stats.record_success(
            seconds, self.rows, start - self.started, input_end - start, output_start - input_end,
            end - output_start, now,
        )  # fmt: skip
        self._observe("OK", seconds)
        if self.cache_key is not None:
            self._store(entry, response.outputs)
        if self.traced:
            stamps = (
                ("QUEUE_START", self.queued), ("COMPUTE_START", start), ("COMPUTE_INPUT_END", input_end),
                ("COMPUTE_OUTPUT_START", output_start), ("COMPUTE_END", end),
            )  # fmt: skip
            self._trace(stamps, response.outputs)
        if not self.completion.done():
            self.completion.set_result(response)

    def set_exception(self, exception: BaseException, /) -> None:
        if isinstance(exception, ServingError):
            error = exception
        else:
            error = _model_failed(self.request.model, exception)
            error.__cause__ = exception
        self.finish_error(error, from_model=True)

    # ---- ending

    def finish_error(self, error: ServingError, deliver: bool = True, from_model: bool = False) -> None:
        """`from_model`: the error came back from the batch's run (a model failure, or the batcher expiring the
        request), not from its admission; it sorts the failure into Triton's reasons (stats.failure_reason)."""
        if self.finished:
            return
        self._end()
        seconds = time.monotonic() - self.started
        if self.entry is not None:
            self.entry.stats.record_failure(seconds, failure_reason(error.code, from_model, error.shed))
        self._observe(error.code.value, seconds)
        if self.traced:
            self._trace(error=(error.code.value, error.message))
        if deliver and not self.completion.done():
            self.completion.set_exception(error)

    def cancel(self) -> None:
        """The caller stopped waiting: drop what has not run yet, count the request CANCELLED."""
        if self.finished:
            if self.completion.done() and not self.completion.cancelled():
                self.completion.exception()  # mark it retrieved: asyncio would log a dropped failure as unhandled
            return
        if self.batcher is not None and self._ticket is not None:
            self.batcher.abandon(self._ticket)
        if self.work is not None:
            self.work.cancel()
        self._end()
        seconds = time.monotonic() - self.started
        if self.entry is not None:  # a failure in ModelStatistics too, as Triton counts a cancelled request
            self.entry.stats.record_failure(seconds, CANCELED)
        self._observe("CANCELLED", seconds)
        if self.traced:
            self._trace(error=("CANCELLED", "the caller stopped waiting"))
        self.completion.cancel()

    def _end(self) -> None:
        self.finished = True
        work = self.work
        # The batcher's request holds this call as its sink, the worker's future a callback that holds it: drop
        # both links back, so no cycle per request is left for the cyclic garbage collector to find
        self._ticket = self.work = None
        self._inflight.value -= 1
        self._engine.traffic.leave()
        if self.entry is None:
            return
        if work is not None and not work.done():  # cancelled while its model call runs: cancel() cannot stop it
            _release_when_done(work, self._engine.manager, self.entry)
            return
        self._engine.manager.release(self.entry)

    def _trace(
        self,
        between: tuple[tuple[str, float], ...] = (),
        outputs: Mapping[str, Any] | None = None,
        error: tuple[str, str] | None = None,
    ) -> None:
        stamps = [("REQUEST_START", self.started), *between, ("REQUEST_END", time.monotonic())]
        version = self.entry.version if self.entry is not None else None
        request = self.request
        # the model by its bounded label: the tracer keeps state per name
        self._engine.tracer.record(
            self._model_label, version, request.id, stamps, request.inputs, outputs, request.trace_context, error
        )

    def _observe(self, code: str, seconds: float) -> None:
        # The version label stays "" until one is resolved: a client-chosen number must not become a label value.
        version = str(self.entry.version) if self.entry is not None else ""
        self._engine.metrics.observe_request(self._model_label, version, self.request.protocol, code, seconds)
        if REQUESTS.verbose:  # log_verbose_level >= 1 (LogSettings): one line per request
            REQUESTS.logger.debug(
                "%s request %r for %s version %s: %s after %.2f ms",
                self.request.protocol, self.request.id, self.request.model, version or "-", code, 1e3 * seconds,
            )  # fmt: skip


def _model_failed(model: str, exc: BaseException) -> ServingError:
    return ServingError(ErrorCode.INTERNAL, f"model {model!r} failed: {exc}")
