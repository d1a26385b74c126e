"""kerve.client where the network or the caller misbehaves: a slow readiness answer, a shared memory registration
cut off by its timeout, strings whose bytes numpy would trim. Scripted servicers on loopback, no TensorFlow."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from helpers import in_process_v2_server
from kerve import codecs
from kerve.client import (
    AsyncClient,
    CancelledError,
    Client,
    DeadlineExceededError,
    InvalidArgumentError,
    ResourceExhaustedError,
    RetryPolicy,
    ServerError,
)
from kerve.client.options import NO_RETRY
from kerve.client.wire import build_infer_request
from kerve.protos import grpc_service_pb2 as pb
from kerve.protos import grpc_service_pb2_grpc as pb_grpc


class SlowReady(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self) -> None:
        self.calls = 0

    def ServerReady(self, request: Any, context: Any) -> Any:
        self.calls += 1
        if self.calls == 1:
            time.sleep(0.5)  # a stalled server: the first answer comes after the caller's timeout
        return pb.ServerReadyResponse(ready=True)


def test_a_readiness_answer_slower_than_its_timeout_is_not_ready_not_an_error() -> None:
    with in_process_v2_server(SlowReady(), workers=2) as target:
        with Client(target) as client:
            assert client.ready(timeout=0.1) is False
            assert client.ready(timeout=5) is True

        async def main() -> tuple[bool, bool]:
            async with AsyncClient(target) as client:
                return await client.ready(timeout=0.1), await client.ready(timeout=5)

    with in_process_v2_server(SlowReady(), workers=2) as target:
        assert asyncio.run(main()) == (False, True)


class LateRegistration(pb_grpc.GRPCInferenceServiceServicer):
    """Registers what it is asked to (one call at a time, as a server's loop would), answering late once."""

    def __init__(self, late_s: float, taken: str = "") -> None:
        self.late_s, self.taken = late_s, taken
        self.registered: set[str] = set()
        self.unregistered: list[str] = []
        self.lock = threading.Lock()

    def SystemSharedMemoryRegister(self, request: Any, context: Any) -> Any:
        import grpc

        with self.lock:
            if request.name == self.taken:
                context.abort(grpc.StatusCode.ALREADY_EXISTS, f"region {request.name!r} already registered")
            self.registered.add(request.name)
            time.sleep(self.late_s)
        return pb.SystemSharedMemoryRegisterResponse()

    def SystemSharedMemoryUnregister(self, request: Any, context: Any) -> Any:
        with self.lock:
            self.unregistered.append(request.name)
            self.registered.discard(request.name)
        return pb.SystemSharedMemoryUnregisterResponse()


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="no POSIX shared memory (/dev/shm) here")
def test_a_registration_cut_off_by_its_timeout_is_unregistered_but_a_taken_name_is_left_alone() -> None:
    late = LateRegistration(late_s=0.5)
    with in_process_v2_server(late, workers=1) as target, Client(target) as client:
        with pytest.raises(DeadlineExceededError):
            client.shared_memory(4096, name="mine", timeout=0.1)
        assert late.registered == set() and late.unregistered == ["mine"]  # it had landed: taken back

    taken = LateRegistration(late_s=0.0, taken="theirs")
    with in_process_v2_server(taken, workers=1) as target, Client(target) as client:
        with pytest.raises(ServerError, match="already registered"):
            client.shared_memory(4096, name="theirs")
        assert taken.unregistered == []  # somebody else's region: never unregistered

    async def main(target: str) -> None:
        async with AsyncClient(target) as client:
            with pytest.raises(DeadlineExceededError):
                await client.shared_memory(4096, name="async", timeout=0.1)

    late = LateRegistration(late_s=0.5)
    with in_process_v2_server(late, workers=1) as target:
        asyncio.run(main(target))
        assert late.registered == set() and late.unregistered == ["async"]


def test_strings_and_bytes_given_as_lists_keep_their_trailing_nul_bytes() -> None:
    """numpy's fixed-width S and U types drop trailing NULs: a serialized protobuf ending in 0x00 would be sent one
    byte short. Lists (and single values) travel as the objects they are."""
    values = [b"\x08\x01\x10\x00", b"ok"]
    request = build_infer_request("m", {"x": values, "t": "tab\x00", "n": np.array([b"a\x00"], dtype=object)})
    sent = {
        t.name: codecs.decode_raw(raw, t.datatype, t.shape)
        for t, raw in zip(request.inputs, request.raw_input_contents, strict=True)
    }
    assert sent["x"].tolist() == values
    assert sent["t"].tolist() == b"tab\x00" and sent["n"].tolist() == [b"a\x00"]


class Echo(pb_grpc.GRPCInferenceServiceServicer):
    def ModelStreamInfer(self, requests: Any, context: Any) -> Any:
        for request in requests:
            response = pb.ModelInferResponse(model_name=request.model_name, id=request.id)
            for tensor, raw in zip(request.inputs, request.raw_input_contents, strict=True):
                response.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
                response.raw_output_contents.append(raw)
            yield pb.ModelStreamInferResponse(infer_response=response)


