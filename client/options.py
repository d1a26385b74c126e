"""Connection options shared by Client and AsyncClient: TLS, bearer token, keepalive, load balancing, retries.

Everything here is plain data and pure functions (no I/O besides reading certificate files), so both clients
build their channel, call metadata and retry decisions from one code path:

- `channel_options(...)`: the gRPC channel arguments (message size, load-balancing service config, keepalive,
  reconnect backoff, TLS server-name override).
- `TLSConfig`: root certificates (None: the system roots), client certificate and key for mutual TLS.
- `call_metadata(token)`: `authorization: Bearer <token>` for every call; `header_metadata(headers)` adds a
  call's own headers (a W3C `traceparent`, a routing key) after it, checked against gRPC's metadata rules.
- `RetryPolicy`: exponential backoff with jitter on retryable status codes, never past the caller's deadline.
  `call_with_retry` / `acall_with_retry` run it with an injectable clock, sleep and random source.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc

from .errors import KerveError

DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024 * 1024
LOAD_BALANCING_POLICIES = ("round_robin", "pick_first")
MAX_CONNECTIONS = 64  # a client's connections to one target (`connections=`)
MIN_KEEPALIVE_S = 10.0  # kerve serve accepts pings this often; most servers reject more frequent ones

T = TypeVar("T")
Metadata = tuple[tuple[str, str | bytes], ...]
Headers = Mapping[str, str | bytes]


# --------------------------------------------------------------------------------------------------- TLS


def _pem(value: bytes | str | Path | None, what: str) -> bytes | None:
    """PEM bytes as given, or read from a path."""
    if value is None or isinstance(value, bytes):
        return value
    try:
        return Path(value).read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {what} {value}: {exc.strerror or exc}") from None


@dataclass(frozen=True)
class TLSConfig:
    """TLS for the channel. Each PEM field takes bytes or a file path.

    - `root_certificates`: CA bundle that signed the server's certificate; None uses the system roots.
    - `certificate_chain` + `private_key`: the client certificate, for servers that require mutual TLS.
    - `server_name`: the name to verify the server certificate against when it differs from the target's host
      (an IP address, a load balancer); sets `grpc.ssl_target_name_override`.
    """

    root_certificates: bytes | str | Path | None = None
    certificate_chain: bytes | str | Path | None = None
    private_key: bytes | str | Path | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.certificate_chain is None) != (self.private_key is None):
            raise ValueError("TLS client certificate and private key go together")

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=_pem(self.root_certificates, "TLS root certificates"),
            private_key=_pem(self.private_key, "TLS private key"),
            certificate_chain=_pem(self.certificate_chain, "TLS certificate chain"),
        )


# --------------------------------------------------------------------------------------------- keepalive


@dataclass(frozen=True)
class Keepalive:
    """HTTP/2 keepalive pings: detect a dead peer (a pod gone without closing its connections) within
    `time_s + timeout_s` instead of at the next call's deadline."""

    time_s: float = 30.0  # ping after this long without activity
    timeout_s: float = 10.0  # close the connection if the ping is not answered within this
    permit_without_calls: bool = True  # also ping idle connections (kerve serve allows it)

    def __post_init__(self) -> None:
        if self.time_s < MIN_KEEPALIVE_S:
            raise ValueError(f"keepalive time_s must be >= {MIN_KEEPALIVE_S:g} (servers reject faster pings)")
        if self.timeout_s <= 0:
            raise ValueError("keepalive timeout_s must be > 0")

    def channel_options(self) -> list[tuple[str, Any]]:
        return [
            ("grpc.keepalive_time_ms", int(self.time_s * 1000)),
            ("grpc.keepalive_timeout_ms", int(self.timeout_s * 1000)),
            ("grpc.keepalive_permit_without_calls", int(self.permit_without_calls)),
            ("grpc.http2.max_pings_without_data", 0),
        ]


# ----------------------------------------------------------------------------------------------- retries


