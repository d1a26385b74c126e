"""kerve.client's shared memory region on its own (no server): what `put` writes and what it hands the request, how
an output is placed in it and read back from it."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest

from kerve import codecs
from kerve.client import (
    InferStream,
    InvalidArgumentError,
    ResourceExhaustedError,
    ServerError,
    SharedMemoryRegion,
    SharedTensor,
)
from kerve.client.wire import build_infer_request, parse_infer_response, shared_outputs
from kerve.protos import grpc_service_pb2 as pb

pytestmark = pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="no POSIX shared memory (/dev/shm) here")


@pytest.fixture
def region():  # noqa: ANN201
    region = SharedMemoryRegion(64, name="r")
    yield region
    region.release()


def test_put_writes_numbers_little_endian_and_strings_length_prefixed(region: SharedMemoryRegion) -> None:
    path = Path("/dev/shm", region.key[1:])
    numbers = region.put(np.array([1.5, -2.0], dtype=">f4"), offset=8)  # big-endian in, V2's little-endian out
    assert numbers == SharedTensor("r", 8, 8, "FP32", (2,))
    assert np.frombuffer(path.read_bytes()[8:16], dtype="<f4").tolist() == [1.5, -2.0]
    words = region.put(np.array(["ab", "c"]), offset=20)
    assert (words.datatype, words.byte_size, words.shape) == ("BYTES", 11, (2,))
    assert codecs.decode_raw(path.read_bytes()[20:31], "BYTES", [2]).tolist() == [b"ab", b"c"]


def test_a_shared_tensor_is_sent_as_its_region_not_its_bytes(region: SharedMemoryRegion) -> None:
    request = build_infer_request("m", {"x": region.put(np.zeros((2, 3), np.float32), offset=4), "y": np.ones(2)})
    x, y = request.inputs
    assert (x.name, x.datatype, list(x.shape)) == ("x", "FP32", [2, 3])
    assert x.parameters["shared_memory_region"].string_param == "r"
    assert x.parameters["shared_memory_byte_size"].int64_param == 24
    assert x.parameters["shared_memory_offset"].int64_param == 4
    assert y.name == "y" and not y.parameters
    assert len(request.raw_input_contents) == 1  # only y's: an input in shared memory has no raw entry


def test_bad_puts_and_release(region: SharedMemoryRegion) -> None:
    with pytest.raises(InvalidArgumentError, match="do not fit"):
        region.put(np.zeros(17, np.float32))
    with pytest.raises(InvalidArgumentError, match="do not fit"):
        region.put(np.zeros(1, np.float32), offset=-1)
    with pytest.raises(InvalidArgumentError):
        region.put(np.zeros(2, np.complex64))
    path = Path("/dev/shm", region.key[1:])
    region.release()
    assert not path.exists() and region.closed
    with pytest.raises(InvalidArgumentError, match="is closed"):
        region.put(np.zeros(1, np.float32))
    with pytest.raises(InvalidArgumentError, match="positive byte size"):
        SharedMemoryRegion(0)


# --- outputs placed in a region -------------------------------------------------------------------------------


def served(region: SharedMemoryRegion, offset: int, array: np.ndarray) -> None:
    """Write `array`'s raw V2 bytes into the region's object at `offset`, as the server does through its mapping."""
    with Path("/dev/shm", region.key[1:]).open("r+b") as shm:
        shm.seek(offset)
        shm.write(codecs.encode_raw(array))


def answer(*outputs: tuple[str, str, tuple[int, ...], bytes]) -> pb.ModelInferResponse:
    """A response listing each output (name, datatype, shape) with its raw entry (b"": written to shared memory)."""
    response = pb.ModelInferResponse(model_name="m", model_version="1", id="7")
    for name, datatype, shape, raw in outputs:
        response.outputs.add(name=name, datatype=datatype, shape=list(shape))
        response.raw_output_contents.append(raw)
    return response


def test_an_output_place_is_requested_with_triton_parameters(region: SharedMemoryRegion) -> None:
    at_8 = region.output("y", offset=8, byte_size=16)
    assert (at_8.name, at_8.region, at_8.offset, at_8.byte_size) == ("y", "r", 8, 16)
    rest = region.output("z")  # the whole region by default
    assert (rest.offset, rest.byte_size) == (0, 64)
    request = build_infer_request("m", {"x": np.zeros(2)}, outputs=["plain", at_8, rest], class_counts={"z": 2})
    plain, y, z = request.outputs
    assert (plain.name, dict(plain.parameters)) == ("plain", {})
    assert y.parameters["shared_memory_region"].string_param == "r"
    assert y.parameters["shared_memory_byte_size"].int64_param == 16
    assert y.parameters["shared_memory_offset"].int64_param == 8
    assert z.parameters["shared_memory_byte_size"].int64_param == 64
    assert "shared_memory_offset" not in z.parameters  # 0 is the default: left out, as for inputs
    assert z.parameters["classification"].int64_param == 2  # classes written into the region as BYTES


@pytest.mark.parametrize(
    ("offset", "byte_size"), [(60, 8), (-1, 4), (0, -1), (65, None), (True, 4), (0, 1.5), ("0", 4), ("0", None)]
)
def test_an_output_place_must_lie_in_the_region(region: SharedMemoryRegion, offset: object, byte_size: object) -> None:
    with pytest.raises(InvalidArgumentError, match="output 'y': byte_size .* is not within shared memory region 'r'"):
        region.output("y", offset=offset, byte_size=byte_size)  # type: ignore[arg-type]


def test_an_output_place_needs_a_name_and_an_open_region(region: SharedMemoryRegion) -> None:
    with pytest.raises(InvalidArgumentError, match="needs a name"):
        region.output("")
    place = region.output("y")
    region.release()
    with pytest.raises(InvalidArgumentError, match="is closed"):
        region.output("y")
    with pytest.raises(
        InvalidArgumentError, match="output 'y': shared memory region 'r' was closed before it was read"
    ):
        parse_infer_response(answer(("y", "FP32", (1,), b"")), shared_outputs([place]))


def test_an_output_is_read_back_from_its_place_as_a_copy(region: SharedMemoryRegion) -> None:
    numbers = np.arange(6, dtype=np.float32).reshape(2, 3)
    served(region, 8, numbers)
    words = np.array([b"ab", b"", b"xyz"], dtype=object)
    served(region, 40, words)  # 3 * 4 + 5 = 17 bytes of a 24-byte place: BYTES are walked, not sized by the place
    places = shared_outputs([region.output("y", offset=8, byte_size=32), region.output("w", offset=40), "plain"])
    extra = np.array([1, 2], dtype=np.int64)
    result = parse_infer_response(
        answer(("y", "FP32", (2, 3), b""), ("w", "BYTES", (3,), b""), ("plain", "INT64", (2,), extra.tobytes())),
        places,
    )
    assert (result.model_name, result.model_version, result.id) == ("m", "1", "7")
    y = result.outputs["y"]
    assert y.dtype == np.float32 and y.tobytes() == numbers.tobytes()
    assert result.outputs["w"].tolist() == [b"ab", b"", b"xyz"]
    assert result.outputs["plain"].tolist() == [1, 2]
    served(region, 8, numbers + 100)  # the region reused by a later call: an earlier result does not change
    assert y.tobytes() == numbers.tobytes() and y.flags.writeable
    region.release()  # and no view is left to keep the mapping open (mmap would raise BufferError)


def test_bytes_sent_in_the_response_win_over_the_region(region: SharedMemoryRegion) -> None:
    """A server that ignores the placement answers in the message; the region then holds nothing of this call."""
    served(region, 0, np.zeros(2, np.float32))
    sent = np.array([3.0, 4.0], np.float32)
    result = parse_infer_response(answer(("y", "FP32", (2,), sent.tobytes())), shared_outputs([region.output("y")]))
    assert result.outputs["y"].tolist() == [3.0, 4.0]


@pytest.mark.parametrize(
    ("datatype", "shape", "message"),
    [
        ("FP32", (5,), r"FP32 \[5\] takes 20 bytes, more than the 16 bytes placed for it in shared memory region 'r'"),
        ("BYTES", (2,), r"BYTES \[2\] takes at least 20 bytes, more than the 16 bytes placed"),
        ("FP33", (1,), "unsupported datatype 'FP33'"),
        ("FP32", (-1,), r"shape \[-1\] has a negative dimension"),
    ],
)
def test_an_answer_that_does_not_fit_its_place_is_a_server_error(
    region: SharedMemoryRegion, datatype: str, shape: tuple[int, ...], message: str
) -> None:
    served(region, 0, np.array([b"0123456789ab"], dtype=object))  # fills the 16 bytes: no room for a 2nd
    with pytest.raises(ServerError, match=f"output 'y': {message}"):
        parse_infer_response(answer(("y", datatype, shape, b"")), shared_outputs([region.output("y", byte_size=16)]))


def test_an_output_placed_twice_is_refused(region: SharedMemoryRegion) -> None:
    with pytest.raises(InvalidArgumentError, match="output 'y' is requested more than once"):
        build_infer_request("m", {"x": np.zeros(1)}, outputs=["y", region.output("y")])
    with pytest.raises(InvalidArgumentError, match="output 'y' is requested more than once"):
        shared_outputs([region.output("y"), region.output("y", offset=32)])


def test_a_stream_refuses_outputs_in_shared_memory(region: SharedMemoryRegion) -> None:
    """Its calls run concurrently with fixed outputs: all of them would write one place (a call places its own)."""
    with pytest.raises(InvalidArgumentError, match="place outputs in shared memory per call"):
        InferStream(object(), "m", outputs=[region.output("y")], timeout=1.0)  # type: ignore[list-item]


def test_a_region_dev_shm_cannot_hold_is_a_typed_error_and_leaves_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """A sparse object would SIGBUS the process at the first write past /dev/shm's room: reserve or refuse."""
    before = set(Path("/dev/shm").iterdir())

    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(ResourceExhaustedError, match="cannot reserve 4096 bytes of shared memory"):
        SharedMemoryRegion(4096)
    assert set(Path("/dev/shm").iterdir()) == before
