"""Triton's request priority through the SDK, against a scripted in-process gRPC servicer (no TensorFlow): the
`priority` parameter each call puts on the wire (unary and stream, sync and async), none at the default, and bad
levels refused before anything is sent."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from helpers import in_process_v2_server
from kerve.client import AsyncClient, Client, InvalidArgumentError
from kerve.client.wire import CLASSIFICATION, PRIORITY, build_infer_request
from kerve.protos import grpc_service_pb2 as pb
from kerve.protos import grpc_service_pb2_grpc as pb_grpc

X = {"x": np.arange(6, dtype=np.float32).reshape(2, 3)}
BAD = [-1, np.int64(-3), True, False, 1.0, 2.5, "1", None, np.bool_(True), 2**63]


def sent_priority(request: pb.ModelInferRequest) -> int | None:
    """The request's priority parameter as the server reads it; None when it was not sent."""
    if PRIORITY not in request.parameters:  # `in` first: indexing a protobuf map would add the key
        return None
    param = request.parameters[PRIORITY]
    assert param.WhichOneof("parameter_choice") == "int64_param"
    return param.int64_param


def _answer(request: pb.ModelInferRequest) -> pb.ModelInferResponse:
    """Input 0 echoed as output "y", or one "<score>:<index>" label when "y" is asked for as classes."""
    response = pb.ModelInferResponse(model_name=request.model_name, model_version="1", id=request.id)
    if request.outputs and CLASSIFICATION in request.outputs[0].parameters:
        label = b"0.5:1"
        response.outputs.add(name="y", datatype="BYTES", shape=[1, 1])
        response.raw_output_contents.append(struct.pack("<I", len(label)) + label)
        return response
    tensor = request.inputs[0]
    response.outputs.add(name="y", datatype=tensor.datatype, shape=tensor.shape)
    response.raw_output_contents.append(request.raw_input_contents[0])
    return response


class Recording(pb_grpc.GRPCInferenceServiceServicer):
    """Keeps every message it gets (metadata requests, unary requests, stream messages), in order."""

    def __init__(self) -> None:
        self.received: list[Any] = []

    def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        self.received.append(request)
        response = pb.ModelMetadataResponse(name=request.name, versions=["1"], platform="tensorflow_savedmodel")
        response.outputs.add(name="y", datatype="FP32", shape=[-1, 3])
        return response

    def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        self.received.append(request)
        return _answer(request)

    def ModelStreamInfer(self, request_iterator: Iterator[pb.ModelInferRequest], context: Any) -> Any:
        for request in request_iterator:
            self.received.append(request)
            yield pb.ModelStreamInferResponse(infer_response=_answer(request))

    def infers(self) -> list[pb.ModelInferRequest]:
        return [r for r in self.received if isinstance(r, pb.ModelInferRequest)]


@pytest.fixture
def recording() -> Iterator[tuple[str, Recording]]:
    servicer = Recording()
    with in_process_v2_server(servicer, workers=4) as target:
        yield target, servicer


# --- the builder ----------------------------------------------------------------------------------------------


def test_the_builder_sends_priority_only_when_not_zero() -> None:
    assert sent_priority(build_infer_request("m", X, priority=2)) == 2
    assert sent_priority(build_infer_request("m", X, priority=np.int64(1))) == 1
    assert sent_priority(build_infer_request("m", X, priority=2**63 - 1)) == 2**63 - 1
    plain = build_infer_request("m", X, outputs=["y"], request_id="7")
    zero = build_infer_request("m", X, outputs=["y"], request_id="7", priority=0)
    assert not zero.parameters and sent_priority(zero) is None
    assert zero.SerializeToString(deterministic=True) == plain.SerializeToString(deterministic=True)
    both = build_infer_request("m", X, priority=3, timeout=0.5)  # a stream message: both schedule parameters
    assert sent_priority(both) == 3 and both.parameters["timeout"].int64_param == 500_000


@pytest.mark.parametrize("priority", BAD)
def test_the_builder_refuses_a_level_the_server_would_not_take(priority: Any) -> None:
    with pytest.raises(InvalidArgumentError, match="priority must be an integer >= 0"):
        build_infer_request("m", X, priority=priority)