def test_a_stream_message_over_the_channels_limit_fails_alone_and_the_stream_goes_on() -> None:
    """gRPC fails a whole stream for one message over max_message_bytes, every caller's call with it: the SDK
    refuses that message itself (RESOURCE_EXHAUSTED, nothing sent), and the others go on."""
    small, big = np.ones(4, np.float32), np.ones(1 << 19, np.float32)  # 2 MiB of floats
    with in_process_v2_server(Echo(), workers=2) as target:
        with Client(target, max_message_bytes=1 << 20) as client, client.stream("m") as stream:
            assert stream.infer({"x": small}).outputs["x"].tolist() == small.tolist()
            with pytest.raises(ResourceExhaustedError, match="more than the channel's max_message_bytes"):
                stream.infer({"x": big})
            assert stream.infer({"x": small * 2}).outputs["x"].tolist() == (small * 2).tolist()
            with pytest.raises(ResourceExhaustedError):  # the id counts: a small message with a 1 MiB id
                stream.infer({"x": small}, request_id="r" * (1 << 20))
            assert stream.infer({"x": small}).outputs["x"].tolist() == small.tolist()

        async def main() -> list[float]:
            async with AsyncClient(target, max_message_bytes=1 << 20) as client, client.stream("m") as stream:
                with pytest.raises(ResourceExhaustedError):
                    await stream.infer({"x": big})
                with pytest.raises(ResourceExhaustedError):
                    await stream.infer({"x": small}, request_id="r" * (1 << 20))
                return (await stream.infer({"x": small})).outputs["x"].tolist()

        assert asyncio.run(main()) == small.tolist()


def test_the_stream_size_check_takes_anything_an_array_can_be_made_of() -> None:
    """Lists, scalars and objects with a `dtype` that is not numpy's (a framework's tensor) are measured from the
    built message; only numpy arrays are sized from their byte counts."""
    from kerve.client.stream import _Requests

    class Tensor:  # what a framework tensor looks like to the SDK: array-like, its own dtype type
        dtype = object()

        def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
            return np.ones((1, 4), np.float32)

    builder = _Requests("m", None, None, None, max_message_bytes=1 << 20)
    for value in (Tensor(), [[1.0, 2.0]], np.ones((1, 4), np.float32), [b"a\x00"]):
        request, _ = builder.build({"x": value}, None)
        assert request.inputs[0].name == "x"


@pytest.mark.parametrize(
    "value",
    [np.full(300_000, b"x", dtype="S1"), np.full(240_000, "x", dtype="U1")],
    ids=["bytes", "str"],
)
def test_fixed_width_strings_are_measured_as_sent_not_by_their_numpy_size(value: np.ndarray) -> None:
    """Each element travels with a 4-byte length (and str as UTF-8): 300k one-byte strings are 1.5 MB on the wire
    though numpy holds them in 300 kB. Sized by nbytes they went out and gRPC failed the whole stream."""
    from kerve.client.stream import _Requests

    builder = _Requests("m", None, None, None, max_message_bytes=1 << 20)
    assert value.nbytes < (1 << 20) - 64 * 1024 < len(value) * 5
    with pytest.raises(ResourceExhaustedError, match="it was not sent"):
        builder.build({"x": value}, None)


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan, 0, -1, 1e13, True, "5"])
def test_a_timeout_no_call_could_carry_is_refused_up_front(bad: Any) -> None:
    """inf and NaN passed a `<= 0` check, then failed every call: DeadlineExceededError at once (unary) or a raw
    OverflowError (a stream's microsecond timeout parameter)."""
    from kerve.client.options import call_with_retry
    from kerve.client.stream import _Requests

    with pytest.raises(ValueError, match="timeout"):
        Client("127.0.0.1:1", timeout=bad)
    with pytest.raises(ValueError, match="timeout"):
        AsyncClient("127.0.0.1:1", timeout=bad)
    with pytest.raises(ValueError, match="timeout"):
        call_with_retry(lambda remaining: remaining, NO_RETRY, bad)
    with pytest.raises(ValueError, match="timeout"):
        _Requests("m", None, None, None).build({"x": np.ones(2, np.float32)}, bad)
    with Client("127.0.0.1:1") as client, pytest.raises(ValueError, match="timeout"):
        client.live(timeout=bad)


class Stalled(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self) -> None:
        self.started = threading.Event()

    def ServerLive(self, request: Any, context: Any) -> Any:
        self.started.set()
        deadline = time.monotonic() + 10
        while context.is_active() and time.monotonic() < deadline:
            time.sleep(0.01)
        return pb.ServerLiveResponse(live=True)


