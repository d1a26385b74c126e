"""Client and AsyncClient: the same methods and options, blocking and asyncio, over the V2 gRPC protocol.

Options (TLS, bearer token, retries, keepalive, load balancing) are built once by `options.client_config`, so
the two clients cannot drift apart; only the I/O (blocking vs awaitable) differs.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import grpc
import numpy as np

from kerve.protos import grpc_service_pb2 as pb
from kerve.protos import grpc_service_pb2_grpc as pb_grpc

from . import wire
from .errors import CancelledError, DeadlineExceededError, UnavailableError, from_rpc_error
from .options import (
    DEFAULT_MAX_MESSAGE_BYTES,
    MAX_TIMEOUT_S,
    NO_RETRY,
    Headers,
    Keepalive,
    RetryPolicy,
    TLSConfig,
    acall_with_retry,
    call_with_retry,
    client_config,
)
from .shared_memory import AsyncRegion, BlockingRegion, SharedMemoryRegion, SharedOutput
from .stream import AsyncInferStream, InferStream
from .wire import (
    Classification,
    InferResult,
    LogSetting,
    ModelConfig,
    ModelIndexEntry,
    ModelMetadata,
    ModelStatistics,
    ServerMetadata,
    TraceSetting,
)

DEFAULT_TIMEOUT_S = 30.0
DEFAULT_RETRY = RetryPolicy()


def _version(version: int | str | None) -> str:
    return "" if version is None else str(version)


class _Budget:
    """One timeout shared by the calls of one method (classify: metadata, then infer)."""

    def __init__(self, timeout: float) -> None:
        self._end = time.monotonic() + timeout

    def left(self) -> float:
        return max(0.0, self._end - time.monotonic())


_CLEANUP_S = 2.0  # how long a best-effort unregister of a region whose registration may have landed may take


def _may_have_registered(exc: BaseException) -> bool:
    """Whether a Register call that ended with `exc` may still have reached the server: a timeout, a cancel, a
    lost connection. A refusal (the name is taken, shared memory is off, a bad key) registered nothing, and a
    taken name is somebody else's region: that one must not be unregistered."""
    if not isinstance(exc, Exception):  # asyncio's cancel, KeyboardInterrupt: stopped while the call was out
        return True
    return isinstance(exc, DeadlineExceededError | UnavailableError | CancelledError)


class _Connections:
    """A client's connections (`connections=N`: N channels, each its own connection), which calls take in turn."""

    def _connect(self, channels: Iterable[Any]) -> None:
        self._channels = list(channels)
        self._stubs = [pb_grpc.GRPCInferenceServiceStub(channel) for channel in self._channels]
        self._turns = itertools.cycle(self._stubs)

    @property
    def _stub(self) -> pb_grpc.GRPCInferenceServiceStub:
        """The next connection's stub, in turn (`connections`; one connection: always it)."""
        return next(self._turns)


