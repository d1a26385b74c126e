"""Streams: many concurrent inferences over one bidirectional `ModelStreamInfer` call.

A streamed request skips what a unary call costs per request (a new HTTP/2 stream, its headers, the call's setup
on both sides), and the server pipelines a stream's messages into shared batches, so a busy client gets more
throughput from one stream than from as many unary calls. Both stream classes here share one protocol:

- every message carries a fresh `id`; the server answers each message once, with its `infer_response` (whose
  `id` is the request's) or an in-band `error_message` ("<STATUS>: <text>"), and the stream goes on after an
  error. Answers are matched to callers by `id`, so their order does not matter.
- each `infer` waits for its own answer with its own timeout (DeadlineExceededError after it; a late answer is
  dropped). The message carries that timeout to the server (the `timeout` parameter), which answers a message
  still queued past it DEADLINE_EXCEEDED instead of running it, and its own `priority` (Triton's, when not 0).
  There is no retry: a message may already have run.
- when the stream itself breaks (server gone, RPC error), every pending call fails with the mapped error and
  every later call raises it too: a broken stream is not reopened behind the caller's back (a new one may reach
  another replica, or a restarted server, which the caller should decide). Open a new stream to go on.
- `close(grace_s)` stops new calls and half-closes the stream; the server answers what it holds, then ends it.
  Calls still unanswered after `grace_s` seconds are cancelled and raise CancelledError. Nothing is left running.

The blocking `InferStream` uses grpc's request-iterator + response-iterator API: callers put messages on a queue
that grpc's own thread drains, and one reader thread hands answers to the callers' futures. `AsyncInferStream`
does the same on the event loop with grpc.aio: an async request generator and one reader task.
"""

from __future__ import annotations

import asyncio
import itertools
import queue
import threading
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeoutError
from typing import Any

import grpc

from kerve.protos import grpc_service_pb2 as pb

from . import wire
from .errors import (
    CancelledError,
    DeadlineExceededError,
    InvalidArgumentError,
    KerveError,
    ServerError,
    UnavailableError,
    from_error_message,
    from_rpc_error,
)
from .options import Metadata
from .shared_memory import SharedOutput
from .wire import InferResult

DEFAULT_CLOSE_GRACE_S = 5.0

_END: Any = object()  # put on the request queue: no more messages (half-close)


def _again(error: KerveError) -> KerveError:
    """A fresh exception of the same class and text, so callers never share (and re-raise) one instance."""
    return type(error)(error.message, code=error.code)


def _closed_error() -> CancelledError:
    return CancelledError("the stream was closed before this call was answered")


def _outcome(response: pb.ModelStreamInferResponse) -> pb.ModelInferResponse | KerveError:
    if response.error_message:
        return from_error_message(response.error_message)
    return response.infer_response


class _Requests:
    """What both stream classes build per message: the model, version, outputs and class counts fixed, a fresh id
    each."""

    def __init__(
        self,
        model: str,
        version: int | str | None,
        outputs: Sequence[str] | None,
        class_counts: Mapping[str, int] | None = None,
    ) -> None:
        if any(isinstance(o, SharedOutput) for o in outputs or ()):  # the stream's calls would share one place
            raise InvalidArgumentError("a stream's outputs are names: outputs in shared memory need unary infer")
        self.model = model
        self.version = version
        self.outputs = tuple(outputs) if outputs else None
        # checked now, so a bad count fails opening the stream rather than its first call
        self.class_counts = {name: wire.class_count(name, k) for name, k in (class_counts or {}).items()} or None
        self._ids = itertools.count()

    def build(
        self, inputs: Mapping[str, Any], timeout: float | None, priority: int = 0
    ) -> tuple[str, pb.ModelInferRequest]:
        request_id = str(next(self._ids))  # itertools.count is atomic under the GIL
        request = wire.build_infer_request(
            self.model,
            inputs,
            self.version,
            self.outputs,
            request_id,
            self.class_counts,
            priority=priority,
            timeout=timeout,
        )
        return request_id, request


