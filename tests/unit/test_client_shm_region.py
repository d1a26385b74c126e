"""kerve.client's shared memory region on its own (no server): what `put` writes and what it hands the request."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kerve import codecs
from kerve.client import InvalidArgumentError, SharedMemoryRegion, SharedTensor
from kerve.client.wire import build_infer_request

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
