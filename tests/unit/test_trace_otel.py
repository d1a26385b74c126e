"""--trace-mode opentelemetry without TensorFlow: the spans a traced request becomes (Triton's InferRequest, model
and compute spans, their events, attributes and parents), a caller's W3C trace context joined, sampling of requests
that carry one, the settings that stay fixed, and a shutdown that a dead collector cannot hold up."""

from __future__ import annotations

import socket
import time

import numpy as np
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from kerve.server.errors import ErrorCode, ServingError
from kerve.server.otel import OtelExporter, endpoint_url, parse_resource
from kerve.server.trace import Tracer, trace_context

TRACE_ID = "0af7651916cd43dd8448eb211c12666c"
CALLER_SPAN = "b7ad6b7169242424"
TRACEPARENT = f"00-{TRACE_ID}-{CALLER_SPAN}-01"
COMPUTE = ["COMPUTE_START", "COMPUTE_INPUT_END", "COMPUTE_OUTPUT_START", "COMPUTE_END"]


def stamps(start: float) -> list[tuple[str, float]]:
    names = ["REQUEST_START", "QUEUE_START", *COMPUTE, "REQUEST_END"]
    return [(name, start + i / 1000) for i, name in enumerate(names)]  # 1 ms apart


def otel_tracer(level: str = "TIMESTAMPS", rate: int = 1, **resource: str) -> tuple[Tracer, InMemorySpanExporter]:
    spans = InMemorySpanExporter()
    return Tracer(level=level, rate=rate, otel=OtelExporter(resource=resource, span_exporter=spans)), spans


