"""Prometheus metrics of a real server: send a known mix of requests, scrape /metrics over HTTP, and check that
every series moved by exactly what was sent."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from helpers import Samples, running_server, scrape, value
from kerve.client import AsyncClient, Client, InvalidArgumentError, NotFoundError
from kerve.protos import grpc_service_pb2 as pb
from kerve.protos import grpc_service_pb2_grpc as pb_grpc
from kerve.quickstart import free_port

pytestmark = pytest.mark.integration

RNG = np.random.default_rng(3)
PAIR = {"features": RNG.random((4, 3), dtype=np.float32), "ids": RNG.integers(0, 16, (4, 2), dtype=np.int64)}


@pytest.fixture(scope="module")
def metrics_server(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A server of its own (nothing else sends to it), with /metrics on a free port."""
    metrics_port = free_port()
    logs = tmp_path_factory.mktemp("metrics-logs")
    with running_server(model_repo, logs, "--metrics-port", str(metrics_port)) as (target, _proc):
        yield target, f"http://127.0.0.1:{metrics_port}/metrics"


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def test_names_and_types_follow_prometheus_rules(metrics_server: tuple[str, str]) -> None:
    _, url = metrics_server
    _, types = scrape(url)
    assert types["kerve_requests"] == "counter" and types["kerve_model_reload_events"] == "counter"
    for name in (
        "kerve_request_duration_seconds",
        "kerve_queue_duration_seconds",
        "kerve_compute_duration_seconds",
        "kerve_batch_size",
    ):
        assert types[name] == "histogram", name
    for name in ("kerve_queue_depth", "kerve_inflight_requests", "kerve_model_state"):
        assert types[name] == "gauge", name
    assert types["kerve_model_load_duration_seconds"] == "gauge"


def test_model_state_and_load_duration(metrics_server: tuple[str, str]) -> None:
    _, url = metrics_server
    samples, _ = scrape(url)
    for model in ("cnn", "pair"):
        assert value(samples, "kerve_model_state", model=model, version="1", state="READY") == 1
        for state in ("LOADING", "FAILED", "UNLOADING", "UNLOADED"):
            assert value(samples, "kerve_model_state", model=model, version="1", state=state) == 0
        assert value(samples, "kerve_model_load_duration_seconds", model=model, version="1") > 0
        assert value(samples, "kerve_model_reload_events_total", model=model, event="loaded") == 1
        # per-model gauges exist from load on (an HPA or alert sees 0, not "no data")
        assert ("kerve_queue_depth", frozenset({("model", model)})) in samples
        assert ("kerve_inflight_requests", frozenset({("model", model)})) in samples


def test_request_counts_latencies_and_batch_sizes_move_exactly(metrics_server: tuple[str, str]) -> None:
    target, url = metrics_server
    before, _ = scrape(url)
    rows = [1, 2, 3, 5, 8]  # sequential requests: each is a batch of its own
    with Client(target, retry=None) as client:
        for n in rows:
            client.predict("cnn", {"image": RNG.random((n, 8, 8, 1), dtype=np.float32)})
        for _ in range(3):
            client.predict("pair", PAIR, version=1)
        for _ in range(2):
            with pytest.raises(InvalidArgumentError):  # reaches the model's version, fails validation
                client.predict("cnn", {"image": np.zeros((1, 8, 8, 1), np.float64)})
            with pytest.raises(NotFoundError):
                client.predict("no-such-model", {"image": np.zeros((1, 8, 8, 1), np.float32)})
        with pytest.raises(NotFoundError):
            client.predict("cnn", {"image": np.zeros((1, 8, 8, 1), np.float32)}, version=987654)
    with grpc.insecure_channel(target) as channel:  # a request that cannot even be decoded
        request = pb.ModelInferRequest(model_name="cnn")
        request.inputs.add(name="image", datatype="FP32", shape=[1, 8, 8, 1])
        request.raw_input_contents.extend([b"\0" * 256, b""])
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    after, _ = scrape(url)

    def requests(**labels: str) -> float:
        return delta(before, after, "kerve_requests_total", protocol="v2", **labels)

    assert requests(model="cnn", version="1", code="OK") == len(rows)
    assert requests(model="pair", version="1", code="OK") == 3
    assert requests(model="cnn", version="1", code="INVALID_ARGUMENT") == 2  # the version that rejected it
    assert requests(model="cnn", version="", code="INVALID_ARGUMENT") == 1  # undecodable: no version resolved
    assert requests(model="<unknown>", version="", code="NOT_FOUND") == 2  # bounded label values
    assert requests(model="cnn", version="", code="NOT_FOUND") == 1  # not version="987654"
    assert requests() == len(rows) + 3 + 2 + 2 + 1 + 1
    assert not any(n == "kerve_requests_total" and ("version", "987654") in ls for n, ls in after), (
        "a client-chosen version must not become a label value"
    )

    # latency histograms: one observation per decoded request, per executed batch
    assert delta(before, after, "kerve_request_duration_seconds_count", model="cnn", protocol="v2") == len(rows) + 3
    assert delta(before, after, "kerve_request_duration_seconds_count", model="pair", protocol="v2") == 3
    assert delta(before, after, "kerve_request_duration_seconds_sum", model="cnn") > 0
    for name in ("kerve_queue_duration_seconds", "kerve_compute_duration_seconds", "kerve_batch_size"):
        assert delta(before, after, f"{name}_count", model="cnn") == len(rows), name
        assert delta(before, after, f"{name}_count", model="pair") == 3, name
    assert delta(before, after, "kerve_compute_duration_seconds_sum", model="cnn") > 0
    assert delta(before, after, "kerve_batch_size_sum", model="cnn") == sum(rows)
    assert delta(before, after, "kerve_batch_size_sum", model="pair") == 3 * 4
    # buckets are cumulative: batch of 1 lands in le=1, all five in le=8
    assert delta(before, after, "kerve_batch_size_bucket", model="cnn", le="1.0") == 1
    assert delta(before, after, "kerve_batch_size_bucket", model="cnn", le="2.0") == 2
    assert delta(before, after, "kerve_batch_size_bucket", model="cnn", le="8.0") == len(rows)
    assert delta(before, after, "kerve_batch_size_bucket", model="cnn", le="+Inf") == len(rows)

    for model in ("cnn", "pair"):
        assert value(after, "kerve_inflight_requests", model=model) == 0
        assert value(after, "kerve_queue_depth", model=model) == 0


def test_concurrent_requests_are_counted_once_and_batched(metrics_server: tuple[str, str]) -> None:
    target, url = metrics_server
    before, _ = scrape(url)
    images = RNG.random((32, 8, 8, 1), dtype=np.float32)

    async def main() -> None:
        async with AsyncClient(target, retry=None) as client:
            await asyncio.gather(*(client.predict("cnn", {"image": images[i : i + 1]}) for i in range(32)))

    asyncio.run(main())
    after, _ = scrape(url)
    assert delta(before, after, "kerve_requests_total", model="cnn", version="1", code="OK") == 32
    assert delta(before, after, "kerve_request_duration_seconds_count", model="cnn") == 32
    assert delta(before, after, "kerve_batch_size_sum", model="cnn") == 32  # every row ran exactly once
    batches = delta(before, after, "kerve_batch_size_count", model="cnn")
    assert 1 <= batches <= 32
    assert delta(before, after, "kerve_queue_duration_seconds_count", model="cnn") == batches
    assert delta(before, after, "kerve_compute_duration_seconds_count", model="cnn") == batches
    assert value(after, "kerve_inflight_requests", model="cnn") == 0
    assert value(after, "kerve_queue_depth", model="cnn") == 0
