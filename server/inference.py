"""The protocol-agnostic request path: resolve -> validate -> batch -> run on a device replica -> response.

Protocol adapters build an InferRequest and call `InferenceEngine.infer`; nothing here knows about protobuf.
Signatures whose inputs all have a variable leading dimension go through a per-version, per-signature Batcher;
others run as they come, in a worker thread.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from concurrent.futures import Executor
from typing import Any

from .batcher import Batcher, BatchingConfig, BatchStats
from .errors import ErrorCode, ServingError
from .manager import ModelManager, ModelVersion
from .metrics import UNKNOWN_MODEL, Metrics
from .types import InferRequest, InferResponse
from .validation import select_outputs, validate_inputs


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
    ) -> None:
        self.manager = manager
        self.metrics = metrics
        self._executor = executor
        if batching is not None and pad_batches and not batching.allowed_batch_sizes:
            batching = dataclasses.replace(batching, allowed_batch_sizes=tpu_batch_sizes(batching.max_batch_size))
        self.batching = batching

    async def infer(self, request: InferRequest) -> InferResponse:
        started = time.monotonic()
        model_label = request.model if self.manager.knows(request.model) else UNKNOWN_MODEL
        inflight = self.metrics.inflight_gauge(model_label)
        inflight.inc()
        version_label = ""  # until a version is resolved: a client-chosen number must not become a label value
        try:
            entry = self.manager.acquire(request.model, request.version, request.label)  # in flight until release
            version_label = str(entry.version)
            response = await self._infer(entry, request, started)
        except ServingError as exc:
            self.metrics.observe_request(
                model_label, version_label, request.protocol, exc.code.value, time.monotonic() - started
            )
            raise
        except asyncio.CancelledError:  # the client went away (or the server is stopping)
            self.metrics.observe_request(
                model_label, version_label, request.protocol, "CANCELLED", time.monotonic() - started
            )
            raise
        finally:
            inflight.dec()
        self.metrics.observe_request(
            model_label, str(response.version), request.protocol, "OK", time.monotonic() - started
        )
        return response

    def count_rejected(self, model: str, protocol: str, error: ServingError) -> None:
        """Count a request an adapter rejected before it reached `infer` (it could not be decoded), so
        kerve_requests_total sees every request; no latency is observed for it."""
        model_label = model if self.manager.knows(model) else UNKNOWN_MODEL
        self.metrics.count_request(model_label, "", protocol, error.code.value)

    async def _infer(self, entry: ModelVersion, request: InferRequest, started: float) -> InferResponse:
        """Run a request on an acquired version; releases it."""
        try:
            signature = entry.servable.signature(request.signature)
            validate_inputs(request.model, request.inputs, signature.inputs)
            output_names = select_outputs(request.model, request.outputs, signature.outputs)
            if request.deadline is not None and time.monotonic() >= request.deadline:
                raise ServingError(ErrorCode.DEADLINE_EXCEEDED, "deadline passed before the request could run")
            rows = _batch_size(request)
            batcher = self._batcher(entry, signature)
            if batcher is not None and not _runs_alone(batcher.config, rows):
                outputs = await batcher.submit(request.inputs, request.deadline)
                outputs = {name: outputs[name] for name in output_names}
            else:
                loop = asyncio.get_running_loop()
                compute_started = time.monotonic()
                outputs = await loop.run_in_executor(self._executor, signature.run, request.inputs, output_names)
                self._record_batch(entry, rows, compute_started - started, time.monotonic() - compute_started)
        except ServingError:
            entry.stats.record_failure(time.monotonic() - started)
            raise
        except Exception as exc:
            entry.stats.record_failure(time.monotonic() - started)
            raise ServingError(ErrorCode.INTERNAL, f"model {request.model!r} failed: {exc}") from exc
        finally:
            self.manager.release(entry)
        entry.stats.record_success(time.monotonic() - started, rows)
        return InferResponse(
            model=entry.model,
            version=entry.version,
            outputs=outputs,
            id=request.id,
            output_specs={n: signature.outputs[n] for n in output_names},
        )

    def _batcher(self, entry: ModelVersion, signature: Any) -> Batcher | None:
        """The version's batcher for this signature, made on first use; None when it cannot batch."""
        key = signature.key
        batcher = entry.batchers.get(key)
        if batcher is not None:
            return batcher
        config = self.config_for(entry)
        batchable = all(spec.batched for spec in signature.inputs.values())
        if config is None or not batchable or not hasattr(entry.servable, "runners"):
            return None
        depth = self.metrics.queue_depth.labels(entry.model)
        per_device = [self.metrics.batches.labels(entry.model, device) for device in entry.servable.runner_devices]

        def on_batch(stats: BatchStats) -> None:
            depth.set(batcher.queued_samples)
            if stats.ok:
                self._record_batch(entry, stats.batch_size, stats.queue_wait_s, stats.compute_s)
                per_device[stats.replica].inc()

        batcher = Batcher(
            entry.servable.runners(key),
            config,
            executor=self._executor,
            name=f"{entry.model}:{entry.version}:{key}",
            on_batch=on_batch,
        )
        entry.batchers[key] = batcher
        return batcher

    def config_for(self, entry: ModelVersion) -> BatchingConfig | None:
        """Server-wide batching knobs, overridden key by key by the model's config.yaml `batching:` section."""
        overrides = entry.config.batching
        if self.batching is None or overrides.get("enabled") is False:
            return None
        if not overrides:
            return self.batching
        merged = {**dataclasses.asdict(self.batching), **{k: v for k, v in overrides.items() if k != "enabled"}}
        try:
            return BatchingConfig.from_mapping(merged)
        except (TypeError, ValueError) as exc:  # valid alone, but not combined with this server's flags
            raise ServingError(
                ErrorCode.FAILED_PRECONDITION,
                f"model {entry.model!r}: config.yaml batching does not combine with the server's batching flags: {exc}",
            ) from None

    def _record_batch(self, entry: ModelVersion, size: int, queue_s: float, compute_s: float) -> None:
        entry.stats.record_execution(size, queue_s, compute_s)
        self.metrics.observe_batch(entry.model, size, queue_s, compute_s)


def _runs_alone(config: BatchingConfig, rows: int) -> bool:
    """A request already larger than a full batch gains nothing from queueing (and would only count against
    max_queued): run it as it is, unless batches must be padded to fixed sizes, which needs the batcher's split."""
    return rows > config.max_batch_size and not config.allowed_batch_sizes


def _batch_size(request: InferRequest) -> int:
    first = next(iter(request.inputs.values()), None)
    return int(first.shape[0]) if first is not None and first.ndim else 1
