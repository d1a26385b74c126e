"""The SDK's streams against a scripted in-process gRPC servicer (no TensorFlow): answers out of order, in-band
errors, and a stream the server aborts with calls pending."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import numpy as np
import pytest

from helpers import in_process_v2_server, wait_for
from kerve.client import AsyncClient, Client, InvalidArgumentError, ServerError, UnavailableError
from kerve.protos import grpc_service_pb2 as pb
from kerve.protos import grpc_service_pb2_grpc as pb_grpc


def _answer(request: pb.ModelInferRequest) -> pb.ModelStreamInferResponse:
    name = request.inputs[0].name
    if name == "bad":
        return pb.ModelStreamInferResponse(
            error_message="INVALID_ARGUMENT: input 'bad': no such input",
            infer_response=pb.ModelInferResponse(id=request.id),
        )
    if name == "odd":
        return pb.ModelStreamInferResponse(
            error_message="it broke", infer_response=pb.ModelInferResponse(id=request.id)
        )
    tensor = request.inputs[0]
    response = pb.ModelInferResponse(model_name=request.model_name, model_version="3", id=request.id)
    response.outputs.add(name="y", datatype=tensor.datatype, shape=tensor.shape)
    response.raw_output_contents.append(request.raw_input_contents[0])
    return pb.ModelStreamInferResponse(infer_response=response)


class Scripted(pb_grpc.GRPCInferenceServiceServicer):
    """Echoes input 0 as output "y". Holds answers until `group` messages arrived, then answers them last first;
    a message whose input is named "die" aborts the stream with UNAVAILABLE."""

    def __init__(self) -> None:
        self.group = 1
        self.received = 0
        self.timeouts: list[int] = []  # each message's `timeout` parameter (microseconds)

    def ModelStreamInfer(self, request_iterator: Iterator[pb.ModelInferRequest], context: Any) -> Any:
        held: list[pb.ModelInferRequest] = []
        for request in request_iterator:
            self.received += 1
            self.timeouts.append(request.parameters["timeout"].int64_param)
            if request.inputs[0].name == "die":
                context.abort(grpc.StatusCode.UNAVAILABLE, "going away")
            held.append(request)
            if len(held) >= self.group:
                yield from (_answer(r) for r in reversed(held))
                held.clear()
        yield from (_answer(r) for r in reversed(held))


@pytest.fixture
def scripted() -> Iterator[tuple[str, Scripted]]:
    servicer = Scripted()
    with in_process_v2_server(servicer, workers=4) as target:
        yield target, servicer


def value(i: int) -> dict[str, np.ndarray]:
    return {"x": np.full((1, 2), i, np.int64)}


def test_answers_in_any_order_reach_their_own_callers(scripted: tuple[str, Scripted]) -> None:
    target, servicer = scripted
    servicer.group = 8  # every 8 messages are answered in reverse
    with Client(target) as client, client.stream("m") as stream:
        barrier = threading.Barrier(8)

        def call(i: int) -> np.ndarray:
            barrier.wait(timeout=10)
            result = stream.infer(value(i), timeout=10)
            assert result.model_version == "3"
            return result.outputs["y"]

        with futures.ThreadPoolExecutor(8) as pool:
            got = list(pool.map(call, range(16)))
    assert [int(g[0, 0]) for g in got] == list(range(16))


def test_async_answers_in_any_order_reach_their_own_tasks(scripted: tuple[str, Scripted]) -> None:
    target, servicer = scripted
    servicer.group = 8

    async def main() -> list[Any]:
        async with AsyncClient(target) as client, client.stream("m") as stream:
            return await asyncio.gather(*(stream.predict(value(i), timeout=10) for i in range(16)))

    assert [int(g["y"][0, 0]) for g in asyncio.run(main())] == list(range(16))


def test_in_band_errors_fail_one_call_each(scripted: tuple[str, Scripted]) -> None:
    target, _ = scripted
    with Client(target) as client, client.stream("m") as stream:
        with pytest.raises(InvalidArgumentError, match="input 'bad': no such input") as bad:
            stream.infer({"bad": np.zeros(1, np.float32)})
        assert bad.value.code == "INVALID_ARGUMENT"
        with pytest.raises(ServerError, match="UNKNOWN: it broke"):
            stream.infer({"odd": np.zeros(1, np.float32)})
        assert stream.infer(value(5)).outputs["y"].tolist() == [[5, 5]]


def test_a_stream_the_server_aborts_fails_every_pending_and_later_call(scripted: tuple[str, Scripted]) -> None:
    target, servicer = scripted
    servicer.group = 1000  # hold every answer
    with Client(target) as client:
        stream = client.stream("m", timeout=30)
        with futures.ThreadPoolExecutor(3) as pool:
            pending = [pool.submit(stream.infer, value(i)) for i in range(3)]
            wait_for(lambda: servicer.received == 3, "three messages at the server")
            with pytest.raises(UnavailableError, match="going away"):
                stream.infer({"die": np.zeros(1, np.float32)})
            for future in pending:
                with pytest.raises(UnavailableError, match="going away"):
                    future.result(timeout=10)
        with pytest.raises(UnavailableError, match="going away"):
            stream.infer(value(9))
        assert stream.closed and stream.pending == 0
        stream.close()

    async def main() -> None:
        async with AsyncClient(target) as aclient:
            astream = aclient.stream("m", timeout=30)
            calls = [asyncio.ensure_future(astream.infer(value(i))) for i in range(3)]
            deadline = time.monotonic() + 10
            while astream.pending < 3:
                assert time.monotonic() < deadline, "three calls in flight"
                await asyncio.sleep(0.005)
            with pytest.raises(UnavailableError, match="going away"):
                await astream.infer({"die": np.zeros(1, np.float32)})
            for outcome in await asyncio.gather(*calls, return_exceptions=True):
                assert isinstance(outcome, UnavailableError), outcome
            with pytest.raises(UnavailableError):
                await astream.infer(value(9))
            await astream.close()
            assert astream._reader.done()

    asyncio.run(main())


def test_each_message_carries_its_calls_timeout_to_the_server(scripted: tuple[str, Scripted]) -> None:
    target, servicer = scripted
    with Client(target) as client, client.stream("m", timeout=7) as stream:
        stream.infer({"x": np.zeros(2, np.float32)})
        stream.infer({"x": np.zeros(2, np.float32)}, timeout=0.25)

    async def main() -> None:
        async with AsyncClient(target) as aclient, aclient.stream("m", timeout=3) as astream:
            await astream.infer({"x": np.zeros(2, np.float32)})

    asyncio.run(main())
    assert servicer.timeouts == [7_000_000, 250_000, 3_000_000]
