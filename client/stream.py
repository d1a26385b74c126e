"""Streams: many concurrent inferences over one bidirectional `ModelStreamInfer` call.

A streamed request skips what a unary call costs per request (a new HTTP/2 stream, its headers, the call's setup
on both sides), and the server pipelines a stream's messages into shared batches, so a busy client gets more
throughput from one stream than from as many unary calls. Both stream classes here share one protocol:

- every message carries an `id` no other message in flight on the stream has: the caller's own (`request_id=`,
  refused with ValueError while one of that id is in flight) or the next number the stream counts ("0", "1", ...,
  skipping any in flight). The server answers each message once, with its `infer_response` (whose `id` is the
  request's) or an in-band `error_message` ("<STATUS>: <text>"), and the stream goes on after an error. Answers
  are matched to callers by `id`, so their order does not matter. An id stays in flight until its answer is back,
  even after its caller timed out: reusing it sooner would hand the late answer to the new call.
- each message names its own outputs: a call's `outputs` (names, or `region.output(...)` places the server writes
  into, read back into the result as unary `infer` does), else the stream's.
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
import math
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeoutError
from typing import Any

import grpc
import numpy as np

from kerve.protos import grpc_service_pb2 as pb

from . import wire
from .errors import (
    CancelledError,
    DeadlineExceededError,
    InvalidArgumentError,
    KerveError,
    ResourceExhaustedError,
    ServerError,
    UnavailableError,
    from_error_message,
    from_rpc_error,
)
from .options import Metadata, check_timeout
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


_HEADROOM = 64 * 1024  # what a message holds besides its raw contents, at most, for any sane request


def _payload_bytes(inputs: Mapping[str, Any]) -> float:
    """The raw bytes a message of these inputs carries, from the arrays alone (reading the built message's raw
    contents back would copy them); infinity when the arrays cannot say (lists, strings, shared memory places)."""
    total = 0
    for value in inputs.values():
        # Strings (object, bytes, str) travel as 4-byte lengths plus UTF-8: not their nbytes; a tf.Tensor's dtype
        # is not numpy's.
        if not isinstance(value, np.ndarray) or value.dtype.kind in "OSU":
            return math.inf
        total += value.nbytes
    return total


class _Requests:
    """What both stream classes build per message: the model, version, default outputs and class counts fixed; a
    call's own outputs and id when it gives them."""

    def __init__(
        self,
        model: str,
        version: int | str | None,
        outputs: Sequence[str] | None,
        class_counts: Mapping[str, int] | None = None,
        max_message_bytes: int | None = None,
    ) -> None:
        if any(isinstance(o, SharedOutput) for o in outputs or ()):  # the stream's calls would share one place
            raise InvalidArgumentError(
                "a stream's outputs are names: place outputs in shared memory per call (stream.infer(..., outputs=))"
            )
        self.model = model
        self.version = version
        self.outputs = tuple(outputs) if outputs else None
        # checked now, so a bad count fails opening the stream rather than its first call
        self.class_counts = {name: wire.class_count(name, k) for name, k in (class_counts or {}).items()} or None
        self.max_message_bytes = max_message_bytes
        self._ids = itertools.count()

    def build(
        self,
        inputs: Mapping[str, Any],
        timeout: float | None,
        priority: int = 0,
        outputs: Sequence[str | SharedOutput] | None = None,
        request_id: str | None = None,
    ) -> tuple[pb.ModelInferRequest, dict[str, SharedOutput]]:
        """The message without its id (`claim` gives it one, where the stream can check it is free), and the
        outputs it places in shared memory, to parse its answer with. `outputs` None or empty: the stream's. The
        size check counts the caller's `request_id` (set later): a long one would otherwise take the message over
        the limit unchecked, and gRPC would fail the whole stream."""
        chosen = tuple(outputs) if outputs else self.outputs
        if timeout is not None:
            check_timeout(timeout)
        request = wire.build_infer_request(
            self.model,
            inputs,
            self.version,
            chosen,
            "",
            self.class_counts,
            priority=priority,
            timeout=timeout,
        )
        limit = self.max_message_bytes
        id_bytes = len(request_id.encode("utf-8", "surrogatepass")) + 16 if isinstance(request_id, str) else 32
        if limit is not None and _payload_bytes(inputs) + id_bytes + _HEADROOM > limit:
            size = request.ByteSize() + id_bytes  # near the limit, or not known from the arrays: measured
            if size > limit:  # gRPC would fail the whole stream, every other call on it included
                raise ResourceExhaustedError(
                    f"the message is {size} bytes, more than the channel's max_message_bytes ({limit}): it was not "
                    "sent (the stream goes on); send it with `infer` on a client with a larger limit, or put the "
                    "inputs in shared memory"
                )
        return request, wire.shared_outputs(chosen)

    def claim(self, request_id: str | None, in_flight: Callable[[str], bool]) -> str:
        """The id for the next message: the caller's, or the next number not in flight (the same numbers as ever
        when callers give none). Call it under the stream's lock, with the send that makes the id in flight."""
        if request_id is not None and not isinstance(request_id, str):
            raise ValueError(f"request_id must be a str, got {type(request_id).__name__}")
        if request_id:
            if in_flight(request_id):
                raise ValueError(
                    f"request id {request_id!r} is still in flight on this stream: its answer would match either call"
                )
            return request_id
        while in_flight(generated := str(next(self._ids))):  # a caller took this number: the next one
            pass
        return generated


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
        max_message_bytes: int | None = None,
    ) -> None:
        self.timeout = timeout
        self._builder = _Requests(model, version, outputs, class_counts, max_message_bytes)
        self._lock = threading.Lock()
        self._pending: dict[str, Future[pb.ModelInferResponse]] = {}
        self._late: set[str] = set()  # ids of calls that gave up (timed out) while their answer is still due
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

    def infer(
        self,
        inputs: Mapping[str, Any],
        timeout: float | None = None,
        *,
        priority: int = 0,
        outputs: Sequence[str | SharedOutput] | None = None,
        request_id: str | None = None,
    ) -> InferResult:
        """Send one message and wait for its answer (at most `timeout` s, default the stream's). `priority` is per
        call, as on `Client.infer`: one stream may carry urgent and background work side by side.

        `outputs` (names, or `region.output(...)` places in shared memory) replaces the stream's for this call, as
        `Client.infer`'s: a placed output is read back from its region into the result. `request_id` is the
        message's id (the result's `id`); a ValueError, with nothing sent, while another call with that id is in
        flight. None or "": a generated one (a decimal number)."""
        timeout = self.timeout if timeout is None else timeout
        request, shared = self._builder.build(inputs, timeout, priority, outputs, request_id)
        future: Future[pb.ModelInferResponse] = Future()
        with self._lock:
            if self._closed:
                raise CancelledError("the stream is closed")
            if self._error is not None:
                raise _again(self._error)
            request.id = request_id = self._builder.claim(request_id, self._in_flight)
            self._pending[request_id] = future
            self._requests.put(request)  # under the lock: never behind the _END of a close or a failure
        try:
            response = future.result(timeout)
        except FutureTimeoutError:
            with self._lock:
                mine = self._pending.pop(request_id, None) is not None
                if mine:
                    self._late.add(request_id)
            if mine:
                raise DeadlineExceededError(f"no answer on the stream within {timeout:g}s") from None
            response = future.result()  # the reader took it first: its outcome is being set now
        return wire.parse_infer_response(response, shared)

    def predict(
        self,
        inputs: Mapping[str, Any],
        timeout: float | None = None,
        *,
        priority: int = 0,
        outputs: Sequence[str | SharedOutput] | None = None,
        request_id: str | None = None,
    ) -> dict[str, Any]:
        """numpy in, numpy out, over the stream; the arguments as in `infer`."""
        return self.infer(inputs, timeout, priority=priority, outputs=outputs, request_id=request_id).outputs

    def close(self, grace_s: float = DEFAULT_CLOSE_GRACE_S) -> None:
        """Stop new calls, let the server answer pending ones for up to `grace_s` s, cancel the rest; returns
        once the reader thread has ended. Idempotent."""
        with self._lock:
            self._closed = True
            self._requests.put(_END)
        # Thread.join overflows past TIMEOUT_MAX (math.inf included): wait without a bound instead, as the async twin
        self._reader.join(None if grace_s >= threading.TIMEOUT_MAX else max(0.0, grace_s))
        if self._reader.is_alive():
            self._call.cancel()
            self._reader.join()

    def __enter__(self) -> InferStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _in_flight(self, request_id: str) -> bool:
        """Sent and not answered yet, whether its caller still waits or not (under the lock)."""
        return request_id in self._pending or request_id in self._late

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
        request_id = response.infer_response.id
        with self._lock:
            future = self._pending.pop(request_id, None)
            if future is None:
                self._late.discard(request_id)  # its caller timed out and left: the id is free again
                return
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
            self._late.clear()
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
        max_message_bytes: int | None = None,
    ) -> None:
        self.timeout = timeout
        self._builder = _Requests(model, version, outputs, class_counts, max_message_bytes)
        self._pending: dict[str, asyncio.Future[pb.ModelInferResponse]] = {}
        self._late: set[str] = set()  # ids of calls that gave up (timed out, cancelled) while their answer is due
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

    async def infer(
        self,
        inputs: Mapping[str, Any],
        timeout: float | None = None,
        *,
        priority: int = 0,
        outputs: Sequence[str | SharedOutput] | None = None,
        request_id: str | None = None,
    ) -> InferResult:
        """As `InferStream.infer`."""
        timeout = self.timeout if timeout is None else timeout
        request, shared = self._builder.build(inputs, timeout, priority, outputs, request_id)
        if self._closed:
            raise CancelledError("the stream is closed")
        if self._error is not None:
            raise _again(self._error)
        request.id = request_id = self._builder.claim(request_id, self._in_flight)
        future: asyncio.Future[pb.ModelInferResponse] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        self._requests.put_nowait(request)
        try:
            response = await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            raise DeadlineExceededError(f"no answer on the stream within {timeout:g}s") from None
        finally:
            if self._pending.pop(request_id, None) is not None:  # timed out or cancelled: a late answer is dropped
                self._late.add(request_id)
        return wire.parse_infer_response(response, shared)

    async def predict(
        self,
        inputs: Mapping[str, Any],
        timeout: float | None = None,
        *,
        priority: int = 0,
        outputs: Sequence[str | SharedOutput] | None = None,
        request_id: str | None = None,
    ) -> dict[str, Any]:
        return (await self.infer(inputs, timeout, priority=priority, outputs=outputs, request_id=request_id)).outputs

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

    def _in_flight(self, request_id: str) -> bool:
        return request_id in self._pending or request_id in self._late

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
        request_id = response.infer_response.id
        future = self._pending.pop(request_id, None)
        if future is None:
            self._late.discard(request_id)
            return
        if future.done():
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
        self._late.clear()
        self._requests.put_nowait(_END)  # ends grpc's request task if it waits for a message
        for future in pending.values():
            if not future.done():
                future.set_exception(_again(error))
