"""Client and AsyncClient: the same methods, blocking and asyncio, over the V2 gRPC protocol."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
import numpy as np

from kerve.protos import grpc_service_pb2 as pb
from kerve.protos import grpc_service_pb2_grpc as pb_grpc

from . import wire
from .errors import UnavailableError, from_rpc_error
from .wire import InferResult, ModelIndexEntry, ModelMetadata

DEFAULT_TIMEOUT_S = 30.0


class Client:
    """Blocking client. One channel per instance; gRPC multiplexes concurrent calls over it.

    `timeout` is seconds per call (the gRPC deadline); each method accepts its own to override it.
    """

    def __init__(
        self,
        target: str,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        max_message_bytes: int = wire.DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self.target = target
        self.timeout = timeout
        self._channel = grpc.insecure_channel(target, options=wire.channel_options(max_message_bytes))
        self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)

    def _call(self, method: Any, request: Any, timeout: float | None) -> Any:
        try:
            return method(request, timeout=self.timeout if timeout is None else timeout)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    def live(self, timeout: float | None = None) -> bool:
        return bool(self._call(self._stub.ServerLive, pb.ServerLiveRequest(), timeout).live)

    def ready(self, model: str | None = None, version: int | str | None = None, timeout: float | None = None) -> bool:
        """Server readiness, or one model's; False (not an error) when the server cannot be reached."""
        try:
            if model is None:
                return bool(self._call(self._stub.ServerReady, pb.ServerReadyRequest(), timeout).ready)
            request = pb.ModelReadyRequest(name=model, version="" if version is None else str(version))
            return bool(self._call(self._stub.ModelReady, request, timeout).ready)
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
    """asyncio twin of Client, with the same method names and arguments."""

    def __init__(
        self,
        target: str,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        max_message_bytes: int = wire.DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self.target = target
        self.timeout = timeout
        self._channel = grpc.aio.insecure_channel(target, options=wire.channel_options(max_message_bytes))
        self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)

    async def _call(self, method: Any, request: Any, timeout: float | None) -> Any:
        try:
            return await method(request, timeout=self.timeout if timeout is None else timeout)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    async def live(self, timeout: float | None = None) -> bool:
        return bool((await self._call(self._stub.ServerLive, pb.ServerLiveRequest(), timeout)).live)

    async def ready(
        self, model: str | None = None, version: int | str | None = None, timeout: float | None = None
    ) -> bool:
        try:
            if model is None:
                return bool((await self._call(self._stub.ServerReady, pb.ServerReadyRequest(), timeout)).ready)
            request = pb.ModelReadyRequest(name=model, version="" if version is None else str(version))
            return bool((await self._call(self._stub.ModelReady, request, timeout)).ready)
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