class InferStream:
    """One `ModelStreamInfer` call shared by any number of threads; `Client.stream(...)` opens one.

    ```
    with client.stream("cnn") as stream:
        result = stream.infer({"image": images})  # from many threads at once
    ```
    """

    def __init__(
        self,
        stub: Any,
        model: str,
        version: int | str | None = None,
        outputs: Sequence[str] | None = None,
        *,
        timeout: float,
        metadata: Metadata | None = None,
        class_counts: Mapping[str, int] | None = None,
    ) -> None:
        self.timeout = timeout
        self._builder = _Requests(model, version, outputs, class_counts)
        self._lock = threading.Lock()
        self._pending: dict[str, Future[pb.ModelInferResponse]] = {}
        self._error: KerveError | None = None  # set once the stream is broken
        self._closed = False
        self._requests: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._call = stub.ModelStreamInfer(self._request_iterator(), metadata=metadata)
        self._reader = threading.Thread(target=self._read, name=f"kerve-stream-{model}", daemon=True)
        self._reader.start()

    @property
    def model(self) -> str:
        return self._builder.model

    @property
    def pending(self) -> int:
        """Calls sent and not answered yet."""
        with self._lock:
            return len(self._pending)

    @property
    def closed(self) -> bool:
        """True once close() was called or the stream broke (then every call raises)."""
        with self._lock:
            return self._closed or self._error is not None

    def infer(self, inputs: Mapping[str, Any], timeout: float | None = None, *, priority: int = 0) -> InferResult:
        """Send one message and wait for its answer (at most `timeout` s, default the stream's). `priority` is per
        call, as on `Client.infer`: one stream may carry urgent and background work side by side."""
        timeout = self.timeout if timeout is None else timeout
        request_id, request = self._builder.build(inputs, timeout, priority)
        future: Future[pb.ModelInferResponse] = Future()
        with self._lock:
            if self._closed:
                raise CancelledError("the stream is closed")
            if self._error is not None:
                raise _again(self._error)
            self._pending[request_id] = future
            self._requests.put(request)  # under the lock: never behind the _END of a close or a failure
        try:
            response = future.result(timeout)
        except FutureTimeoutError:
            with self._lock:
                mine = self._pending.pop(request_id, None) is not None
            if mine:
                raise DeadlineExceededError(f"no answer on the stream within {timeout:g}s") from None
            response = future.result()  # the reader took it first: its outcome is being set now
        return wire.parse_infer_response(response)

    def predict(self, inputs: Mapping[str, Any], timeout: float | None = None, *, priority: int = 0) -> dict[str, Any]:
        """numpy in, numpy out, over the stream."""
        return self.infer(inputs, timeout, priority=priority).outputs

    def close(self, grace_s: float = DEFAULT_CLOSE_GRACE_S) -> None:
        """Stop new calls, let the server answer pending ones for up to `grace_s` s, cancel the rest; returns
        once the reader thread has ended. Idempotent."""
        with self._lock:
            self._closed = True
            self._requests.put(_END)
        self._reader.join(max(0.0, grace_s))
        if self._reader.is_alive():
            self._call.cancel()
            self._reader.join()

    def __enter__(self) -> InferStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- grpc's side

    def _request_iterator(self) -> Iterator[pb.ModelInferRequest]:
        """Drained by grpc's request thread; ends (half-closing the call) at _END."""
        while (request := self._requests.get()) is not _END:
            yield request

    def _read(self) -> None:
        error: KerveError
        try:
            for response in self._call:
                self._answer(response)
            error = UnavailableError("the server ended the stream")
        except grpc.RpcError as exc:
            error = from_rpc_error(exc)
        except Exception as exc:  # a bug here must still release every caller
            error = ServerError(f"stream reader failed: {exc!r}")
        self._fail(error)

    def _answer(self, response: pb.ModelStreamInferResponse) -> None:
        with self._lock:
            future = self._pending.pop(response.infer_response.id, None)
        if future is None:
            return  # its caller timed out and left
        outcome = _outcome(response)
        if isinstance(outcome, KerveError):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)

    def _fail(self, error: KerveError) -> None:
        with self._lock:
            if self._closed:
                error = _closed_error()
            if self._error is None:
                self._error = error
            pending, self._pending = self._pending, {}
            self._requests.put(_END)  # releases grpc's request thread if it waits for a message
        for future in pending.values():
            future.set_exception(_again(error))


