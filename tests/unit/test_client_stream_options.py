"""A stream call's own outputs (names, or places in shared memory) and its own request id, against a scripted
in-process gRPC servicer (no TensorFlow): what each message carries, what the caller gets back, and ids refused
before anything is sent. Calls without them send the messages streams always sent."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from helpers import SharedMemoryKeys, in_process_v2_server, wait_for
from kerve.client import AsyncClient, Client, DeadlineExceededError
from kerve.client.wire import build_infer_request
from kerve.protos import grpc_service_pb2 as pb
from kerve.protos import grpc_service_pb2_grpc as pb_grpc

needs_shm = pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="no POSIX shared memory (/dev/shm) here")


def value(i: int) -> dict[str, np.ndarray]:
    return {"x": np.full((1, 2), i, np.int64)}


class Scripted(SharedMemoryKeys, pb_grpc.GRPCInferenceServiceServicer):
    """Keeps every stream message; echoes input 0 as output "y", into shared memory when the message places it
    there. Holds answers until `group` messages arrived, then answers them last first."""

    def __init__(self) -> None:
        self.group = 1
        self.received: list[pb.ModelInferRequest] = []
        super().__init__()

    def ModelStreamInfer(self, request_iterator: Iterator[pb.ModelInferRequest], context: Any) -> Any:
        held: list[pb.ModelInferRequest] = []
        for request in request_iterator:
            self.received.append(request)
            held.append(request)
            if len(held) >= self.group:
                yield from (self._answer(r) for r in reversed(held))
                held.clear()
        yield from (self._answer(r) for r in reversed(held))

    def _answer(self, request: pb.ModelInferRequest) -> pb.ModelStreamInferResponse:
        tensor, raw = request.inputs[0], request.raw_input_contents[0]
        response = pb.ModelInferResponse(model_name=request.model_name, model_version="1", id=request.id)
        response.outputs.add(name="y", datatype=tensor.datatype, shape=tensor.shape)
        params = request.outputs[0].parameters if request.outputs else {}
        if "shared_memory_region" not in params:
            response.raw_output_contents.append(raw)
            return pb.ModelStreamInferResponse(infer_response=response)
        key = self.keys[params["shared_memory_region"].string_param]
        assert params["shared_memory_byte_size"].int64_param >= len(raw)
        with Path("/dev/shm", key.lstrip("/")).open("r+b") as shm:
            shm.seek(params["shared_memory_offset"].int64_param if "shared_memory_offset" in params else 0)
            shm.write(raw)
        response.raw_output_contents.append(b"")  # the answer is in the region only
        return pb.ModelStreamInferResponse(infer_response=response)

    def ids(self) -> list[str]:
        return [r.id for r in self.received]


@pytest.fixture
def scripted() -> Iterator[tuple[str, Scripted]]:
    servicer = Scripted()
    with in_process_v2_server(servicer, workers=4) as target:
        yield target, servicer


async def apoll(condition: Any, what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


def wire_bytes(request: pb.ModelInferRequest) -> bytes:
    return request.SerializeToString(deterministic=True)


# --- calls without the new arguments ---------------------------------------------------------------------------


def test_calls_without_outputs_or_ids_send_what_streams_always_sent(scripted: tuple[str, Scripted]) -> None:
    """Numbered ids from "0", the stream's outputs and class counts, the call's timeout and priority: each message
    byte for byte what the builder made of them before calls could choose outputs and ids."""
    target, servicer = scripted
    with Client(target) as client, client.stream("m", outputs=["y"], timeout=7) as stream:
        assert stream.infer(value(0)).id == "0"
        assert stream.predict(value(1), priority=2)["y"].tolist() == [[1, 1]]
        assert stream.infer(value(2), 0.5, outputs=None, request_id=None).id == "2"  # None: as if not given
        assert stream.infer(value(3), outputs=[], request_id="").id == "3"  # empty: as if not given

    async def main() -> list[str]:
        async with AsyncClient(target) as aclient, aclient.stream("m", version=2, timeout=3) as astream:
            return [(await astream.infer(value(i))).id for i in range(2)]

    assert asyncio.run(main()) == ["0", "1"]
    expected = [
        build_infer_request("m", value(0), None, ["y"], "0", timeout=7.0),
        build_infer_request("m", value(1), None, ["y"], "1", priority=2, timeout=7.0),
        build_infer_request("m", value(2), None, ["y"], "2", timeout=0.5),
        build_infer_request("m", value(3), None, ["y"], "3", timeout=7.0),
        build_infer_request("m", value(0), 2, None, "0", timeout=3.0),
        build_infer_request("m", value(1), 2, None, "1", timeout=3.0),
    ]
    assert [wire_bytes(r) for r in servicer.received] == [wire_bytes(r) for r in expected]


def test_a_calls_output_names_replace_the_streams_for_that_call_only(scripted: tuple[str, Scripted]) -> None:
    target, servicer = scripted
    with Client(target) as client, client.stream("m", outputs=["y"], class_counts={"c": 2}) as stream:
        stream.infer(value(0), outputs=["z", "y"])
        stream.infer(value(1))
    own, default = servicer.received
    assert [o.name for o in own.outputs] == ["z", "y", "c"]  # the stream's class counts still asked besides
    assert [o.name for o in default.outputs] == ["y", "c"]
    assert own.outputs[2].parameters["classification"].int64_param == 2


# --- request ids -------------------------------------------------------------------------------------------------


def test_a_callers_request_id_travels_and_comes_back(scripted: tuple[str, Scripted]) -> None:
    target, servicer = scripted
    servicer.group = 4  # answered last first: matched by id, not by order
    with Client(target) as client, client.stream("m") as stream:
        barrier = threading.Barrier(4)

        def call(i: int) -> Any:
            barrier.wait(timeout=10)
            return stream.infer(value(i), request_id=f"caller-{i}")

        with futures.ThreadPoolExecutor(4) as pool:
            results = list(pool.map(call, range(4)))
    assert [r.id for r in results] == [f"caller-{i}" for i in range(4)]
    assert [int(r.outputs["y"][0, 0]) for r in results] == [0, 1, 2, 3]
    assert sorted(servicer.ids()) == [f"caller-{i}" for i in range(4)]


def test_a_request_id_in_flight_is_refused_before_sending(scripted: tuple[str, Scripted]) -> None:
    target, servicer = scripted
    servicer.group = 2  # the first message waits for a second one
    with Client(target) as client, client.stream("m", timeout=10) as stream, futures.ThreadPoolExecutor(1) as pool:
        held = pool.submit(stream.infer, value(1), request_id="abc")
        wait_for(lambda: len(servicer.received) == 1, "the first message at the server")
        with pytest.raises(ValueError, match="request id 'abc' is still in flight"):
            stream.infer(value(2), request_id="abc")
        with pytest.raises(ValueError, match="request_id must be a str, got int"):
            stream.predict(value(2), request_id=7)  # type: ignore[arg-type]
        assert stream.pending == 1 and not stream.closed
        other = stream.infer(value(3))  # the second message: both are answered
        assert (other.id, other.outputs["y"].tolist()) == ("0", [[3, 3]])
        first = held.result(timeout=10)
        assert (first.id, first.outputs["y"].tolist()) == ("abc", [[1, 1]])
        servicer.group = 1
        again = stream.infer(value(4), request_id="abc")  # answered: the id is free again
        assert (again.id, again.outputs["y"].tolist()) == ("abc", [[4, 4]])
    assert servicer.ids() == ["abc", "0", "abc"]  # the refused calls sent nothing


def test_an_id_whose_caller_timed_out_stays_taken_until_its_late_answer(scripted: tuple[str, Scripted]) -> None:
    """Reusing it sooner would hand the late answer to the new call, with the wrong outputs."""
    target, servicer = scripted
    servicer.group = 2
    with Client(target) as client, client.stream("m", timeout=10) as stream:
        with pytest.raises(DeadlineExceededError):
            stream.infer(value(1), timeout=0.2, request_id="abc")
        assert stream.pending == 0
        with pytest.raises(ValueError, match="'abc' is still in flight"):
            stream.infer(value(2), request_id="abc")
        assert stream.infer(value(3)).outputs["y"].tolist() == [[3, 3]]  # the second message: both answered
        wait_for(lambda: "abc" not in stream._late, "the late answer to free the id")
        servicer.group = 1
        again = stream.infer(value(4), request_id="abc")
        assert (again.id, again.outputs["y"].tolist()) == ("abc", [[4, 4]])
    assert servicer.ids() == ["abc", "0", "abc"]


def test_generated_ids_skip_a_callers_id_in_flight(scripted: tuple[str, Scripted]) -> None:
    target, servicer = scripted
    servicer.group = 3
    with Client(target) as client, client.stream("m", timeout=10) as stream, futures.ThreadPoolExecutor(2) as pool:
        mine = pool.submit(stream.infer, value(10), request_id="1")
        wait_for(lambda: len(servicer.received) == 1, "the caller's message at the server")
        zero = pool.submit(stream.infer, value(11))
        wait_for(lambda: len(servicer.received) == 2, "the generated one at the server")
        two = stream.infer(value(12))  # "1" is in flight: the count goes on to "2"
        results = [mine.result(timeout=10), zero.result(timeout=10), two]
        servicer.group = 1
        assert stream.infer(value(13)).id == "3"
    assert [(r.id, int(r.outputs["y"][0, 0])) for r in results] == [("1", 10), ("0", 11), ("2", 12)]
    assert servicer.ids() == ["1", "0", "2", "3"]


def test_async_request_ids(scripted: tuple[str, Scripted]) -> None:
    target, servicer = scripted
    servicer.group = 2

    async def main() -> None:
        async with AsyncClient(target) as aclient, aclient.stream("m", timeout=10) as stream:
            held = asyncio.ensure_future(stream.infer(value(1), request_id="abc"))
            await apoll(lambda: stream.pending == 1, "the first call in flight")
            with pytest.raises(ValueError, match="request id 'abc' is still in flight"):
                await stream.infer(value(2), request_id="abc")
            other = await stream.infer(value(3))
            first = await asyncio.wait_for(held, 10)
            assert [(r.id, int(r.outputs["y"][0, 0])) for r in (first, other)] == [("abc", 1), ("0", 3)]

            with pytest.raises(DeadlineExceededError):
                await stream.infer(value(4), timeout=0.2, request_id="late")
            with pytest.raises(ValueError, match="'late' is still in flight"):
                await stream.infer(value(5), request_id="late")
            assert (await stream.predict(value(6)))["y"].tolist() == [[6, 6]]  # both answered
            await apoll(lambda: "late" not in stream._late, "the late answer to free the id")
            servicer.group = 1
            again = await stream.infer(value(7), request_id="late")
            assert (again.id, again.outputs["y"].tolist()) == ("late", [[7, 7]])

    asyncio.run(main())
    assert servicer.ids() == ["abc", "0", "late", "1", "late"]


# --- outputs in shared memory ----------------------------------------------------------------------------------


@needs_shm
def test_a_calls_output_placed_in_shared_memory_is_read_back_from_the_region(scripted: tuple[str, Scripted]) -> None:
    target, servicer = scripted
    x = {"x": np.arange(6, dtype=np.float32).reshape(2, 3)}
    with Client(target) as client, client.shared_memory(64) as region, client.stream("m", outputs=["y"]) as stream:
        place = region.output("y", offset=16, byte_size=32)
        result = stream.infer(x, outputs=[place], request_id="placed")
        assert result.outputs["y"].tolist() == x["x"].tolist() and result.outputs["y"].dtype == np.float32
        assert Path("/dev/shm", region.key[1:]).read_bytes()[16:40] == x["x"].tobytes()  # written there by the fake
        at_start = stream.predict(x, outputs=[region.output("y")])["y"]
        in_message = stream.predict(x)["y"]  # the stream's own outputs again: the bytes in the answer
    assert at_start.tolist() == in_message.tolist() == x["x"].tolist()
    placed, first, default = servicer.received
    unary = build_infer_request("m", x, None, [place], "placed", timeout=30.0)
    assert wire_bytes(placed) == wire_bytes(unary)  # the parameters unary infer sends for the same place
    params = placed.outputs[0].parameters
    assert params["shared_memory_region"].string_param == region.name
    assert (params["shared_memory_byte_size"].int64_param, params["shared_memory_offset"].int64_param) == (32, 16)
    assert "shared_memory_offset" not in first.outputs[0].parameters  # offset 0 left out, as on unary calls
    assert first.outputs[0].parameters["shared_memory_byte_size"].int64_param == 64
    assert [o.name for o in default.outputs] == ["y"] and not default.outputs[0].parameters


@needs_shm
def test_concurrent_calls_each_read_their_own_place(scripted: tuple[str, Scripted]) -> None:
    target, servicer = scripted
    servicer.group = 4  # all four answered together, last first
    with Client(target) as client, client.shared_memory(4 * 16) as region, client.stream("m") as stream:
        barrier = threading.Barrier(4)

        def call(i: int) -> np.ndarray:
            barrier.wait(timeout=10)
            return stream.predict(value(i), outputs=[region.output("y", offset=16 * i, byte_size=16)])["y"]

        with futures.ThreadPoolExecutor(4) as pool:
            got = list(pool.map(call, range(4)))
    assert [g.tolist() for g in got] == [[[i, i]] for i in range(4)]


@needs_shm
def test_async_a_calls_output_in_shared_memory(scripted: tuple[str, Scripted]) -> None:
    target, servicer = scripted
    servicer.group = 2

    async def main() -> list[Any]:
        async with AsyncClient(target) as aclient, await aclient.shared_memory(32) as region, aclient.stream("m") as s:
            places = [region.output("y", offset=16 * i, byte_size=16) for i in range(2)]
            return await asyncio.gather(*(s.predict(value(i), outputs=[places[i]]) for i in range(2)))

    assert [r["y"].tolist() for r in asyncio.run(main())] == [[[0, 0]], [[1, 1]]]
    assert all("shared_memory_region" in r.outputs[0].parameters for r in servicer.received)