@dataclass(frozen=True)
class RetryPolicy:
    """Retry a call that failed with one of `retry_on` codes, waiting an exponentially growing, jittered delay.

    Before attempt n+1 (n = 1, 2, ...) the client waits `base * uniform(1 - jitter, 1)`, where
    `base = min(max_backoff_s, initial_backoff_s * multiplier ** (n - 1))`; jitter 1.0 is "full jitter".
    Attempts stop at `max_attempts`, and never run past the caller's deadline: a delay that would end after
    it is not slept, the last error is raised instead. Only idempotent calls are retried (inference, metadata,
    model index, statistics, model loads and unloads, liveness). RESOURCE_EXHAUSTED (a full queue) is worth
    adding to `retry_on` when other replicas may have room.
    """

    max_attempts: int = 4
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 2.0
    multiplier: float = 2.0
    jitter: float = 0.5
    retry_on: frozenset[str] = field(default_factory=lambda: frozenset({"UNAVAILABLE"}))

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if self.initial_backoff_s <= 0 or self.max_backoff_s < self.initial_backoff_s:
            raise ValueError("need 0 < initial_backoff_s <= max_backoff_s")
        if self.multiplier < 1:
            raise ValueError("multiplier must be >= 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be in [0, 1]")
        object.__setattr__(self, "retry_on", frozenset(code.upper() for code in self.retry_on))

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        base = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (attempt - 1))
        return base * (1.0 - self.jitter * rng.random())

    def next_delay(
        self, attempt: int, error: KerveError, remaining_s: float | None, rng: random.Random
    ) -> float | None:
        """The delay before the next attempt, or None to give up and raise `error`."""
        if error.code not in self.retry_on or attempt >= self.max_attempts:
            return None
        delay = self.backoff(attempt, rng)
        if remaining_s is not None and delay >= remaining_s:
            return None
        return delay

    def reconnect_options(self) -> list[tuple[str, Any]]:
        """Reconnect to a failed address on the retry schedule (gRPC's default waits 1 s, then longer)."""
        return [
            ("grpc.initial_reconnect_backoff_ms", max(1, int(self.initial_backoff_s * 1000))),
            ("grpc.max_reconnect_backoff_ms", max(1, int(self.max_backoff_s * 1000))),
        ]


NO_RETRY = RetryPolicy(max_attempts=1)


MAX_TIMEOUT_S = 1e9  # about 31 years: the largest a deadline in microseconds (int64) and gRPC's clock both hold


def check_timeout(timeout: float) -> float:
    """A timeout in seconds that every call can carry: positive and finite (inf or NaN would pass a `<= 0` check
    and then fail every call with a misleading DeadlineExceededError or a raw OverflowError)."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise ValueError(f"timeout must be a number of seconds, got {timeout!r}")
    if not math.isfinite(timeout) or timeout <= 0 or timeout > MAX_TIMEOUT_S:
        raise ValueError(f"timeout must be > 0 and at most {MAX_TIMEOUT_S:g} seconds, got {timeout}")
    return float(timeout)


def call_with_retry(
    attempt: Callable[[float | None], T],
    policy: RetryPolicy,
    timeout_s: float | None,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], object] = time.sleep,
    rng: random.Random | None = None,
) -> T:
    """Run `attempt(timeout_for_this_attempt)` until it succeeds, the policy gives up or the deadline passes.

    `timeout_s` is the caller's overall budget; each attempt gets what is left of it."""
    rng = rng or random.Random()
    deadline = None if timeout_s is None else clock() + check_timeout(timeout_s)
    number = 1
    while True:
        remaining = None if deadline is None else max(0.0, deadline - clock())
        try:
            return attempt(remaining)
        except KerveError as error:
            left = None if deadline is None else deadline - clock()
            delay = policy.next_delay(number, error, left, rng)
            if delay is None:
                raise
        sleep(delay)
        number += 1