def test_closing_a_client_fails_its_calls_with_the_typed_cancelled_error_in_both_clients() -> None:
    """grpc.aio cancels a call in flight when its channel closes as if the caller's task were cancelled: the task
    looked cancelled though nobody cancelled it. A call after close raised grpc's own errors, another per client."""
    servicer = Stalled()
    with in_process_v2_server(servicer, workers=2) as target:

        async def main() -> tuple[bool, str, str]:
            client = AsyncClient(target)
            call = asyncio.ensure_future(client.live(timeout=20))
            await asyncio.get_running_loop().run_in_executor(None, servicer.started.wait, 10)
            await client.close()
            with pytest.raises(CancelledError) as in_flight:
                await call
            with pytest.raises(CancelledError) as after:
                await client.live()
            return call.cancelled(), in_flight.value.code, str(after.value)

        cancelled, code, after_close = asyncio.run(main())
        assert (cancelled, code) == (False, "CANCELLED") and "closed" in after_close

        client = Client(target)
        client.close()
        with pytest.raises(CancelledError, match="closed"):
            client.live()
        with pytest.raises(CancelledError, match="closed"):
            client.stream("m")


def test_a_task_cancelled_by_its_owner_stays_cancelled() -> None:
    servicer = Stalled()
    with in_process_v2_server(servicer, workers=2) as target:

        async def main() -> bool:
            async with AsyncClient(target) as client:
                call = asyncio.ensure_future(client.live(timeout=20))
                await asyncio.get_running_loop().run_in_executor(None, servicer.started.wait, 10)
                call.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await call
                return call.cancelled()

        assert asyncio.run(main()) is True


class Unavailable(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self) -> None:
        self.failed = threading.Event()

    def ServerLive(self, request: Any, context: Any) -> Any:
        self.failed.set()
        context.abort(grpc.StatusCode.UNAVAILABLE, "warming up")


def test_closing_during_a_retrys_backoff_ends_the_call_with_the_typed_cancelled_error() -> None:
    """The retry loop slept its backoff, then called the closed channel: grpc's ValueError (sync) or UsageError
    (aio) escaped, after the whole backoff. close() now wakes the backoff and the call ends typed, at once."""
    slow = RetryPolicy(max_attempts=5, initial_backoff_s=30.0, max_backoff_s=30.0, jitter=0.0)
    servicer = Unavailable()
    with in_process_v2_server(servicer, workers=2) as target:
        client = Client(target, retry=slow)
        outcome: list[BaseException] = []

        def call() -> None:
            try:
                client.live(timeout=60)
            except BaseException as exc:  # noqa: BLE001  # what the caller gets, whatever it is
                outcome.append(exc)

        caller = threading.Thread(target=call)
        caller.start()
        assert servicer.failed.wait(10)
        client.close()
        caller.join(10)  # far below the 30 s backoff: close() woke it
        assert not caller.is_alive()
        assert isinstance(outcome[0], CancelledError) and "closed" in str(outcome[0])

        servicer.failed.clear()

        async def main() -> BaseException:
            aclient = AsyncClient(target, retry=slow)
            call = asyncio.ensure_future(aclient.live(timeout=60))
            await asyncio.get_running_loop().run_in_executor(None, servicer.failed.wait, 10)
            await asyncio.sleep(0.05)  # usually into the backoff; closed in flight instead, it must end typed too
            await aclient.close()
            with pytest.raises(CancelledError) as info:
                await asyncio.wait_for(call, 10)
            return info.value

        assert "closed" in str(asyncio.run(main()))


class ReadyEcho(Echo):
    def ServerReady(self, request: Any, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=True)


def test_bounds_that_no_loop_or_join_can_take_are_handled() -> None:
    """wait_ready(deadline_s=nan) looped forever; a sync stream's close(grace_s=inf) raised OverflowError from
    Thread.join instead of waiting, as the async twin does; a ragged list escaped as a bare ValueError."""
    with in_process_v2_server(ReadyEcho(), workers=2) as target, Client(target) as client:
        for bad in (math.nan, math.inf, -1.0, "5"):
            with pytest.raises(ValueError, match="deadline_s"):
                client.wait_ready(deadline_s=bad)  # type: ignore[arg-type]
        client.wait_ready(deadline_s=0)  # one look: the server is up
        stream = client.stream("m")
        assert stream.infer({"x": np.ones(2, np.float32)}).outputs["x"].tolist() == [1.0, 1.0]
        stream.close(grace_s=math.inf)  # nothing pending: returns once the reader ends
        with pytest.raises(InvalidArgumentError, match="input 'x': cannot be made into an array"):
            client.predict("m", {"x": [[1, 2], [3]]})

    async def main() -> None:
        async with AsyncClient(target) as aclient:
            with pytest.raises(ValueError, match="deadline_s"):
                await aclient.wait_ready(deadline_s=math.nan)

    with in_process_v2_server(Echo(), workers=2) as target:
        asyncio.run(main())
