"""Client options without a server: backoff schedule, retry decisions under a deadline, channel arguments."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from kerve.client import (
    AsyncClient,
    Client,
    DeadlineExceededError,
    Keepalive,
    NotFoundError,
    ResourceExhaustedError,
    RetryPolicy,
    TLSConfig,
    UnavailableError,
    read_token_file,
)
from kerve.client.options import (
    NO_RETRY,
    acall_with_retry,
    call_metadata,
    call_with_retry,
    channel_options,
)

# --- backoff schedule -------------------------------------------------------------------------------------


def test_backoff_without_jitter_is_exponential_and_capped() -> None:
    policy = RetryPolicy(initial_backoff_s=0.1, multiplier=2.0, max_backoff_s=0.5, jitter=0.0, max_attempts=10)
    rng = random.Random(0)
    assert [round(policy.backoff(n, rng), 9) for n in range(1, 7)] == [0.1, 0.2, 0.4, 0.5, 0.5, 0.5]


def test_backoff_with_jitter_is_deterministic_for_a_seed_and_within_bounds() -> None:
    policy = RetryPolicy(initial_backoff_s=0.1, multiplier=2.0, max_backoff_s=1.0, jitter=0.5, max_attempts=10)
    first = [policy.backoff(n, random.Random(42)) for n in range(1, 8)]
    again = [policy.backoff(n, random.Random(42)) for n in range(1, 8)]
    assert first == again
    # the exact schedule for seed 7: base * (1 - 0.5 * u) with the seeded uniforms
    rng, expected_rng = random.Random(7), random.Random(7)
    schedule = [policy.backoff(n, rng) for n in range(1, 6)]
    bases = [0.1, 0.2, 0.4, 0.8, 1.0]
    assert schedule == pytest.approx([b * (1 - 0.5 * expected_rng.random()) for b in bases])
    for n, base in enumerate(bases, start=1):
        for seed in range(50):
            assert base * 0.5 <= policy.backoff(n, random.Random(seed)) <= base


def test_full_jitter_spreads_clients_apart() -> None:
    policy = RetryPolicy(initial_backoff_s=1.0, max_backoff_s=1.0, jitter=1.0)
    delays = {round(policy.backoff(1, random.Random(seed)), 6) for seed in range(20)}
    assert len(delays) == 20 and all(0 <= d <= 1.0 for d in delays)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_attempts": 0},
        {"initial_backoff_s": 0},
        {"initial_backoff_s": 2.0, "max_backoff_s": 1.0},
        {"multiplier": 0.5},
        {"jitter": 1.5},
    ],
)
def test_retry_policy_validation(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)


# --- the retry loop with a fake clock ---------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    async def asleep(self, seconds: float) -> None:
        self.sleep(seconds)


def flaky(failures: list[Exception], clock: FakeClock, cost_s: float = 0.0):
    """An attempt that raises the given errors in turn, then returns 'ok'; records each attempt's timeout."""
    timeouts: list[float | None] = []

    def attempt(timeout: float | None) -> str:
        timeouts.append(timeout)
        clock.now += cost_s
        if failures:
            raise failures.pop(0)
        return "ok"

    return attempt, timeouts


def test_retries_unavailable_then_succeeds_with_the_seeded_schedule() -> None:
    policy = RetryPolicy(max_attempts=5, initial_backoff_s=0.1, max_backoff_s=1.0, jitter=0.5)
    clock = FakeClock()
    attempt, timeouts = flaky([UnavailableError("down"), UnavailableError("down")], clock, cost_s=0.01)
    assert call_with_retry(attempt, policy, 10.0, clock=clock, sleep=clock.sleep, rng=random.Random(3)) == "ok"
    expected = random.Random(3)
    assert clock.sleeps == pytest.approx([0.1 * (1 - 0.5 * expected.random()), 0.2 * (1 - 0.5 * expected.random())])
    # each attempt gets what is left of the overall budget
    assert timeouts[0] == pytest.approx(10.0)
    assert timeouts[1] == pytest.approx(10.0 - 0.01 - clock.sleeps[0])
    assert timeouts[2] == pytest.approx(10.0 - 0.02 - sum(clock.sleeps))