class Client(_Connections):
    """Blocking client. One channel per instance by default; gRPC multiplexes concurrent calls over it.

    - `target`: `host:port`, or `dns:///host:port` for every address a name resolves to (a headless Service:
      one per pod), or `ipv4:a:p,b:q`; `load_balancing="round_robin"` (default) spreads calls over them.
    - `timeout`: seconds per call, retries included (the overall deadline); each method accepts its own.
    - `retry`: a RetryPolicy (default: up to 4 attempts on UNAVAILABLE, exponential backoff with jitter, never
      past the deadline); None disables retries. `ready()`/`wait_ready()` poll and do not retry.
    - `tls`: a TLSConfig (root CA, client certificate and key for mutual TLS, server name override), or True
      for TLS with the system roots. `token`: sent as `authorization: Bearer <token>` on every call.
    - `keepalive`: a Keepalive to ping idle connections and notice dead peers early.
    - `connections`: channels to open (each with its own connection), which calls take in turn. A server run with
      `kerve serve --processes N` gets each connection's calls in one of its processes, so one client needs N or
      more to reach them all.
    """

    def __init__(
        self,
        target: str,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        tls: TLSConfig | bool | None = None,
        token: str | None = None,
        retry: RetryPolicy | None = DEFAULT_RETRY,
        keepalive: Keepalive | None = None,
        load_balancing: str = "round_robin",
        connections: int = 1,
    ) -> None:
        self.options = client_config(
            target,
            timeout=timeout,
            max_message_bytes=max_message_bytes,
            tls=tls,
            token=token,
            retry=retry,
            keepalive=keepalive,
            load_balancing=load_balancing,
            connections=connections,
        )
        self.target = target
        self.timeout = timeout
        self._rng = random.Random()
        self._connect(self.options.sync_channel() for _ in range(self.options.connections))
        self._closed = False
        self._closing = threading.Event()  # set by close(): wakes a retry's backoff, so it ends at once

    def _call(
        self, method: Any, request: Any, timeout: float | None, *, retry: bool = True, headers: Headers | None = None
    ) -> Any:
        _check_open(self._closed)
        metadata = self.options.metadata_for(headers)  # once: every attempt resends the same

        def attempt(remaining: float | None) -> Any:
            _check_open(self._closed)  # closed during a retry's backoff: the typed error, not grpc's ValueError
            try:
                return method(request, timeout=remaining, metadata=metadata)
            except grpc.RpcError as exc:
                raise from_rpc_error(exc) from None
            except ValueError:  # "Cannot invoke RPC on closed channel!": closed between the check and the call
                _check_open(self._closed)
                raise

        policy = self.options.retry if retry else NO_RETRY
        return call_with_retry(
            attempt, policy, self.timeout if timeout is None else timeout, rng=self._rng, sleep=self._closing.wait
        )

    def live(self, timeout: float | None = None) -> bool:
        return bool(self._call(self._stub.ServerLive, pb.ServerLiveRequest(), timeout).live)

    def server_metadata(self, timeout: float | None = None) -> ServerMetadata:
        """The server's name, version and V2 extensions: what to check before relying on an optional feature."""
        return wire.parse_server_metadata(self._call(self._stub.ServerMetadata, pb.ServerMetadataRequest(), timeout))

    def ready(self, model: str | None = None, version: int | str | None = None, timeout: float | None = None) -> bool:
        """Server readiness, or one model's; False (not an error) when the server cannot be reached or does not
        answer within `timeout`."""
        try:
            if model is None:
                return bool(self._call(self._stub.ServerReady, pb.ServerReadyRequest(), timeout, retry=False).ready)
            request = pb.ModelReadyRequest(name=model, version=_version(version))
            return bool(self._call(self._stub.ModelReady, request, timeout, retry=False).ready)
        except (UnavailableError, DeadlineExceededError):  # not there yet, or too slow to answer: not ready
            return False

    def wait_ready(self, deadline_s: float = 60.0, model: str | None = None) -> None:
        """Poll readiness until it holds or deadline_s passes (then UnavailableError)."""
        end = time.monotonic() + _check_deadline(deadline_s)
        delay = 0.05
        while True:
            remaining = end - time.monotonic()
            if self.ready(model, timeout=max(0.1, min(2.0, remaining))):
                return
            if remaining <= 0:
                raise UnavailableError(f"{self.target} not ready after {deadline_s:.1f}s")
            time.sleep(min(delay, max(0.0, remaining)))
            delay = min(delay * 2, 0.5)

    def metadata(
        self,
        model: str,
        version: int | str | None = None,
        timeout: float | None = None,
        *,
        headers: Headers | None = None,
    ) -> ModelMetadata:
        request = pb.ModelMetadataRequest(name=model, version=_version(version))
        return wire.parse_metadata(self._call(self._stub.ModelMetadata, request, timeout, headers=headers))

    def infer(
        self,
        model: str,
        inputs: Mapping[str, Any],
        version: int | str | None = None,
        outputs: Sequence[str | SharedOutput] | None = None,
        timeout: float | None = None,
        request_id: str = "",
        *,
        class_counts: Mapping[str, int] | None = None,
        priority: int = 0,
        headers: Headers | None = None,
    ) -> InferResult:
        """Full result: outputs plus the model version that served the request. `class_counts` ({output: k})
        answers those outputs as their top k "<score>:<index>" labels (see `classify`). An output named by a
        `region.output(...)` travels through that region and is read back from it into the result.

        `priority` is Triton's request priority, for a model whose config.yaml sets `batching: {priority_levels:
        N}`: 1 jumps ahead of every lower level queued for a batch; 0 (not sent) or a level above N takes the
        model's default level, and a model without levels ignores it. A negative one fails before sending.

        `headers` ({key: value}) go out as this call's gRPC metadata, beside the client's token, for what travels
        per request rather than per client: a W3C `traceparent` from `opentelemetry.propagate.inject`, a routing
        key. tritonclient's `headers=`; checked first (see `options.header_metadata`), a bad one is a ValueError."""
        request = wire.build_infer_request(model, inputs, version, outputs, request_id, class_counts, priority=priority)
        response = self._call(self._stub.ModelInfer, request, timeout, headers=headers)
        return wire.parse_infer_response(response, wire.shared_outputs(outputs))

    def predict(
        self,
        model: str,
        inputs: Mapping[str, Any],
        version: int | str | None = None,
        outputs: Sequence[str | SharedOutput] | None = None,
        timeout: float | None = None,
        *,
        priority: int = 0,
        headers: Headers | None = None,
    ) -> dict[str, np.ndarray]:
        """numpy in, numpy out: {input_name: array} -> {output_name: array}; `priority` and `headers` as in
        `infer`."""
        return self.infer(model, inputs, version, outputs, timeout, priority=priority, headers=headers).outputs

    def models(self, ready_only: bool = False, timeout: float | None = None) -> list[ModelIndexEntry]:
        request = pb.RepositoryIndexRequest(ready=ready_only)
        return wire.parse_index(self._call(self._stub.RepositoryIndex, request, timeout))

    def load_model(
        self, model: str, config: ModelConfig | Mapping[str, Any] | str | None = None, timeout: float | None = None
    ) -> None:
        """(Re)load `model` from the server's repository, on a server with explicit model control (`kerve serve
        --model-control explicit`; one that polls its repository answers FailedPreconditionError). Returns once
        the server has loaded it, so give a `timeout` that covers loading a large model. `config` (Triton's
        ModelConfig as a dict, or its JSON as a str) overrides the model's config.yaml for this load; a later
        load without one goes back to the file. Retried on UNAVAILABLE like a read: loading again what loaded
        reloads the same model."""
        request = wire.load_model_request(model, config)
        self._call(self._stub.RepositoryModelLoad, request, timeout)

    def unload_model(self, model: str, timeout: float | None = None) -> None:
        """Unload every version of `model` once its in-flight requests finish (explicit model control, as
        `load_model`); it stays in the repository for a later `load_model`."""
        request = pb.RepositoryModelUnloadRequest(model_name=model)
        self._call(self._stub.RepositoryModelUnload, request, timeout)

    def statistics(
        self, model: str | None = None, version: int | str | None = None, timeout: float | None = None
    ) -> tuple[ModelStatistics, ...]:
        """Cumulative counters per model version (None: every loaded model, every version); see ModelStatistics
        for what each counts. InvalidArgumentError (as Triton answers) for a model or version with nothing ready."""
        request = pb.ModelStatisticsRequest(name=model or "", version=_version(version))
        return wire.parse_statistics(self._call(self._stub.ModelStatistics, request, timeout))

    def log_settings(self, timeout: float | None = None) -> dict[str, LogSetting]:
        """The server's logging settings (the V2 logging extension: `log_info`, `log_warning`, `log_error`,
        `log_verbose_level`, `log_format`, `log_file`), as the server process that answers holds them."""
        return wire.parse_log_settings(self._call(self._stub.LogSettings, pb.LogSettingsRequest(), timeout))

    def update_log_settings(
        self, settings: Mapping[str, LogSetting], timeout: float | None = None
    ) -> dict[str, LogSetting]:
        """Change the settings named (bool, int >= 0 or str, by the setting), without a restart; returns every
        setting after the change. The server checks all of them first: one it refuses (InvalidArgumentError)
        changes nothing."""
        request = wire.log_settings_request(settings)
        return wire.parse_log_settings(self._call(self._stub.LogSettings, request, timeout))

    def trace_settings(self, model: str | None = None, timeout: float | None = None) -> dict[str, list[str]]:
        """The server's request trace settings for `model` (None: the global ones), as lists of strings."""
        request = wire.trace_settings_request(model=model)
        return wire.parse_trace_settings(self._call(self._stub.TraceSetting, request, timeout))

    def update_trace_settings(
        self, settings: Mapping[str, TraceSetting | None], model: str | None = None, timeout: float | None = None
    ) -> dict[str, list[str]]:
        """Change the trace settings named, for `model` or globally (None clears one: a model's falls back to the
        global value); returns the settings after the change. One the server refuses changes nothing."""
        request = wire.trace_settings_request(settings, model)
        return wire.parse_trace_settings(self._call(self._stub.TraceSetting, request, timeout))

    def shared_memory(self, byte_size: int, name: str | None = None, timeout: float | None = None) -> BlockingRegion:
        """A new POSIX shared memory object of `byte_size` bytes, registered with the server as region `name`
        (generated when None): ``region.put(array)`` gives an input value that travels through it instead of the
        message (kerve.client.shared_memory). Only for a server on this host. Close it (a `with` block): that
        unregisters the region and removes the object."""

        stub = self._stub  # one connection for the registration and its clean-up

        def unregister(region: SharedMemoryRegion) -> None:
            self._call(stub.SystemSharedMemoryUnregister, region.unregister_request, timeout, retry=False)

        region = BlockingRegion(byte_size, name, unregister)
        try:  # not retried: a registration that did land would make the retry ALREADY_EXISTS
            self._call(stub.SystemSharedMemoryRegister, region.register_request, timeout, retry=False)
        except BaseException as exc:
            if _may_have_registered(exc):  # else the server holds the region (and its memory) for good
                with contextlib.suppress(Exception):
                    request = region.unregister_request
                    self._call(stub.SystemSharedMemoryUnregister, request, _CLEANUP_S, retry=False)
            region.release()
            raise
        return region

    def config(self, model: str, version: int | str | None = None, timeout: float | None = None) -> ModelConfig:
        """How the server runs the model: batch limit, per-row dims, dynamic batching, instance groups."""
        request = pb.ModelConfigRequest(name=model, version=_version(version))
        return wire.parse_config(self._call(self._stub.ModelConfig, request, timeout))

    def classify(
        self,
        model: str,
        inputs: Mapping[str, Any],
        output: str | None = None,
        top_k: int = 1,
        version: int | str | None = None,
        timeout: float | None = None,
        *,
        priority: int = 0,
        headers: Headers | None = None,
    ) -> Classification:
        """The `top_k` best classes of `output` per row (`indices` and `scores`, best first), ranked by the server
        (the V2 classification extension), so only k pairs per row cross the wire. `output` may be left out for a
        model with one output (that costs a metadata call); `timeout` covers both calls. `priority` as in `infer`,
        checked before the metadata call, so a bad one sends nothing; `headers` as in `infer`, on both calls (a
        trace shows the metadata call as part of this request)."""
        wire.priority_level(priority)
        budget = _Budget(self.timeout if timeout is None else timeout)
        if output is None:
            output = wire.only_output(self.metadata(model, version, budget.left(), headers=headers))
        result = self.infer(
            model,
            inputs,
            version,
            None,
            budget.left(),
            class_counts={output: top_k},
            priority=priority,
            headers=headers,
        )
        return wire.parse_classification(result, output)

    def stream(
        self,
        model: str,
        version: int | str | None = None,
        outputs: Sequence[str] | None = None,
        timeout: float | None = None,
        *,
        class_counts: Mapping[str, int] | None = None,
        headers: Headers | None = None,
    ) -> InferStream:
        """Open a `ModelStreamInfer` stream for `model` that any number of threads share: `stream.infer(inputs)`.

        Cheaper per request than `infer` (no new HTTP/2 stream per call, and the server batches a stream's
        messages together). `timeout` is each call's default (the client's if None), `outputs` (names) its default
        outputs: a call may pass its own, `region.output(...)` places included, and its own `request_id` (see
        `InferStream.infer`). `class_counts` asks every call for those outputs' top k classes, as in `infer`.
        `headers` as in `infer`, sent once when the stream opens: gRPC metadata belongs to the whole call, so every
        message on the stream shares them (one trace context per stream; a per-request one needs unary calls).
        Close it (a `with` block). Calls on it are never retried; see kerve.client.stream for what happens when it
        breaks."""
        _check_open(self._closed)
        return InferStream(
            self._stub,
            model,
            version,
            outputs,
            timeout=self.timeout if timeout is None else timeout,
            metadata=self.options.metadata_for(headers),
            class_counts=class_counts,
            max_message_bytes=self.options.max_message_bytes,
        )

    def close(self) -> None:
        self._closed = True
        self._closing.set()
        for channel in self._channels:
            channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient(_Connections):
    """asyncio twin of Client, with the same method names, arguments and options."""

    def __init__(
        self,
        target: str,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        tls: TLSConfig | bool | None = None,
        token: str | None = None,
        retry: RetryPolicy | None = DEFAULT_RETRY,
        keepalive: Keepalive | None = None,
        load_balancing: str = "round_robin",
        connections: int = 1,
    ) -> None:
        self.options = client_config(
            target,
            timeout=timeout,
            max_message_bytes=max_message_bytes,
            tls=tls,
            token=token,
            retry=retry,
            keepalive=keepalive,
            load_balancing=load_balancing,
            connections=connections,
        )
        self.target = target
        self.timeout = timeout
        self._rng = random.Random()
        self._connect(self.options.aio_channel() for _ in range(self.options.connections))
        self._closed = False
        self._closing = asyncio.Event()  # set by close(): wakes a retry's backoff, so it ends at once

    async def _call(
        self, method: Any, request: Any, timeout: float | None, *, retry: bool = True, headers: Headers | None = None
    ) -> Any:
        _check_open(self._closed)
        metadata = self.options.metadata_for(headers)  # once: every attempt resends the same

        async def attempt(remaining: float | None) -> Any:
            _check_open(self._closed)  # closed during a retry's backoff: the typed error, not grpc's UsageError
            try:
                return await method(request, timeout=remaining, metadata=metadata)
            except grpc.RpcError as exc:
                raise from_rpc_error(exc) from None
            except asyncio.CancelledError:
                # grpc.aio cancels a call in flight when its channel closes, as if the caller's task had been
                # cancelled: that task would look cancelled (TaskGroups, retry loops) though nobody cancelled it.
                task = asyncio.current_task()
                if not self._closed or (task is not None and _cancelling(task)):
                    raise
                raise CancelledError("the client was closed while the call was in flight", "CANCELLED") from None

        policy = self.options.retry if retry else NO_RETRY
        budget = self.timeout if timeout is None else timeout
        return await acall_with_retry(attempt, policy, budget, rng=self._rng, sleep=self._backoff)

    async def _backoff(self, delay: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):  # the backoff ran out: the usual case
            await asyncio.wait_for(self._closing.wait(), delay)

    async def live(self, timeout: float | None = None) -> bool:
        return bool((await self._call(self._stub.ServerLive, pb.ServerLiveRequest(), timeout)).live)

    async def server_metadata(self, timeout: float | None = None) -> ServerMetadata:
        request = pb.ServerMetadataRequest()
        return wire.parse_server_metadata(await self._call(self._stub.ServerMetadata, request, timeout))

    async def ready(
        self, model: str | None = None, version: int | str | None = None, timeout: float | None = None
    ) -> bool:
        try:
            if model is None:
                response = await self._call(self._stub.ServerReady, pb.ServerReadyRequest(), timeout, retry=False)
                return bool(response.ready)
            request = pb.ModelReadyRequest(name=model, version=_version(version))
            return bool((await self._call(self._stub.ModelReady, request, timeout, retry=False)).ready)
        except (UnavailableError, DeadlineExceededError):  # not there yet, or too slow to answer: not ready
            return False

    async def wait_ready(self, deadline_s: float = 60.0, model: str | None = None) -> None:
        end = time.monotonic() + _check_deadline(deadline_s)
        delay = 0.05
        while True:
            remaining = end - time.monotonic()
            if await self.ready(model, timeout=max(0.1, min(2.0, remaining))):
                return
            if remaining <= 0:
                raise UnavailableError(f"{self.target} not ready after {deadline_s:.1f}s")
            await asyncio.sleep(min(delay, max(0.0, remaining)))
            delay = min(delay * 2, 0.5)

    async def metadata(
        self,
        model: str,
        version: int | str | None = None,
        timeout: float | None = None,
        *,
        headers: Headers | None = None,
    ) -> ModelMetadata:
        request = pb.ModelMetadataRequest(name=model, version=_version(version))
        return wire.parse_metadata(await self._call(self._stub.ModelMetadata, request, timeout, headers=headers))

    async def infer(
        self,
        model: str,
        inputs: Mapping[str, Any],
        version: int | str | None = None,
        outputs: Sequence[str | SharedOutput] | None = None,
        timeout: float | None = None,
        request_id: str = "",
        *,
        class_counts: Mapping[str, int] | None = None,
        priority: int = 0,
        headers: Headers | None = None,
    ) -> InferResult:
        request = wire.build_infer_request(model, inputs, version, outputs, request_id, class_counts, priority=priority)
        response = await self._call(self._stub.ModelInfer, request, timeout, headers=headers)
        return wire.parse_infer_response(response, wire.shared_outputs(outputs))

    async def predict(
        self,
        model: str,
        inputs: Mapping[str, Any],
        version: int | str | None = None,
        outputs: Sequence[str | SharedOutput] | None = None,
        timeout: float | None = None,
        *,
        priority: int = 0,
        headers: Headers | None = None,
    ) -> dict[str, np.ndarray]:
        return (await self.infer(model, inputs, version, outputs, timeout, priority=priority, headers=headers)).outputs

    async def models(self, ready_only: bool = False, timeout: float | None = None) -> list[ModelIndexEntry]:
        request = pb.RepositoryIndexRequest(ready=ready_only)
        return wire.parse_index(await self._call(self._stub.RepositoryIndex, request, timeout))

    async def load_model(
        self, model: str, config: ModelConfig | Mapping[str, Any] | str | None = None, timeout: float | None = None
    ) -> None:
        request = wire.load_model_request(model, config)
        await self._call(self._stub.RepositoryModelLoad, request, timeout)

    async def unload_model(self, model: str, timeout: float | None = None) -> None:
        request = pb.RepositoryModelUnloadRequest(model_name=model)
        await self._call(self._stub.RepositoryModelUnload, request, timeout)

    async def statistics(
        self, model: str | None = None, version: int | str | None = None, timeout: float | None = None
    ) -> tuple[ModelStatistics, ...]:
        request = pb.ModelStatisticsRequest(name=model or "", version=_version(version))
        return wire.parse_statistics(await self._call(self._stub.ModelStatistics, request, timeout))

    async def log_settings(self, timeout: float | None = None) -> dict[str, LogSetting]:
        return wire.parse_log_settings(await self._call(self._stub.LogSettings, pb.LogSettingsRequest(), timeout))

    async def update_log_settings(
        self, settings: Mapping[str, LogSetting], timeout: float | None = None
    ) -> dict[str, LogSetting]:
        request = wire.log_settings_request(settings)
        return wire.parse_log_settings(await self._call(self._stub.LogSettings, request, timeout))

    async def trace_settings(self, model: str | None = None, timeout: float | None = None) -> dict[str, list[str]]:
        request = wire.trace_settings_request(model=model)
        return wire.parse_trace_settings(await self._call(self._stub.TraceSetting, request, timeout))

    async def update_trace_settings(
        self, settings: Mapping[str, TraceSetting | None], model: str | None = None, timeout: float | None = None
    ) -> dict[str, list[str]]:
        request = wire.trace_settings_request(settings, model)
        return wire.parse_trace_settings(await self._call(self._stub.TraceSetting, request, timeout))

    async def shared_memory(self, byte_size: int, name: str | None = None, timeout: float | None = None) -> AsyncRegion:
        """As `Client.shared_memory`; ``async with await client.shared_memory(n) as region:``."""

        stub = self._stub  # as in Client.shared_memory

        async def unregister(region: SharedMemoryRegion) -> None:
            await self._call(stub.SystemSharedMemoryUnregister, region.unregister_request, timeout, retry=False)

        region = AsyncRegion(byte_size, name, unregister)
        try:
            await self._call(stub.SystemSharedMemoryRegister, region.register_request, timeout, retry=False)
        except BaseException as exc:
            if _may_have_registered(exc):  # as in Client.shared_memory
                with contextlib.suppress(Exception):
                    request = region.unregister_request
                    await self._call(stub.SystemSharedMemoryUnregister, request, _CLEANUP_S, retry=False)
            region.release()
            raise
        return region

    async def config(self, model: str, version: int | str | None = None, timeout: float | None = None) -> ModelConfig:
        request = pb.ModelConfigRequest(name=model, version=_version(version))
        return wire.parse_config(await self._call(self._stub.ModelConfig, request, timeout))

    async def classify(
        self,
        model: str,
        inputs: Mapping[str, Any],
        output: str | None = None,
        top_k: int = 1,
        version: int | str | None = None,
        timeout: float | None = None,
        *,
        priority: int = 0,
        headers: Headers | None = None,
    ) -> Classification:
        wire.priority_level(priority)  # before the metadata call, as in Client.classify
        budget = _Budget(self.timeout if timeout is None else timeout)
        if output is None:
            output = wire.only_output(await self.metadata(model, version, budget.left(), headers=headers))
        result = await self.infer(
            model,
            inputs,
            version,
            None,
            budget.left(),
            class_counts={output: top_k},
            priority=priority,
            headers=headers,
        )
        return wire.parse_classification(result, output)

    def stream(
        self,
        model: str,
        version: int | str | None = None,
        outputs: Sequence[str] | None = None,
        timeout: float | None = None,
        *,
        class_counts: Mapping[str, int] | None = None,
        headers: Headers | None = None,
    ) -> AsyncInferStream:
        """Open a stream that any number of tasks share: `async with aclient.stream(model) as s: await s.infer(x)`.
        Call it inside a running event loop."""
        _check_open(self._closed)
        return AsyncInferStream(
            self._stub,
            model,
            version,
            outputs,
            timeout=self.timeout if timeout is None else timeout,
            metadata=self.options.metadata_for(headers),
            class_counts=class_counts,
            max_message_bytes=self.options.max_message_bytes,
        )

    async def close(self) -> None:
        self._closed = True
        self._closing.set()
        for channel in self._channels:
            await channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _check_deadline(deadline_s: float) -> float:
    """wait_ready's bound: NaN never compares <= 0 (the loop never ended), inf never passes."""
    if isinstance(deadline_s, bool) or not isinstance(deadline_s, (int, float)) or not 0 <= deadline_s <= MAX_TIMEOUT_S:
        raise ValueError(f"deadline_s must be a number of seconds in [0, {MAX_TIMEOUT_S:g}], got {deadline_s!r}")
    return float(deadline_s)


def _check_open(closed: bool) -> None:
    """A call after `close()`: the same typed error from both clients, not grpc's own (a ValueError from the sync
    channel, a UsageError from the aio one)."""
    if closed:
        raise CancelledError("the client is closed", "CANCELLED")


def _cancelling(task: asyncio.Task[Any]) -> bool:
    """Whether someone asked to cancel `task` itself (Python 3.11+ knows; before, assume not)."""
    cancelling = getattr(task, "cancelling", None)
    return bool(cancelling()) if cancelling is not None else False
