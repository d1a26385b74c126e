"""Traces as OpenTelemetry spans over OTLP/HTTP (`serve --trace-mode opentelemetry`), Triton's OpenTelemetry mode.

A traced request becomes Triton's three spans, so a collector, Jaeger or Tempo shows kerve's as it shows Triton's:
`InferRequest` (the request in the server), a child named after the model (REQUEST_START, QUEUE_START, REQUEST_END
as events), and its child `compute` (COMPUTE_START, COMPUTE_INPUT_END, COMPUTE_OUTPUT_START, COMPUTE_END). Each
span carries `model_name`, `model_version` and `request_id` attributes, as Triton's do. A request that arrived with a
W3C `traceparent` (gRPC metadata; tritonclient's and kerve.client's `headers=`) joins the caller's trace:
`InferRequest` is a child of the caller's span, so the server's time shows inside the caller's. A failed request's
spans end with status ERROR and its gRPC code.

Spans go out through the SDK's BatchSpanProcessor (a thread of its own; OTEL_BSP_* variables tune it) to the
OTLP/HTTP endpoint; resource attributes come from `--trace-otel-resource` and OTEL_RESOURCE_ATTRIBUTES. The
request path only builds the spans of the requests the tracer sampled, from the monotonic stamps it already took
(moved onto the wall clock OpenTelemetry uses); opentelemetry is imported only in this mode.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import kerve

log = logging.getLogger("kerve.trace")

DEFAULT_SERVICE_NAME = "kerve"
ROOT_SPAN = "InferRequest"
COMPUTE_SPAN = "compute"
_MODEL_EVENTS = ("REQUEST_START", "QUEUE_START", "REQUEST_END")
_COMPUTE_EVENTS = ("COMPUTE_START", "COMPUTE_INPUT_END", "COMPUTE_OUTPUT_START", "COMPUTE_END")


def endpoint_url(url: str) -> str:
    """Triton's `opentelemetry,url` may leave out the scheme (`localhost:4318/v1/traces`): OTLP/HTTP is http then."""
    return url if "://" in url else f"http://{url}"


def parse_resource(pairs: Sequence[str]) -> dict[str, str]:
    """`KEY=VALUE` pairs (Triton's `opentelemetry,resource=KEY=VALUE`), later ones winning; ValueError names a bad
    one."""
    resource: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--trace-otel-resource takes KEY=VALUE, got {pair!r}")
        resource[key.strip()] = value.strip()
    return resource


class OtelExporter:
    """Builds a traced request's spans and hands them to a BatchSpanProcessor.

    `span_exporter` replaces the OTLP/HTTP exporter (tests pass an in-memory one)."""

    def __init__(
        self,
        endpoint: str | None = None,
        resource: Mapping[str, str] | None = None,
        span_exporter: Any = None,
    ) -> None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        if span_exporter is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            # None: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, else OTEL_EXPORTER_OTLP_ENDPOINT, else localhost:4318
            span_exporter = OTLPSpanExporter(endpoint=endpoint_url(endpoint) if endpoint else None)
        self.endpoint = getattr(span_exporter, "_endpoint", endpoint or "")
        # Resource.create merges OTEL_RESOURCE_ATTRIBUTES / OTEL_SERVICE_NAME; the flags win over them
        attributes = {"service.name": DEFAULT_SERVICE_NAME, "service.version": kerve.__version__}
        self._provider = TracerProvider(
            resource=Resource.create({**attributes, **(resource or {})}),
            shutdown_on_exit=False,  # close() bounds the shutdown; an atexit flush could hang on a dead collector
        )
        self._provider.add_span_processor(BatchSpanProcessor(span_exporter))
        self._tracer = self._provider.get_tracer("kerve.server", kerve.__version__)
        self._propagator = TraceContextTextMapPropagator()

    def export(
        self,
        model: str,
        version: int | None,
        request_id: str,
        stamps: Sequence[tuple[str, float]],
        context: Mapping[str, str] | None = None,
        error: tuple[str, str] | None = None,
        tensor_events: Sequence[tuple[str, Mapping[str, str]]] = (),
        timestamps: bool = True,
    ) -> None:
        """One traced request. `stamps` are (name, time.monotonic()) as the JSON traces have them; `context` the
        request's W3C trace context (`traceparent`, `tracestate`); `error` its (gRPC code, message) when it
        failed; `tensor_events` (activity, tensor) added to the model span; without `timestamps` the spans keep
        their times but record no events."""
        from opentelemetry import trace
        from opentelemetry.trace import Status, StatusCode

        offset = time.time_ns() - time.monotonic_ns()
        at = {name: int(seconds * 1e9) + offset for name, seconds in stamps}
        start, end = at["REQUEST_START"], at["REQUEST_END"]
        parent = self._propagator.extract(context) if context else None
        attributes: dict[str, str | int] = {"model_name": model, "model_version": -1 if version is None else version}
        if request_id:
            attributes["request_id"] = request_id
        status = Status(StatusCode.ERROR, f"{error[0]}: {error[1]}") if error else None

        tracer = self._tracer
        root = tracer.start_span(
            ROOT_SPAN, context=parent, kind=trace.SpanKind.SERVER, start_time=start, attributes=attributes
        )
        within_root = trace.set_span_in_context(root)
        span = tracer.start_span(model, context=within_root, start_time=start, attributes=attributes)
        if "COMPUTE_START" in at:
            compute = tracer.start_span(
                COMPUTE_SPAN, context=trace.set_span_in_context(span), start_time=at["COMPUTE_START"],
                attributes=attributes,
            )  # fmt: skip
            if timestamps:
                for name in _COMPUTE_EVENTS:
                    compute.add_event(name, timestamp=at[name])
            compute.end(end_time=at["COMPUTE_END"])
        if timestamps:
            for name in _MODEL_EVENTS:
                if name in at:
                    span.add_event(name, timestamp=at[name])
        for activity, tensor in tensor_events:  # inputs as queued, outputs as answered
            when = at.get("QUEUE_START", start) if activity == "TENSOR_QUEUE_INPUT" else end
            span.add_event(activity, attributes=dict(tensor), timestamp=when)
        if status is not None:
            span.set_status(status)
            root.set_status(status)
        span.end(end_time=end)
        if timestamps:
            root.add_event("INFER_RESPONSE_COMPLETE", timestamp=end)
        root.end(end_time=end)

    def close(self, timeout_s: float = 5.0) -> None:
        """Export what is still queued, for at most `timeout_s`: a collector that is down must not hold up the
        server's shutdown (the SDK's own shutdown waits up to 30 s, and each export retries for 10)."""
        done = threading.Thread(target=self._provider.shutdown, name="kerve-otel-shutdown", daemon=True)
        done.start()
        done.join(timeout_s)
        if done.is_alive():
            log.warning("traces not exported %.0f s into shutdown were dropped (is %s up?)", timeout_s, self.endpoint)