# --- unary calls ----------------------------------------------------------------------------------------------


def test_unary_calls_carry_their_priority(recording: tuple[str, Recording]) -> None:
    target, servicer = recording
    with Client(target) as client:
        assert client.infer("m", X, priority=1).outputs["y"].tolist() == X["x"].tolist()
        client.infer("m", X)
        client.predict("m", X, priority=2)
        client.predict("m", X, None, None, 5)  # positional arguments mean what they did
        top = client.classify("m", X, priority=np.int64(3))  # after a metadata call for the output's name
        assert top.indices.tolist() == [[1]]
        client.classify("m", X, output="y")
    assert [sent_priority(r) for r in servicer.infers()] == [1, None, 2, None, 3, None]
    assert all(not r.parameters for r in servicer.infers() if sent_priority(r) is None)  # nothing else on them


def test_async_unary_calls_carry_their_priority(recording: tuple[str, Recording]) -> None:
    target, servicer = recording

    async def main() -> None:
        async with AsyncClient(target) as client:
            await client.infer("m", X, priority=2)
            await client.infer("m", X)
            await client.predict("m", X, priority=1)
            await client.classify("m", X, priority=4)
            await client.classify("m", X)

    asyncio.run(main())
    assert [sent_priority(r) for r in servicer.infers()] == [2, None, 1, 4, None]
    assert sum(isinstance(r, pb.ModelMetadataRequest) for r in servicer.received) == 2


@pytest.mark.parametrize("priority", [-1, True, 1.0])
def test_a_bad_priority_sends_nothing(recording: tuple[str, Recording], priority: Any) -> None:
    target, servicer = recording
    with Client(target) as client:
        for call in (client.infer, client.predict, client.classify):  # classify: not even its metadata call
            with pytest.raises(InvalidArgumentError, match="priority must be an integer >= 0"):
                call("m", X, priority=priority)

    async def main() -> None:
        async with AsyncClient(target) as aclient:
            for call in (aclient.infer, aclient.predict, aclient.classify):
                with pytest.raises(InvalidArgumentError, match="priority must be an integer >= 0"):
                    await call("m", X, priority=priority)

    asyncio.run(main())
    assert servicer.received == []


# --- streams --------------------------------------------------------------------------------------------------


def test_each_stream_call_carries_its_own_priority(recording: tuple[str, Recording]) -> None:
    target, servicer = recording
    with Client(target) as client, client.stream("m", timeout=7) as stream:
        stream.infer(X, priority=1)
        stream.infer(X)
        assert stream.predict(X, priority=2)["y"].tolist() == X["x"].tolist()
        for bad in (-1, True, "2"):
            with pytest.raises(InvalidArgumentError, match="priority must be an integer >= 0"):
                stream.infer(X, priority=bad)
            with pytest.raises(InvalidArgumentError):
                stream.predict(X, priority=bad)
        assert not stream.closed  # refused before it reached the stream, which goes on
        stream.infer(X, 0.5)
    sent = servicer.infers()
    assert [sent_priority(r) for r in sent] == [1, None, 2, None]
    assert [r.parameters["timeout"].int64_param for r in sent] == [7_000_000] * 3 + [500_000]
    both, alone = {"timeout", "priority"}, {"timeout"}
    assert [set(r.parameters) for r in sent] == [both, alone, both, alone]


def test_each_async_stream_call_carries_its_own_priority(recording: tuple[str, Recording]) -> None:
    target, servicer = recording

    async def main() -> None:
        async with AsyncClient(target) as client, client.stream("m", timeout=3) as stream:
            await stream.infer(X, priority=2)
            await stream.predict(X)
            await stream.predict(X, priority=np.int32(1))
            for bad in (-2, False, 0.0):
                with pytest.raises(InvalidArgumentError, match="priority must be an integer >= 0"):
                    await stream.infer(X, priority=bad)
                with pytest.raises(InvalidArgumentError):
                    await stream.predict(X, priority=bad)
            assert not stream.closed and stream.pending == 0
            await stream.infer(X)

    asyncio.run(main())
    assert [sent_priority(r) for r in servicer.infers()] == [2, None, 1, None]
