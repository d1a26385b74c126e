"""The SDK's cluster options against real servers: round_robin over several addresses, dns:/// targets, retries
with backoff while a server comes up, and the caller's deadline bounding every retry."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from helpers import running_server, stop_server
from kerve.client import AsyncClient, Client, KerveError, RetryPolicy, UnavailableError
from kerve.protos import grpc_service_pb2 as pb
from kerve.protos import grpc_service_pb2_grpc as pb_grpc
from kerve.quickstart import free_port, start_server

pytestmark = pytest.mark.integration

IMAGE = np.random.default_rng(2).random((1, 8, 8, 1), dtype=np.float32)


class RecordingPolicy(RetryPolicy):
    """A RetryPolicy that records every decision it makes (attempt number, error code, delay or None)."""

    def __init__(self, log: list[tuple[int, str, float | None]], **kwargs) -> None:
        super().__init__(**kwargs)
        object.__setattr__(self, "log", log)

    def next_delay(self, attempt, error, remaining_s, rng):  # noqa: ANN001, ANN201 - same signature as the base
        delay = super().next_delay(attempt, error, remaining_s, rng)
        self.log.append((attempt, error.code, delay))
        return delay


@pytest.fixture(scope="module")
def second_server(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_server(model_repo, tmp_path_factory.mktemp("second")) as (target, _proc):
        yield target


def cnn_successes(target: str) -> int:
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        stats = stub.ModelStatistics(pb.ModelStatisticsRequest(name="cnn"), timeout=10)
    return sum(s.inference_stats.success.count for s in stats.model_stats)


def test_round_robin_spreads_calls_over_every_address(server: str, second_server: str) -> None:
    """Once the channel is connected to both servers, round_robin alternates: 20 calls -> 10 each, also for 20
    concurrent calls from AsyncClient. pick_first, the contrast, sends everything to one server."""
    targets = [server, second_server]
    target = "ipv4:" + ",".join(targets)  # two addresses, as dns:/// gives one per pod behind a headless Service

    def served() -> list[int]:
        return [cnn_successes(t) for t in targets]

    def spread(before: list[int]) -> list[int]:
        return [after - b for after, b in zip(served(), before, strict=True)]

    with Client(target) as client:
        before, end = served(), time.monotonic() + 30
        while min(spread(before)) == 0 and time.monotonic() < end:  # until both connections are up
            client.predict("cnn", {"image": IMAGE})
        assert min(spread(before)) > 0, "round_robin never reached the second server"
        before = served()
        for _ in range(20):
            client.predict("cnn", {"image": IMAGE})
        assert spread(before) == [10, 10]

    async def concurrent() -> list[int]:
        async with AsyncClient(target) as client:
            before, end = served(), time.monotonic() + 30
            while min(spread(before)) == 0 and time.monotonic() < end:
                await client.predict("cnn", {"image": IMAGE})
            before = served()
            await asyncio.gather(*(client.predict("cnn", {"image": IMAGE}) for _ in range(20)))
            return spread(before)

    assert asyncio.run(concurrent()) == [10, 10]

    before = served()
    with Client(target, load_balancing="pick_first") as client:  # the contrast: one connection, one server
        for _ in range(10):
            client.predict("cnn", {"image": IMAGE})
    assert sorted(spread(before)) == [0, 10]


def test_dns_target(server: str) -> None:
    port = server.rsplit(":", 1)[1]
    with Client(f"dns:///localhost:{port}") as client:
        assert client.predict("cnn", {"image": IMAGE})["output_0"].shape == (1, 10)

    async def main() -> tuple[int, ...]:
        async with AsyncClient(f"dns:///127.0.0.1:{port}") as client:
            return (await client.predict("cnn", {"image": IMAGE}))["output_0"].shape

    assert asyncio.run(main()) == (1, 10)


def test_retry_succeeds_once_the_server_comes_up(model_repo: Path, tmp_path: Path) -> None:
    port = free_port()
    target = f"127.0.0.1:{port}"
    with Client(target, retry=None, timeout=5) as probe, pytest.raises(UnavailableError):
        probe.live()  # nothing listens yet

    log: list[tuple[int, str, float | None]] = []
    policy = RecordingPolicy(log, max_attempts=10_000, initial_backoff_s=0.05, max_backoff_s=0.5)
    outcome: dict[str, object] = {}
    started = threading.Event()

    def call() -> None:
        with Client(target, retry=policy, timeout=120) as client:
            started.set()
            try:
                outcome["result"] = client.predict("cnn", {"image": IMAGE})
            except KerveError as exc:
                outcome["error"] = exc

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    assert started.wait(30)
    deadline = time.monotonic() + 30
    while not log and time.monotonic() < deadline:  # bounded poll: the first attempt has failed
        time.sleep(0.01)
    assert log and log[0][:2] == (1, "UNAVAILABLE")

    proc = start_server(model_repo, port, tmp_path / "server.log")
    try:
        thread.join(180)
        assert not thread.is_alive()
        assert "error" not in outcome, outcome.get("error")
        assert outcome["result"]["output_0"].shape == (1, 10)
        assert len(log) >= 2 and all(code == "UNAVAILABLE" and delay is not None for _, code, delay in log)
    finally:
        stop_server(proc)


SLACK_S = 1.0


@pytest.mark.parametrize("timeout", [0.5, 1.5])
def test_retries_stop_at_the_callers_deadline(timeout: float) -> None:
    target = f"127.0.0.1:{free_port()}"  # nothing listens here
    log: list[tuple[int, str, float | None]] = []
    policy = RecordingPolicy(log, max_attempts=10_000, initial_backoff_s=0.02, max_backoff_s=0.2)
    with Client(target, retry=policy, timeout=timeout) as client:
        started = time.monotonic()
        with pytest.raises(UnavailableError):
            client.predict("cnn", {"image": IMAGE})
        elapsed = time.monotonic() - started
    # 10 000 attempts would take minutes: ending within a second of the deadline shows it is respected
    # (the slack absorbs scheduling on a loaded 2-core machine)
    assert elapsed <= timeout + SLACK_S, elapsed
    assert len(log) >= 3 and log[-1][2] is None  # it retried, then gave up at the deadline

    async def main() -> float:
        async with AsyncClient(target, retry=policy, timeout=timeout) as client:
            started = time.monotonic()
            with pytest.raises(UnavailableError):
                await client.predict("cnn", {"image": IMAGE})
            return time.monotonic() - started

    log.clear()
    assert asyncio.run(main()) <= timeout + SLACK_S
    assert len(log) >= 3 and log[-1][2] is None