def test_retries_never_run_past_the_deadline() -> None:
    policy = RetryPolicy(max_attempts=1000, initial_backoff_s=0.05, max_backoff_s=0.4, jitter=0.5)
    clock = FakeClock()
    start = clock.now
    attempt, timeouts = flaky([UnavailableError(f"down {i}") for i in range(1000)], clock, cost_s=0.03)
    with pytest.raises(UnavailableError):
        call_with_retry(attempt, policy, 2.0, clock=clock, sleep=clock.sleep, rng=random.Random(0))
    assert clock.now - start <= 2.0
    assert 5 < len(timeouts) < 1000  # it did retry, and stopped because of the deadline, not max_attempts
    assert all(t is not None and t > 0 for t in timeouts)


def test_attempts_are_bounded_and_other_codes_are_not_retried() -> None:
    policy = RetryPolicy(max_attempts=3, initial_backoff_s=0.01, jitter=0.0)
    clock = FakeClock()
    attempt, timeouts = flaky([UnavailableError("down")] * 5, clock)
    with pytest.raises(UnavailableError):
        call_with_retry(attempt, policy, 10.0, clock=clock, sleep=clock.sleep)
    assert len(timeouts) == 3 and clock.sleeps == pytest.approx([0.01, 0.02])

    for error in (NotFoundError("nope"), DeadlineExceededError("late"), ResourceExhaustedError("full")):
        attempt, timeouts = flaky([error], clock)
        with pytest.raises(type(error)):
            call_with_retry(attempt, policy, 10.0, clock=clock, sleep=clock.sleep)
        assert len(timeouts) == 1

    with_queue_full = RetryPolicy(max_attempts=3, retry_on=frozenset({"unavailable", "RESOURCE_EXHAUSTED"}))
    attempt, timeouts = flaky([ResourceExhaustedError("full")], clock)
    assert call_with_retry(attempt, with_queue_full, 10.0, clock=clock, sleep=clock.sleep) == "ok"
    assert len(timeouts) == 2

    attempt, timeouts = flaky([UnavailableError("down")], clock)
    with pytest.raises(UnavailableError):
        call_with_retry(attempt, NO_RETRY, 10.0, clock=clock, sleep=clock.sleep)


def test_async_retry_makes_the_same_decisions() -> None:
    policy = RetryPolicy(max_attempts=6, initial_backoff_s=0.1, max_backoff_s=0.3, jitter=0.5)
    sync_clock, async_clock = FakeClock(), FakeClock()
    errors = [UnavailableError("down")] * 4
    attempt, _ = flaky(list(errors), sync_clock, cost_s=0.02)
    call_with_retry(attempt, policy, 5.0, clock=sync_clock, sleep=sync_clock.sleep, rng=random.Random(11))

    async_timeouts: list[float | None] = []

    async def async_attempt(timeout: float | None) -> str:
        async_timeouts.append(timeout)
        async_clock.now += 0.02
        if len(async_timeouts) <= len(errors):
            raise UnavailableError("down")
        return "ok"

    result = asyncio.run(
        acall_with_retry(async_attempt, policy, 5.0, clock=async_clock, sleep=async_clock.asleep, rng=random.Random(11))
    )
    assert result == "ok"
    assert async_clock.sleeps == sync_clock.sleeps and len(async_clock.sleeps) == 4


# --- channel arguments, TLS, token, keepalive -------------------------------------------------------------


def test_channel_options_default_to_round_robin() -> None:
    options = dict(channel_options())
    assert json.loads(options["grpc.service_config"]) == {"loadBalancingConfig": [{"round_robin": {}}]}
    assert options["grpc.max_send_message_length"] == options["grpc.max_receive_message_length"] == 256 * 2**20
    assert "grpc.keepalive_time_ms" not in options
    pick_first = dict(channel_options(1024, load_balancing="pick_first"))
    assert json.loads(pick_first["grpc.service_config"]) == {"loadBalancingConfig": [{"pick_first": {}}]}
    with pytest.raises(ValueError, match="load_balancing"):
        channel_options(load_balancing="random")


