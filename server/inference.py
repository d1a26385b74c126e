"""The protocol-agnostic request path: resolve -> validate -> run in a worker thread -> response.

Protocol adapters build an InferRequest and call `InferenceEngine.infer`; nothing here knows about protobuf.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Executor

from .errors import ErrorCode, ServingError
from .manager import ModelManager
from .metrics import UNKNOWN_MODEL, Metrics
from .types import InferRequest, InferResponse
from .validation import select_outputs, validate_inputs


class InferenceEngine:
    def __init__(self, manager: ModelManager, executor: Executor, metrics: Metrics) -> None:
        self.manager = manager
        self.metrics = metrics
        self._executor = executor

    async def infer(self, request: InferRequest) -> InferResponse:
        started = time.monotonic()
        model_label = request.model if request.model in self.manager.models() else UNKNOWN_MODEL
        version_label = "" if request.version is None else str(request.version)
        inflight = self.metrics.inflight.labels(model_label)
        inflight.inc()
        try:
            response = await self._infer(request, started)
        except ServingError as exc:
            self.metrics.observe_request(
                model_label, version_label, request.protocol, exc.code.value, time.monotonic() - started
            )
            raise
        finally:
            inflight.dec()
        self.metrics.observe_request(
            model_label, str(response.version), request.protocol, "OK", time.monotonic() - started
        )
        return response

    async def _infer(self, request: InferRequest, started: float) -> InferResponse:
        entry = self.manager.resolve(request.model, request.version)
        try:
            signature = entry.servable.signature(request.signature)
            validate_inputs(request.model, request.inputs, signature.inputs)
            output_names = select_outputs(request.model, request.outputs, signature.outputs)
            if request.deadline is not None and time.monotonic() >= request.deadline:
                raise ServingError(ErrorCode.DEADLINE_EXCEEDED, "deadline passed before the request could run")
            loop = asyncio.get_running_loop()
            compute_started = time.monotonic()
            outputs = await loop.run_in_executor(self._executor, signature.run, request.inputs, output_names)
            finished = time.monotonic()
        except ServingError:
            entry.stats.record_failure(time.monotonic() - started)
            raise
        except Exception as exc:
            entry.stats.record_failure(time.monotonic() - started)
            raise ServingError(ErrorCode.INTERNAL, f"model {request.model!r} failed: {exc}") from exc
        samples = _batch_size(request)
        queue_s, compute_s = compute_started - started, finished - compute_started
        entry.stats.record_execution(samples, queue_s, compute_s)
        entry.stats.record_success(finished - started, samples)
        self.metrics.observe_batch(entry.model, samples, queue_s, compute_s)
        return InferResponse(
            model=entry.model,
            version=entry.version,
            outputs=outputs,
            id=request.id,
            output_specs={n: signature.outputs[n] for n in output_names},
        )


def _batch_size(request: InferRequest) -> int:
    first = next(iter(request.inputs.values()), None)
    return int(first.shape[0]) if first is not None and first.ndim else 1