def by_name(spans: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    finished = spans.get_finished_spans()
    named = {span.name: span for span in finished}
    assert len(named) == len(finished)
    return named


def events(span: ReadableSpan) -> list[str]:
    return [event.name for event in span.events]


def test_a_traced_request_is_tritons_three_spans_inside_its_callers_trace() -> None:
    tracer, spans = otel_tracer(**{"test.key": "test.value"})
    begun_ns, start = time.time_ns(), time.monotonic()
    tracer.record("cnn", 3, "r1", stamps(start), context={"traceparent": TRACEPARENT, "tracestate": "k=v"})
    tracer.close()
    named = by_name(spans)
    root, model, compute = named["InferRequest"], named["cnn"], named["compute"]

    assert root.context.trace_id == model.context.trace_id == compute.context.trace_id == int(TRACE_ID, 16)
    assert root.parent is not None and root.parent.span_id == int(CALLER_SPAN, 16) and root.parent.is_remote
    assert model.parent is not None and model.parent.span_id == root.context.span_id
    assert compute.parent is not None and compute.parent.span_id == model.context.span_id
    assert root.kind is SpanKind.SERVER and root.context.trace_state.get("k") == "v"

    assert events(root) == ["INFER_RESPONSE_COMPLETE"]
    assert events(model) == ["REQUEST_START", "QUEUE_START", "REQUEST_END"]
    assert events(compute) == COMPUTE
    # the monotonic stamps, moved onto the wall clock as a whole: spacing kept to the microsecond
    assert root.start_time is not None and compute.start_time is not None and compute.end_time is not None
    assert abs(root.start_time - begun_ns) < 1e9
    assert abs(compute.start_time - root.start_time - 2_000_000) < 1_000
    assert abs(compute.end_time - compute.start_time - 3_000_000) < 1_000
    assert root.end_time is not None and root.end_time == model.end_time
    assert abs(root.end_time - root.start_time - 6_000_000) < 1_000
    assert [e.timestamp for e in compute.events] == sorted(e.timestamp for e in compute.events)

    for span in (root, model, compute):
        assert dict(span.attributes or {}) == {"model_name": "cnn", "model_version": 3, "request_id": "r1"}
        assert span.status.status_code is StatusCode.UNSET
    resource = dict(root.resource.attributes)
    assert resource["service.name"] == "kerve" and resource["test.key"] == "test.value"


def test_without_a_context_a_request_starts_a_trace_and_a_failed_one_ends_in_error() -> None:
    tracer, spans = otel_tracer(**{"service.name": "edge"})
    start = time.monotonic()
    tracer.record("cnn", None, "", [("REQUEST_START", start), ("REQUEST_END", start + 0.001)],
                  error=("INVALID_ARGUMENT", "input 'x': expected FP32, got INT64"))  # fmt: skip
    tracer.close()
    named = by_name(spans)
    assert set(named) == {"InferRequest", "cnn"}  # never computed: no compute span
    root, model = named["InferRequest"], named["cnn"]
    assert root.parent is None and model.parent is not None and model.parent.span_id == root.context.span_id
    assert events(model) == ["REQUEST_START", "REQUEST_END"]
    for span in (root, model):
        assert span.status.status_code is StatusCode.ERROR
        assert span.status.description == "INVALID_ARGUMENT: input 'x': expected FP32, got INT64"
        assert dict(span.attributes or {}) == {"model_name": "cnn", "model_version": -1}  # no id: not sent
    assert root.resource.attributes["service.name"] == "edge"


def test_tensors_level_adds_the_tensors_as_events_of_the_model_span() -> None:
    tracer, spans = otel_tracer(level="TENSORS")
    start = time.monotonic()
    x, y = np.array([[1.5, 2.0]], np.float32), np.array([[0.25]], np.float32)
    tracer.record("cnn", 1, "r", stamps(start), {"x": x}, {"y": y})
    tracer.close()
    named = by_name(spans)
    model = named["cnn"]
    assert events(model) == ["TENSOR_QUEUE_INPUT", "TENSOR_BACKEND_OUTPUT"]  # TENSORS alone: no timestamp events
    queued, answered = model.events
    assert dict(queued.attributes or {}) == {"name": "x", "data": "1.5,2.0", "shape": "1,2", "dtype": "FP32"}
    assert dict(answered.attributes or {}) == {"name": "y", "data": "0.25", "shape": "1,1", "dtype": "FP32"}
    assert queued.timestamp < answered.timestamp == model.end_time
    assert events(named["compute"]) == [] and events(named["InferRequest"]) == []


def test_requests_with_a_context_are_traced_whatever_the_rate_and_count() -> None:
    tracer, _ = otel_tracer(rate=0)  # 0: only those with a context
    assert [tracer.sample("m") for _ in range(3)] == [False] * 3
    assert [tracer.sample("m", has_context=True) for _ in range(3)] == [True] * 3
    tracer.update(None, {"trace_rate": ["2"], "trace_count": ["1"]})
    assert [tracer.sample("m", has_context=True) for _ in range(3)] == [True] * 3  # the count is not spent
    assert [tracer.sample("m") for _ in range(4)] == [False, True, False, False]  # every 2nd, one trace
    tracer.update(None, {"trace_level": ["OFF"]})
    assert not tracer.on and not tracer.sample("m", has_context=True)  # OFF is off, context or not

    triton = Tracer(level="TIMESTAMPS", rate=2)  # Triton's JSON mode: a context changes nothing
    assert not triton.propagates
    assert [triton.sample("m", has_context=True) for _ in range(2)] == [False, True]


def test_mode_and_file_are_fixed_and_rate_zero_is_opentelemetrys() -> None:
    tracer, _ = otel_tracer(rate=5)
    assert tracer.propagates
    assert tracer.settings()["trace_mode"] == ["opentelemetry"] and tracer.settings()["trace_file"] == [""]
    assert tracer.update("m", {"trace_mode": ["opentelemetry"], "trace_rate": ["0"]})["trace_rate"] == ["0"]
    with pytest.raises(ServingError) as info:
        tracer.update(None, {"trace_mode": ["triton"]})
    assert info.value.code is ErrorCode.INVALID_ARGUMENT and "fixed when the server starts" in info.value.message
    with pytest.raises(ServingError) as info:
        Tracer(level="TIMESTAMPS").update(None, {"trace_rate": ["0"]})
    assert "'trace_rate' must be an integer >= 1" in info.value.message


def test_trace_context_is_read_from_grpc_metadata() -> None:
    metadata = (("user-agent", "grpc-python"), ("traceparent", TRACEPARENT), ("tracestate", "k=v"))
    assert trace_context(metadata) == {"traceparent": TRACEPARENT, "tracestate": "k=v"}
    assert trace_context((("tracestate", "k=v"),)) is None  # a state without a parent is no context
    assert trace_context((("traceparent-bin", b"\x00"),)) is None
    assert trace_context(None) is None and trace_context(()) is None


def test_a_malformed_context_starts_a_new_trace() -> None:
    tracer, spans = otel_tracer()
    tracer.record("m", 1, "r", stamps(time.monotonic()), context={"traceparent": "00-not-a-trace-01"})
    tracer.close()
    root = by_name(spans)["InferRequest"]
    assert root.parent is None and root.context.trace_id != int(TRACE_ID, 16)


def test_an_export_fault_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    tracer, spans = otel_tracer()
    tracer.record("m", 1, "r", [("QUEUE_START", 1.0)])  # no REQUEST_START: the exporter cannot place the spans
    assert "cannot export the trace of a request to m" in caplog.text
    tracer.close()
    assert spans.get_finished_spans() == ()


def test_a_dead_collector_does_not_hold_up_shutdown(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "3")  # the abandoned export gives up soon after
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    exporter = OtelExporter(f"127.0.0.1:{port}/v1/traces")
    assert exporter.endpoint == f"http://127.0.0.1:{port}/v1/traces"  # Triton's url form: no scheme
    tracer = Tracer(level="TIMESTAMPS", rate=1, otel=exporter)
    tracer.record("m", 1, "r", stamps(time.monotonic()))
    began = time.monotonic()
    exporter.close(timeout_s=0.5)
    assert time.monotonic() - began < 3.0  # the SDK alone retries for up to 10 s
    assert "were dropped" in caplog.text and f"127.0.0.1:{port}" in caplog.text


def test_url_and_resource_parsing() -> None:
    assert endpoint_url("collector:4318/v1/traces") == "http://collector:4318/v1/traces"
    assert endpoint_url("https://collector/v1/traces") == "https://collector/v1/traces"
    assert parse_resource(["service.name=a", "zone = b", "service.name=c"]) == {"service.name": "c", "zone": "b"}
    assert parse_resource(["empty="]) == {"empty": ""}
    for bad in ("zone", "=x"):
        with pytest.raises(ValueError, match="KEY=VALUE"):
            parse_resource([bad])