class AsyncInferStream:
    """asyncio twin of InferStream, shared by any number of tasks; `AsyncClient.stream(...)` opens one.

    ```
    async with aclient.stream("cnn") as stream:
        results = await asyncio.gather(*(stream.infer({"image": x}) for x in batches))
    ```
    """

    def __init__(
        self,
        stub: Any,
        model: str,
        version: int | str | None = None,
        outputs: Sequence[str] | None = None,
        *,
        timeout: float,
        metadata: Metadata | None = None,
        class_counts: Mapping[str, int] | None = None,
    ) -> None:
        self.timeout = timeout
        self._builder = _Requests(model, version, outputs, class_counts)
        self._pending: dict[str, asyncio.Future[pb.ModelInferResponse]] = {}
        self._error: KerveError | None = None
        self._closed = False
        self._requests: asyncio.Queue[Any] = asyncio.Queue()
        self._call = stub.ModelStreamInfer(self._request_iterator(), metadata=metadata)
        self._reader = asyncio.get_running_loop().create_task(self._read(), name=f"kerve-stream-{model}")

    @property
    def model(self) -> str:
        return self._builder.model

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def closed(self) -> bool:
        return self._closed or self._error is not None

    async def infer(self, inputs: Mapping[str, Any], timeout: float | None = None, *, priority: int = 0) -> InferResult:
        timeout = self.timeout if timeout is None else timeout
        request_id, request = self._builder.build(inputs, timeout, priority)
        if self._closed:
            raise CancelledError("the stream is closed")
        if self._error is not None:
            raise _again(self._error)
        future: asyncio.Future[pb.ModelInferResponse] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        self._requests.put_nowait(request)
        try:
            response = await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            raise DeadlineExceededError(f"no answer on the stream within {timeout:g}s") from None
        finally:
            self._pending.pop(request_id, None)  # timed out or cancelled: a late answer is dropped
        return wire.parse_infer_response(response)

    async def predict(
        self, inputs: Mapping[str, Any], timeout: float | None = None, *, priority: int = 0
    ) -> dict[str, Any]:
        return (await self.infer(inputs, timeout, priority=priority)).outputs

    async def close(self, grace_s: float = DEFAULT_CLOSE_GRACE_S) -> None:
        """Stop new calls, let the server answer pending ones for up to `grace_s` s, cancel the rest; returns
        once the reader task has ended. Idempotent."""
        if not self._closed:
            self._closed = True
            self._requests.put_nowait(_END)
        _, running = await asyncio.wait([self._reader], timeout=max(0.0, grace_s))
        if running:
            self._reader.cancel()  # cancels the call too
            await asyncio.wait([self._reader])

    async def __aenter__(self) -> AsyncInferStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---- grpc.aio's side

    async def _request_iterator(self) -> AsyncIterator[pb.ModelInferRequest]:
        while (request := await self._requests.get()) is not _END:
            yield request

    async def _read(self) -> None:
        error: KerveError
        try:
            async for response in self._call:
                self._answer(response)
            error = UnavailableError("the server ended the stream")
        except grpc.RpcError as exc:
            error = from_rpc_error(exc)
        except asyncio.CancelledError:  # close() cancelled this task, or the channel closed and cancelled the call
            self._fail(_closed_error() if self._closed else CancelledError("the stream's call was cancelled"))
            raise
        except Exception as exc:  # a bug here must still release every caller
            error = ServerError(f"stream reader failed: {exc!r}")
        self._fail(error)

    def _answer(self, response: pb.ModelStreamInferResponse) -> None:
        future = self._pending.pop(response.infer_response.id, None)
        if future is None or future.done():
            return
        outcome = _outcome(response)
        if isinstance(outcome, KerveError):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)

    def _fail(self, error: KerveError) -> None:
        if self._closed:
            error = _closed_error()
        if self._error is None:
            self._error = error
        pending, self._pending = self._pending, {}
        self._requests.put_nowait(_END)  # ends grpc's request task if it waits for a message
        for future in pending.values():
            if not future.done():
                future.set_exception(_again(error))
