"""`kerve serve --trace-mode opentelemetry` against an OTLP/HTTP receiver on loopback: requests that carry a W3C
traceparent (tritonclient's and kerve.client's `headers=`, a TF Serving client's metadata, a stream's) arrive as
Triton's InferRequest -> model -> compute spans inside the caller's trace; requests without one stay untraced at
--trace-rate 0."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tensorflow as tf
import tritonclient.grpc as triton
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from helpers import running_server, wait_for
from kerve.client import Client

pytestmark = pytest.mark.integration

TRACE_IDS = {
    "triton": "0af7651916cd43dd8448eb211c12666c",
    "sdk": "1bf7651916cd43dd8448eb211c12666c",
    "tfs": "2cf7651916cd43dd8448eb211c12666c",
    "stream": "3df7651916cd43dd8448eb211c12666c",
}
CALLER_SPAN = "b7ad6b7169242424"


def traceparent(which: str) -> str:
    return f"00-{TRACE_IDS[which]}-{CALLER_SPAN}-01"


class Collector:
    """An OTLP/HTTP traces receiver: what the server exported, span by span, with its resource attributes."""

    def __init__(self) -> None:
        self.spans: list[Any] = []
        self.resources: list[dict[str, str]] = []
        self.lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = ExportTraceServiceRequest.FromString(body)
                with collector.lock:
                    for resource_spans in request.resource_spans:
                        attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                        for scope in resource_spans.scope_spans:
                            collector.spans += scope.spans
                            collector.resources += [attributes] * len(scope.spans)
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200 if self.path == "/v1/traces" else 404)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *_: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def roots(self) -> list[Any]:
        with self.lock:
            return [span for span in self.spans if span.name == "InferRequest"]

    def trace(self, trace_id: str) -> list[Any]:
        with self.lock:
            return [span for span in self.spans if span.trace_id.hex() == trace_id]


@pytest.fixture
def collector() -> Iterator[Collector]:
    receiver = Collector()
    yield receiver
    receiver.server.shutdown()
    receiver.server.server_close()


def check_trace(spans: list[Any], request_id: str | None = None) -> None:
    """One request's three spans, nested as Triton nests them, the root inside the caller's span."""
    named = {span.name: span for span in spans}
    assert sorted(named) == ["InferRequest", "cnn", "compute"] and len(spans) == 3
    root, model, compute = named["InferRequest"], named["cnn"], named["compute"]
    assert root.parent_span_id.hex() == CALLER_SPAN
    assert model.parent_span_id == root.span_id and compute.parent_span_id == model.span_id
    assert [e.name for e in model.events] == ["REQUEST_START", "QUEUE_START", "REQUEST_END"]
    assert [e.name for e in compute.events] == [
        "COMPUTE_START", "COMPUTE_INPUT_END", "COMPUTE_OUTPUT_START", "COMPUTE_END",
    ]  # fmt: skip
    assert root.start_time_unix_nano <= compute.start_time_unix_nano < compute.end_time_unix_nano
    assert compute.end_time_unix_nano <= model.end_time_unix_nano == root.end_time_unix_nano
    attributes = {a.key: a.value for a in model.attributes}
    assert attributes["model_name"].string_value == "cnn" and attributes["model_version"].int_value == 1
    if request_id is not None:
        assert attributes["request_id"].string_value == request_id


def test_callers_traces_continue_in_the_server(
    model_repo: Path, tmp_path: Path, collector: Collector, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")  # export within 0.1 s, not the SDK's 5 s
    flags = (
        "--trace-mode", "opentelemetry", "--trace-otel-url", f"127.0.0.1:{collector.port}/v1/traces",
        "--trace-level", "TIMESTAMPS", "--trace-rate", "0", "--trace-otel-resource", "service.name=kerve-test",
    )  # fmt: skip
    image = np.zeros((1, 8, 8, 1), np.float32)
    with running_server(model_repo, tmp_path, *flags) as (target, _proc):
        triton_client = triton.InferenceServerClient(target)
        try:
            settings = triton_client.get_trace_settings(as_json=True)["settings"]
            assert settings["trace_mode"]["value"] == ["opentelemetry"]
            tensor = triton.InferInput("image", [1, 8, 8, 1], "FP32")
            tensor.set_data_from_numpy(image)
            triton_client.infer("cnn", [tensor], request_id="untraced")  # no context at rate 0: not traced
            triton_client.infer("cnn", [tensor], request_id="t1", headers={"traceparent": traceparent("triton")})
        finally:
            triton_client.close()

        with Client(target) as client:
            client.predict("cnn", {"image": image}, headers={"traceparent": traceparent("sdk")})
            with client.stream("cnn", headers={"traceparent": traceparent("stream")}) as stream:
                for _ in range(2):
                    stream.predict({"image": image})

        with grpc.insecure_channel(target) as channel:
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "cnn"
            request.inputs["image"].CopyFrom(tf.make_tensor_proto(image))
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            stub.Predict(request, timeout=30, metadata=(("traceparent", traceparent("tfs")),))

        wait_for(lambda: len(collector.roots()) >= 5, "five requests' spans at the receiver", timeout_s=30)

    check_trace(collector.trace(TRACE_IDS["triton"]), "t1")
    check_trace(collector.trace(TRACE_IDS["sdk"]))
    check_trace(collector.trace(TRACE_IDS["tfs"]))
    streamed = collector.trace(TRACE_IDS["stream"])  # the stream's context is each message's parent
    roots = [span for span in streamed if span.name == "InferRequest"]
    assert len(roots) == 2 and len(streamed) == 6
    for root in roots:
        check_trace(subtree(streamed, root))
    assert len(collector.roots()) == 5  # the request without a context was not traced
    assert {r["service.name"] for r in collector.resources} == {"kerve-test"}


def subtree(spans: list[Any], root: Any) -> list[Any]:
    """`root` and the spans under it (children and grandchildren)."""
    found, ids = [root], {root.span_id}
    for _ in range(2):
        for span in spans:
            if span.parent_span_id in ids and span.span_id not in ids:
                found.append(span)
                ids.add(span.span_id)
    return found