def test_channel_options_keepalive_reconnect_and_server_name() -> None:
    options = dict(
        channel_options(
            keepalive=Keepalive(time_s=20, timeout_s=5),
            retry=RetryPolicy(initial_backoff_s=0.05, max_backoff_s=1.5),
            tls=TLSConfig(server_name="kerve.example"),
        )
    )
    assert options["grpc.keepalive_time_ms"] == 20000 and options["grpc.keepalive_timeout_ms"] == 5000
    assert options["grpc.keepalive_permit_without_calls"] == 1
    assert options["grpc.initial_reconnect_backoff_ms"] == 50 and options["grpc.max_reconnect_backoff_ms"] == 1500
    assert options["grpc.ssl_target_name_override"] == "kerve.example"
    with pytest.raises(ValueError, match="keepalive time_s"):
        Keepalive(time_s=1)


def test_token_metadata_and_token_file(tmp_path: Path) -> None:
    assert call_metadata(None) is None
    assert call_metadata("abc") == (("authorization", "Bearer abc"),)
    with pytest.raises(ValueError):
        call_metadata("two words")
    path = tmp_path / "token"
    path.write_text("# the token\n\n  abc123  \nsecond\n")
    assert read_token_file(path) == "abc123"
    path.write_text("# nothing\n")
    with pytest.raises(ValueError, match="holds no token"):
        read_token_file(path)
    with pytest.raises(ValueError, match="cannot read"):
        read_token_file(tmp_path / "missing")


def test_tls_config_reads_files_and_checks_pairs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="go together"):
        TLSConfig(certificate_chain=b"cert")
    with pytest.raises(ValueError, match="cannot read"):
        TLSConfig(root_certificates=tmp_path / "missing.pem").credentials()


def test_clients_accept_cluster_targets_and_options_without_connecting() -> None:
    options = {
        "tls": True,
        "token": "t",
        "retry": RetryPolicy(max_attempts=2),
        "keepalive": Keepalive(),
        "load_balancing": "round_robin",
    }
    with Client("dns:///kerve-headless.default.svc.cluster.local:8500", **options) as client:
        assert client.options.tls is not None and client.options.metadata == (("authorization", "Bearer t"),)

    async def main() -> None:
        async with AsyncClient("dns:///kerve-headless:8500", **options) as client:
            assert client.options.retry.max_attempts == 2

    asyncio.run(main())
    with pytest.raises(ValueError, match="timeout"):
        Client("localhost:1", timeout=0)


def test_connections_open_that_many_channels_with_their_own_connections_taken_in_turn() -> None:
    """`connections=N`: N channels, each with its own subchannel pool (gRPC would share one connection between
    channels to one target otherwise); calls take them in turn (a --processes group's processes each get some)."""
    with Client("localhost:1") as one:
        assert len(one._channels) == 1 and ("grpc.use_local_subchannel_pool", 1) not in one.options.channel_options()
        assert one._stub is one._stub
    with Client("localhost:1", connections=3) as client:
        assert ("grpc.use_local_subchannel_pool", 1) in client.options.channel_options()
        assert [client._stub for _ in range(6)] == client._stubs * 2
        assert len({id(stub) for stub in client._stubs}) == 3

    async def main() -> None:
        async with AsyncClient("localhost:1", connections=2) as aclient:
            assert [aclient._stub for _ in range(4)] == aclient._stubs * 2

    asyncio.run(main())
    for bad in (0, 65, 1.5, True, "2"):
        with pytest.raises(ValueError, match="connections must be an integer"):
            Client("localhost:1", connections=bad)  # type: ignore[arg-type]


def test_client_imports_neither_tensorflow_nor_server_code() -> None:
    script = (
        "import sys\n"
        "from kerve.client import Client, AsyncClient, RetryPolicy, TLSConfig, Keepalive\n"
        "Client('dns:///localhost:1', tls=True, token='t', keepalive=Keepalive()).close()\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in {'tensorflow', 'keras'}\n"
        "       or m.startswith(('kerve.server', 'kerve.training'))]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
