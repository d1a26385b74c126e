"""Client and AsyncClient log settings and outputs in shared memory against a scripted in-process gRPC servicer (no
TensorFlow): what each call sends, and what it makes of the answer."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from helpers import SharedMemoryKeys, in_process_v2_server
from kerve.client import AsyncClient, Client, InvalidArgumentError
from kerve.protos import grpc_service_pb2 as pb
from kerve.protos import grpc_service_pb2_grpc as pb_grpc

X = np.arange(6, dtype=np.float32).reshape(2, 3)


class Scripted(SharedMemoryKeys, pb_grpc.GRPCInferenceServiceServicer):
    """Holds log settings as Triton's server does; echoes input 0 as output "y", into shared memory when asked."""

    def __init__(self) -> None:
        self.settings: dict[str, Any] = {"log_info": True, "log_verbose_level": 0, "log_format": "default"}
        self.log_requests: list[pb.LogSettingsRequest] = []
        super().__init__()

    def LogSettings(self, request: pb.LogSettingsRequest, context: Any) -> pb.LogSettingsResponse:
        self.log_requests.append(request)
        for key, value in request.settings.items():
            if key not in self.settings:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unknown log setting {key!r}")
            self.settings[key] = getattr(value, value.WhichOneof("parameter_choice"))
        response = pb.LogSettingsResponse()
        for key, current in self.settings.items():
            field = {bool: "bool_param", int: "uint32_param", str: "string_param"}[type(current)]
            setattr(response.settings[key], field, current)
        return response

    def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        tensor, raw = request.inputs[0], request.raw_input_contents[0]
        response = pb.ModelInferResponse(model_name=request.model_name, model_version="1", id=request.id)
        response.outputs.add(name="y", datatype=tensor.datatype, shape=tensor.shape)
        params = request.outputs[0].parameters if request.outputs else {}
        if "shared_memory_region" not in params:
            response.raw_output_contents.append(raw)
            return response
        size, offset = params["shared_memory_byte_size"].int64_param, params["shared_memory_offset"].int64_param
        if size < len(raw):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"output 'y': should be at least {len(raw)} bytes")
        key = self.keys[params["shared_memory_region"].string_param]
        with Path("/dev/shm", key.lstrip("/")).open("r+b") as shm:
            shm.seek(offset)
            shm.write(raw)
        response.raw_output_contents.append(b"")
        return response


@pytest.fixture
def scripted() -> Iterator[tuple[str, Scripted]]:
    servicer = Scripted()
    with in_process_v2_server(servicer, workers=2) as target:
        yield target, servicer


def test_log_settings_read_and_update(scripted: tuple[str, Scripted]) -> None:
    target, servicer = scripted
    with Client(target) as client:
        assert client.log_settings() == {"log_format": "default", "log_info": True, "log_verbose_level": 0}
        assert not servicer.log_requests[-1].settings  # reading sends no setting
        after = client.update_log_settings({"log_info": False, "log_verbose_level": 1})
        assert after == {"log_format": "default", "log_info": False, "log_verbose_level": 1}
        sent = servicer.log_requests[-1].settings
        assert sent["log_info"].WhichOneof("parameter_choice") == "bool_param"
        assert sent["log_verbose_level"].WhichOneof("parameter_choice") == "uint32_param"
        with pytest.raises(InvalidArgumentError, match="unknown log setting 'nope'"):
            client.update_log_settings({"nope": True})
        with pytest.raises(InvalidArgumentError, match="'log_verbose_level' takes an integer from 0"):
            client.update_log_settings({"log_verbose_level": -1})
        assert len(servicer.log_requests) == 3  # the negative level never left the client


def test_async_log_settings_read_and_update(scripted: tuple[str, Scripted]) -> None:
    target, servicer = scripted

    async def main() -> tuple[dict[str, Any], dict[str, Any]]:
        async with AsyncClient(target) as client:
            after = await client.update_log_settings({"log_format": "ISO8601"})
            return after, await client.log_settings()

    after, read = asyncio.run(main())
    assert after == read == {"log_format": "ISO8601", "log_info": True, "log_verbose_level": 0}
    assert servicer.log_requests[0].settings["log_format"].string_param == "ISO8601"


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="no POSIX shared memory (/dev/shm) here")
def test_an_output_in_shared_memory_comes_back_as_an_array(scripted: tuple[str, Scripted]) -> None:
    target, _ = scripted
    with Client(target) as client, client.shared_memory(64) as region:
        result = client.infer("m", {"x": X}, outputs=[region.output("y", offset=8)])
        assert result.outputs["y"].dtype == np.float32 and result.outputs["y"].tobytes() == X.tobytes()
        assert client.predict("m", {"x": X + 1}, outputs=[region.output("y")])["y"].tolist() == (X + 1).tolist()
        with pytest.raises(InvalidArgumentError, match="output 'y': should be at least 24 bytes"):
            client.infer("m", {"x": X}, outputs=[region.output("y", byte_size=23)])


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="no POSIX shared memory (/dev/shm) here")
def test_async_an_output_in_shared_memory_comes_back_as_an_array(scripted: tuple[str, Scripted]) -> None:
    target, _ = scripted

    async def main() -> np.ndarray:
        async with AsyncClient(target) as client, await client.shared_memory(64) as region:
            return (await client.predict("m", {"x": X}, outputs=[region.output("y", offset=40)]))["y"]

    assert asyncio.run(main()).tobytes() == X.tobytes()
