"""Client and AsyncClient: the same methods and options, blocking and asyncio, over the V2 gRPC protocol.

Options (TLS, bearer token, retries, keepalive, load balancing) are built once by `options.client_config`, so
the two clients cannot drift apart; only the I/O (blocking vs awaitable) differs.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
import numpy as np

from kerve.protos import grpc_service_pb2 as pb
from kerve.protos import grpc_service_pb2_grpc as pb_grpc

from . import wire
from .errors import UnavailableError, from_rpc_error
from .options import (
    DEFAULT_MAX_MESSAGE_BYTES,
    NO_RETRY,
    Keepalive,
    RetryPolicy,
    TLSConfig,
    acall_with_retry,
    call_with_retry,
    client_config,
)
from .wire import InferResult, ModelIndexEntry, ModelMetadata

DEFAULT_TIMEOUT_S = 30.0
DEFAULT_RETRY = RetryPolicy()


class Client:
    """Blocking client. One channel per instance; gRPC multiplexes concurrent calls over it.

    - `target`: `host:port`, or `dns:///host:port` for every address a name resolves to (a headless Service:
      one per pod), or `ipv4:a:p,b:q`; `load_balancing="round_robin"` (default) spreads calls over them.
    - `timeout`: seconds per call, retries included (the overall deadline); each method accepts its own.
    - `retry`: a RetryPolicy (default: up to 4 attempts on UNAVAILABLE, exponential backoff with jitter, never
      past the deadline); None disables retries. `ready()`/`wait_ready()` poll and do not retry.
    - `tls`: a TLSConfig (root CA, client certificate and key for mutual TLS, server name override), or True
      for TLS with the system roots. `token`: sent as `authorization: Bearer <token>` on every call.
    - `keepalive`: a Keepalive to ping idle connections and notice dead peers early.
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
    ) -> None:
        self.config = client_config(
            target,
            timeout=timeout,
            max_message_bytes=max_message_bytes,
            tls=tls,
            token=token,
            retry=retry,
            keepalive=keepalive,
            load_balancing=load_balancing,
        )
        self.target = target
        self.timeout = timeout
        self._rng = random.Random()
        self._channel = self.config.sync_channel()
        self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)

    def _call(self, method: Any, request: Any, timeout: float | None, *, retry: bool = True) -> Any:
        metadata = self.config.metadata

        def attempt(remaining: float | None) -> Any:
            try:
                return method(request, timeout=remaining, metadata=metadata)
            except grpc.RpcError as exc:
                raise from_rpc_error(exc) from None

        policy = self.config.retry if retry else NO_RETRY
        return call_with_retry(attempt, policy, self.timeout if timeout is None else timeout, rng=self._rng)

    def live(self, timeout: float | None = None) -> bool:
        return bool(self._call(self._stub.ServerLive, pb.ServerLiveRequest(), timeout).live)

    def ready(self, model: str | None = None, version: int | str | None = None, timeout: float | None = None) -> bool:
        """Server readiness, or one model's; False (not an error) when the server cannot be reached."""
        try:
            if model is None:
                return bool(self._call(self._stub.ServerReady, pb.ServerReadyRequest(), timeout, retry=False).ready)
            request = pb.ModelReadyRequest(name=model, version="" if version is None else str(version))
            return bool(self._call(self._stub.ModelReady, request, timeout, retry=False).ready)
        except UnavailableError:
            return False

    def wait_ready(self, deadline_s: float = 60.0, model: str | None = None) -> None:
        """Poll readiness until it holds or deadline_s passes (then UnavailableError)."""
        end = time.monotonic() + deadline_s
        delay = 0.05
        while True:
            remaining = end - time.monotonic()
            if self.ready(model, timeout=max(0.1, min(2.0, remaining))):
                return
            if remaining <= 0:
                raise UnavailableError(f"{self.target} not ready after {deadline_s:.1f}s")
            time.sleep(min(delay, max(0.0, remaining)))
            delay = min(delay * 2, 0.5)

    def metadata(self, model: str, version: int | str | None = None, timeout: float | None = None) -> ModelMetadata:
        request = pb.ModelMetadataRequest(name=model, version="" if version is None else str(version))
        return wire.parse_metadata(self._call(self._stub.ModelMetadata, request, timeout))

    def infer(
        self,
        model: str,
        inputs: Mapping[str, Any],
        version: int | str | None = None,
        outputs: Sequence[str] | None = None,
        timeout: float | None = None,
        request_id: str = "",
    ) -> InferResult:
        """Full result: outputs plus the model version that served the request."""
        request = wire.build_infer_request(model, inputs, version, outputs, request_id)
        return wire.parse_infer_response(self._call(self._stub.ModelInfer, request, timeout))

    def predict(
        self,
        model: str,
        inputs: Mapping[str, Any],
        version: int | str | None = None,
        outputs: Sequence[str] | None = None,
        timeout: float | None = None,
    ) -> dict[str, np.ndarray]:
        """numpy in, numpy out: {input_name: array} -> {output_name: array}."""
        return self.infer(model, inputs, version, outputs, timeout).outputs

    def models(self, ready_only: bool = False, timeout: float | None = None) -> list[ModelIndexEntry]:
        request = pb.RepositoryIndexRequest(ready=ready_only)
        return wire.parse_index(self._call(self._stub.RepositoryIndex, request, timeout))

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient:
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
    ) -> None:
        self.config = client_config(
            target,
            timeout=timeout,
            max_message_bytes=max_message_bytes,
            tls=tls,
            token=token,
            retry=retry,
            keepalive=keepalive,
            load_balancing=load_balancing,
        )
        self.target = target
        self.timeout = timeout
        self._rng = random.Random()
        self._channel = self.config.aio_channel()
        self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)

    async def _call(self, method: Any, request: Any, timeout: float | None, *, retry: bool = True) -> Any:
        metadata = self.config.metadata

        async def attempt(remaining: float | None) -> Any:
            try:
                return await method(request, timeout=remaining, metadata=metadata)
            except grpc.RpcError as exc:
                raise from_rpc_error(exc) from None

        policy = self.config.retry if retry else NO_RETRY
        return await acall_with_retry(attempt, policy, self.timeout if timeout is None else timeout, rng=self._rng)

    async def live(self, timeout: float | None = None) -> bool:
        return bool((await self._call(self._stub.ServerLive, pb.ServerLiveRequest(), timeout)).live)

    async def ready(
        self, model: str | None = None, version: int | str | None = None, timeout: float | None = None
    ) -> bool:
        try:
            if model is None:
                response = await self._call(self._stub.ServerReady, pb.ServerReadyRequest(), timeout, retry=False)
                return bool(response.ready)
            request = pb.ModelReadyRequest(name=model, version="" if version is None else str(version))
            return bool((await self._call(self._stub.ModelReady, request, timeout, retry=False)).ready)
        except UnavailableError:
            return False

    async def wait_ready(self, deadline_s: float = 60.0, model: str | None = None) -> None:
        end = time.monotonic() + deadline_s
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
        self, model: str, version: int | str | None = None, timeout: float | None = None
    ) -> ModelMetadata:
        request = pb.ModelMetadataRequest(name=model, version="" if version is None else str(version))
        return wire.parse_metadata(await self._call(self._stub.ModelMetadata, request, timeout))

    async def infer(
        self,
        model: str,
        inputs: Mapping[str, Any],
        version: int | str | None = None,
        outputs: Sequence[str] | None = None,
        timeout: float | None = None,
        request_id: str = "",
    ) -> InferResult:
        request = wire.build_infer_request(model, inputs, version, outputs, request_id)
        return wire.parse_infer_response(await self._call(self._stub.ModelInfer, request, timeout))

    async def predict(
        self,
        model: str,
        inputs: Mapping[str, Any],
        version: int | str | None = None,
        outputs: Sequence[str] | None = None,
        timeout: float | None = None,
    ) -> dict[str, np.ndarray]:
        return (await self.infer(model, inputs, version, outputs, timeout)).outputs

    async def models(self, ready_only: bool = False, timeout: float | None = None) -> list[ModelIndexEntry]:
        request = pb.RepositoryIndexRequest(ready=ready_only)
        return wire.parse_index(await self._call(self._stub.RepositoryIndex, request, timeout))

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