async def acall_with_retry(
    attempt: Callable[[float | None], Awaitable[T]],
    policy: RetryPolicy,
    timeout_s: float | None,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    rng: random.Random | None = None,
) -> T:
    """asyncio twin of `call_with_retry`, with the same decisions."""
    rng = rng or random.Random()
    deadline = None if timeout_s is None else clock() + check_timeout(timeout_s)
    number = 1
    while True:
        remaining = None if deadline is None else max(0.0, deadline - clock())
        try:
            return await attempt(remaining)
        except KerveError as error:
            left = None if deadline is None else deadline - clock()
            delay = policy.next_delay(number, error, left, rng)
            if delay is None:
                raise
        await sleep(delay)
        number += 1


# ------------------------------------------------------------------------------------------ channel setup


def service_config(load_balancing: str) -> str:
    if load_balancing not in LOAD_BALANCING_POLICIES:
        raise ValueError(f"load_balancing must be one of {LOAD_BALANCING_POLICIES}, got {load_balancing!r}")
    return json.dumps({"loadBalancingConfig": [{load_balancing: {}}]})


def channel_options(
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    *,
    load_balancing: str = "round_robin",
    keepalive: Keepalive | None = None,
    retry: RetryPolicy | None = None,
    tls: TLSConfig | None = None,
) -> list[tuple[str, Any]]:
    """gRPC channel arguments for a kerve client channel.

    `round_robin` (the default) connects to every address the target resolves to (`dns:///kerve-headless:8500`
    gives one per pod) and spreads calls over them; with one address it behaves like `pick_first`."""
    options: list[tuple[str, Any]] = [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.service_config", service_config(load_balancing)),
        # an explicit service config wins over one a resolver may return (DNS TXT records)
        ("grpc.service_config_disable_resolution", 1),
    ]
    if keepalive is not None:
        options += keepalive.channel_options()
    if retry is not None:
        options += retry.reconnect_options()
    if tls is not None and tls.server_name:
        options.append(("grpc.ssl_target_name_override", tls.server_name))
    return options


def call_metadata(token: str | None) -> tuple[tuple[str, str], ...] | None:
    if token is None:
        return None
    token = token.strip()
    if not token or any(c.isspace() for c in token):
        raise ValueError("the bearer token must be non-empty and contain no whitespace")
    return (("authorization", f"Bearer {token}"),)


_KEY_CHARS = frozenset("0123456789abcdefghijklmnopqrstuvwxyz_.-")


def header_metadata(headers: Headers, *, has_token: bool) -> Metadata:
    """A call's own headers as gRPC metadata, checked here because grpc's own checks are late and partial: it
    fails a bad key or value as INTERNAL "Invalid metadata" without naming it, and sends a `grpc-` key or bytes
    under a text key as given. A ValueError naming the header, with nothing sent, is easier to act on.

    Keys follow gRPC's metadata rules (lowercase ASCII letters, digits, `_`, `.`, `-`; `grpc-` is gRPC's own);
    `-bin` keys carry bytes (gRPC base64-encodes them), others printable ASCII text. `authorization` conflicts with
    the client's `token`, which would send a second one."""
    if not isinstance(headers, Mapping):
        raise TypeError(f"headers must be a mapping of str to str or bytes, got {type(headers).__name__}")
    for key, value in headers.items():
        if not isinstance(key, str) or not key or not _KEY_CHARS.issuperset(key):
            raise ValueError(f"header {key!r}: a key is non-empty lowercase ASCII: letters, digits, '_', '.', '-'")
        if key.startswith("grpc-"):
            raise ValueError(f"header {key!r}: keys starting with 'grpc-' are reserved for gRPC")
        if key == "authorization" and has_token:
            raise ValueError("header 'authorization' conflicts with the client's token: pass one or the other")
        if key.endswith("-bin"):
            if not isinstance(value, bytes):
                raise ValueError(f"header {key!r}: a '-bin' key takes a bytes value, got {type(value).__name__}")
        elif not isinstance(value, str) or not (value.isascii() and value.isprintable()):
            raise ValueError(f"header {key!r}: the value must be a str of printable ASCII (or use a '-bin' key)")
    return tuple(headers.items())


