"""System shared memory (server/shared_memory.py) and the V2 codec's use of it: regions, in-place inputs, outputs
written into a region. The registry is rooted at a temporary directory standing in for /dev/shm."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest

from kerve import codecs
from kerve.protos import grpc_service_pb2 as pb
from kerve.server.errors import ErrorCode, ServingError
from kerve.server.shared_memory import SystemSharedMemory
from kerve.server.types import InferResponse
from kerve.server.v2_codec import decode_request, encode_response, output_requests


@pytest.fixture
def shm(tmp_path: Path) -> SystemSharedMemory:
    (tmp_path / "data").write_bytes(bytes(10_000))
    registry = SystemSharedMemory(root=tmp_path)
    yield registry
    registry.close()


def code_of(call) -> tuple[ErrorCode, str]:  # noqa: ANN001
    with pytest.raises(ServingError) as info:
        call()
    return info.value.code, info.value.message


def test_register_status_unregister(shm: SystemSharedMemory) -> None:
    shm.register("a", "/data", 5000, 100)
    shm.register("b", "data", 0, 16)
    assert [(r.name, r.key, r.offset, r.byte_size) for r in shm.status()] == [
        ("a", "/data", 5000, 100),
        ("b", "data", 0, 16),
    ]
    assert shm.status("a")[0].byte_size == 100
    shm.unregister("a")
    assert [r.name for r in shm.status()] == ["b"]
    shm.unregister("nope")  # as Triton: not an error
    shm.unregister("")  # every region
    assert shm.status() == []
    assert code_of(lambda: shm.status("b")) == (ErrorCode.NOT_FOUND, "shared memory region 'b' is not registered")


def test_bad_registrations_are_refused(shm: SystemSharedMemory) -> None:
    shm.register("a", "/data", 0, 8)
    assert code_of(lambda: shm.register("a", "/data", 0, 8))[0] is ErrorCode.ALREADY_EXISTS
    for key in ("/../etc/passwd", "/a/b", "", "/.."):
        assert code_of(lambda key=key: shm.register("k", key, 0, 8))[0] is ErrorCode.INVALID_ARGUMENT
    assert "no shared memory object '/missing'" in code_of(lambda: shm.register("m", "/missing", 0, 8))[1]
    assert "past the end of '/data' (10000 bytes)" in code_of(lambda: shm.register("p", "/data", 9999, 2))[1]
    assert code_of(lambda: shm.register("", "/data", 0, 8))[0] is ErrorCode.INVALID_ARGUMENT
    assert code_of(lambda: shm.register("z", "/data", 0, 0))[0] is ErrorCode.INVALID_ARGUMENT


def test_views_see_the_objects_bytes_at_unaligned_offsets(tmp_path: Path, shm: SystemSharedMemory) -> None:
    path = tmp_path / "data"
    shm.register("r", "/data", 4099, 64)  # not on a page boundary
    shm.view("input 'x'", "r", 8, 4)[:] = b"abcd"
    assert path.read_bytes()[4107:4111] == b"abcd"  # written through to the object
    with open(path, "r+b") as f:
        f.seek(4099)
        f.write(b"wxyz")
    assert bytes(shm.view("input 'x'", "r", 0, 4)) == b"wxyz"
    code, message = code_of(lambda: shm.view("input 'x'", "r", 60, 8))
    assert code is ErrorCode.INVALID_ARGUMENT
    assert message == "input 'x': offset 60 + byte_size 8 is outside shared memory region 'r' (64 bytes)"
    unknown = code_of(lambda: shm.view("input 'x'", "q", 0, 1))
    assert unknown == (ErrorCode.NOT_FOUND, "input 'x': shared memory region 'q' is not registered")


def test_unregistering_a_region_that_arrays_still_view_keeps_them_valid(shm: SystemSharedMemory) -> None:
    shm.register("r", "/data", 0, 16)
    shm.view("x", "r", 0, 8)[:] = np.arange(2, dtype=np.float32).tobytes()
    array = np.frombuffer(shm.view("x", "r", 0, 8), dtype=np.float32)  # a request still in flight
    shm.unregister("r")
    assert array.tolist() == [0.0, 1.0]


def with_shm(tensor, region: str, byte_size: int, offset: int | None = None) -> None:  # noqa: ANN001
    tensor.parameters["shared_memory_region"].string_param = region
    tensor.parameters["shared_memory_byte_size"].int64_param = byte_size
    if offset is not None:
        tensor.parameters["shared_memory_offset"].int64_param = offset


def test_inputs_in_shared_memory_mix_with_raw_ones(shm: SystemSharedMemory) -> None:
    shm.register("in", "/data", 0, 1000)
    image = np.arange(6, dtype=np.float32).reshape(2, 3)
    shm.view("i", "in", 100, image.nbytes)[:] = image.tobytes()
    message = pb.ModelInferRequest(model_name="m")
    with_shm(message.inputs.add(name="image", datatype="FP32", shape=[2, 3]), "in", image.nbytes, 100)
    message.inputs.add(name="ids", datatype="INT64", shape=[2])
    message.raw_input_contents.append(np.array([7, 8], dtype=np.int64).tobytes())  # the one entry: for ids
    request = decode_request(message, shm=shm)
    np.testing.assert_array_equal(request.inputs["image"], image)
    assert request.inputs["ids"].tolist() == [7, 8]


def test_input_shared_memory_errors_name_the_input(shm: SystemSharedMemory) -> None:
    shm.register("in", "/data", 0, 64)

    def decode(edit, raw: int = 0, server: SystemSharedMemory | None = shm) -> tuple[ErrorCode, str]:  # noqa: ANN001
        message = pb.ModelInferRequest(model_name="m")
        tensor = message.inputs.add(name="x", datatype="FP32", shape=[4])
        with_shm(tensor, "in", 16)
        edit(tensor)
        message.raw_input_contents.extend([bytes(16)] * raw)
        return code_of(lambda: decode_request(message, shm=server))

    assert decode(lambda t: None, raw=1)[1].startswith(
        "raw_input_contents has 1 entries but the request has 0 inputs outside shared memory"
    )
    assert decode(lambda t: t.parameters["shared_memory_byte_size"].MergeFrom(pb.InferParameter(int64_param=12)))[
        1
    ] == ("input 'x': raw content has 12 bytes, expected 16 for shape [4] of FP32")
    assert decode(lambda t: t.parameters["shared_memory_region"].MergeFrom(pb.InferParameter(string_param="no")))[
        1
    ] == ("input 'x': shared memory region 'no' is not registered")
    assert decode(lambda t: t.parameters.pop("shared_memory_byte_size"))[1] == (
        "input 'x': shared_memory_byte_size is required with shared_memory_region"
    )
    assert "set both contents and a shared memory region" in decode(lambda t: t.contents.fp32_contents.extend([1.0]))[1]
    assert decode(lambda t: None, server=None)[1] == "input 'x': this server does not take tensors in shared memory"


def test_outputs_are_written_into_their_region_and_left_out_of_the_message(shm: SystemSharedMemory) -> None:
    shm.register("out", "/data", 2000, 64)
    message = pb.ModelInferRequest(model_name="m")
    with_shm(message.outputs.add(name="probs"), "out", 32, 8)
    message.outputs.add(name="other")
    outputs = output_requests(message, shm)
    assert outputs is not None and set(outputs.shared_memory) == {"probs"}
    probs = np.array([[0.25, 0.75]], dtype=np.float32)
    other = np.array([[1.5]], dtype=np.float32)
    answer = encode_response(InferResponse(model="m", version=1, outputs={"probs": probs, "other": other}), outputs)
    assert [(o.name, o.datatype, list(o.shape)) for o in answer.outputs] == [
        ("probs", "FP32", [1, 2]),
        ("other", "FP32", [1, 1]),
    ]
    assert list(answer.raw_output_contents) == [b"", other.tobytes()]  # positions kept, as clients index them
    assert np.frombuffer(shm.view("o", "out", 8, 8), dtype=np.float32).tolist() == [0.25, 0.75]


def test_bytes_outputs_are_length_prefixed_and_a_region_too_small_is_invalid(shm: SystemSharedMemory) -> None:
    shm.register("out", "/data", 0, 64)
    message = pb.ModelInferRequest(model_name="m")
    with_shm(message.outputs.add(name="text"), "out", 20)
    text = np.array([b"abc", b"de"], dtype=object)
    encode_response(InferResponse(model="m", version=1, outputs={"text": text}), output_requests(message, shm))
    assert codecs.decode_raw(bytes(shm.view("o", "out", 0, 13)), "BYTES", [2]).tolist() == [b"abc", b"de"]
    small = pb.ModelInferRequest(model_name="m")
    with_shm(small.outputs.add(name="text"), "out", 12)
    response = InferResponse(model="m", version=1, outputs={"text": text})
    code, message_text = code_of(lambda: encode_response(response, output_requests(small, shm)))
    assert code is ErrorCode.INVALID_ARGUMENT
    assert message_text == (
        "output 'text': the shared memory given for it (12 bytes) should be at least 13 bytes to hold the result"
    )


def test_plain_outputs_need_no_output_requests() -> None:
    message = pb.ModelInferRequest(model_name="m")
    assert output_requests(message) is None
    message.outputs.add(name="probs")
    assert output_requests(message) is None


def test_a_shrunk_object_is_invalid_not_a_crash_and_inputs_are_copied_out(
    tmp_path: Path, shm: SystemSharedMemory
) -> None:
    shm.register("in", "/data", 4096, 64)
    message = pb.ModelInferRequest(model_name="m")
    with_shm(message.inputs.add(name="x", datatype="FP32", shape=[4]), "in", 16)
    shm.view("x", "in", 0, 16)[:] = np.ones(4, dtype=np.float32).tobytes()
    request = decode_request(message, shm=shm)
    shm.view("x", "in", 0, 16)[:] = bytes(16)  # the client reuses its region while the request is queued
    assert request.inputs["x"].tolist() == [1.0] * 4  # copied when decoded

    out = pb.ModelInferRequest(model_name="m")
    with_shm(out.outputs.add(name="y"), "in", 16)
    outputs = output_requests(out, shm)
    with open(tmp_path / "data", "r+b") as f:
        f.truncate(4100)  # touching the lost pages would kill the server with SIGBUS
    shrunk = "shared memory object '/data' of region 'in' shrank to 4100 bytes"
    assert code_of(lambda: decode_request(message, shm=shm)) == (ErrorCode.INVALID_ARGUMENT, f"input 'x': {shrunk}")
    response = InferResponse(model="m", version=1, outputs={"y": np.zeros(4, np.float32)})
    assert code_of(lambda: encode_response(response, outputs)) == (ErrorCode.INVALID_ARGUMENT, f"output 'y': {shrunk}")


def test_the_number_of_regions_is_bounded(shm: SystemSharedMemory, monkeypatch: pytest.MonkeyPatch) -> None:
    from kerve.server import shared_memory

    monkeypatch.setattr(shared_memory, "MAX_REGIONS", 2)
    shm.register("a", "/data", 0, 8)
    shm.register("b", "/data", 8, 8)
    code, message = code_of(lambda: shm.register("c", "/data", 16, 8))
    assert code is ErrorCode.RESOURCE_EXHAUSTED and "2 shared memory regions are registered" in message
    shm.unregister("a")
    shm.register("c", "/data", 16, 8)


def test_a_region_dev_shm_cannot_hold_is_refused_not_left_to_sigbus(
    shm: SystemSharedMemory, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    code, message = code_of(lambda: shm.register("r", "/data", 0, 64))
    assert code is ErrorCode.RESOURCE_EXHAUSTED
    assert message == "shared memory region 'r': cannot reserve its 64 bytes: No space left on device"
    assert shm.status() == []  # nothing registered, its descriptor closed


def test_registering_reserves_the_regions_pages(shm: SystemSharedMemory, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(os, "posix_fallocate", lambda fd, offset, length: calls.append((offset, length)))
    shm.register("r", "/data", 4099, 64)
    assert calls == [(4099, 64)]