def read_token_file(path: str | Path) -> str:
    """The first non-blank, non-comment line of a token file (the format `kerve serve --auth-token-file` reads)."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise ValueError(f"cannot read token file {path}: {exc.strerror or exc}") from None
    for line in lines:
        if line.strip() and not line.strip().startswith("#"):
            return line.strip()
    raise ValueError(f"token file {path} holds no token")


# ----------------------------------------------------------------------------------------- client config


@dataclass(frozen=True)
class ClientConfig:
    """Everything Client and AsyncClient take besides the target, validated once; builds their channel."""

    target: str
    timeout: float = 30.0
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    tls: TLSConfig | None = None
    token: str | None = None
    retry: RetryPolicy = NO_RETRY
    keepalive: Keepalive | None = None
    load_balancing: str = "round_robin"
    connections: int = 1  # channels, each with its own connection(s); calls take them in turn

    def __post_init__(self) -> None:
        if not self.target:
            raise ValueError("target is empty: pass host:port or dns:///host:port")
        check_timeout(self.timeout)
        connections = self.connections
        if isinstance(connections, bool) or not isinstance(connections, int) or not 1 <= connections <= MAX_CONNECTIONS:
            raise ValueError(f"connections must be an integer in [1, {MAX_CONNECTIONS}], got {connections!r}")
        service_config(self.load_balancing)  # validates the policy name
        call_metadata(self.token)  # validates the token

    @property
    def metadata(self) -> tuple[tuple[str, str], ...] | None:
        return call_metadata(self.token)

    def metadata_for(self, headers: Headers | None) -> Metadata | None:
        """What one call sends: the token's metadata, then the call's `headers` (checked, so a bad one raises
        before anything is sent). Without headers, exactly `metadata`, as before headers existed."""
        if not headers:
            return self.metadata
        return (self.metadata or ()) + header_metadata(headers, has_token=self.token is not None)

    def channel_options(self) -> list[tuple[str, Any]]:
        options = channel_options(
            self.max_message_bytes,
            load_balancing=self.load_balancing,
            keepalive=self.keepalive,
            retry=self.retry if self.retry.max_attempts > 1 else None,
            tls=self.tls,
        )
        if self.connections > 1:  # else gRPC gives channels to one target one shared connection
            options.append(("grpc.use_local_subchannel_pool", 1))
        return options

    def sync_channel(self) -> grpc.Channel:
        if self.tls is None:
            return grpc.insecure_channel(self.target, options=self.channel_options())
        return grpc.secure_channel(self.target, self.tls.credentials(), options=self.channel_options())

    def aio_channel(self) -> grpc.aio.Channel:
        if self.tls is None:
            return grpc.aio.insecure_channel(self.target, options=self.channel_options())
        return grpc.aio.secure_channel(self.target, self.tls.credentials(), options=self.channel_options())


def client_config(
    target: str,
    *,
    timeout: float,
    max_message_bytes: int,
    tls: TLSConfig | bool | None,
    token: str | None,
    retry: RetryPolicy | None,
    keepalive: Keepalive | None,
    load_balancing: str,
    connections: int = 1,
) -> ClientConfig:
    """The keyword arguments of Client/AsyncClient -> ClientConfig (`tls=True`: TLS with the system roots)."""
    if tls is True:
        tls = TLSConfig()
    elif tls is False:
        tls = None
    return ClientConfig(
        target=target,
        timeout=timeout,
        max_message_bytes=max_message_bytes,
        tls=tls,
        token=token,
        retry=retry if retry is not None else NO_RETRY,
        keepalive=keepalive,
        load_balancing=load_balancing,
        connections=connections,
    )
