"""Triton's system shared memory extension against a real `kerve serve`, driven by tritonclient and its own
`tritonclient.utils.shared_memory` helpers, the way a Triton user on the server's host does it."""

from __future__ import annotations

import os
import queue

import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no POSIX shared memory (/dev/shm) here"),
]

IMAGES = np.random.default_rng(3).random((3, 8, 8, 1), dtype=np.float32)


@pytest.fixture
def client(server: str):
    client = triton.InferenceServerClient(server)
    yield client
    client.unregister_system_shared_memory()
    client.close()


@pytest.fixture
def region(client):  # noqa: ANN001, ANN201 - returns a callable
    """Make a shared memory object and register it with the server under a name; destroyed after the test."""
    handles = []

    def make(name: str, byte_size: int):  # noqa: ANN202
        key = f"/kerve-test-{os.getpid()}-{name}"
        handle = shm.create_shared_memory_region(name, key, byte_size)
        handles.append(handle)
        client.register_system_shared_memory(name, key, byte_size)
        return handle

    yield make
    for handle in handles:
        shm.destroy_shared_memory_region(handle)


def test_inputs_and_outputs_through_shared_memory_match_plain_requests(client, region, in_process) -> None:
    expected = in_process("cnn", {"image": IMAGES})
    (output_name,) = expected
    out_size = expected[output_name].nbytes
    inputs_handle = region("inputs", 4096 + IMAGES.nbytes)
    shm.set_shared_memory_region(inputs_handle, [IMAGES], offset=4096)
    outputs_handle = region("outputs", 8 + out_size)

    image = triton.InferInput("image", list(IMAGES.shape), "FP32")
    image.set_shared_memory("inputs", IMAGES.nbytes, offset=4096)
    wanted = triton.InferRequestedOutput(output_name)
    wanted.set_shared_memory("outputs", out_size, offset=8)
    result = client.infer("cnn", [image], outputs=[wanted])

    tensor = result.get_output(output_name)
    assert tensor.datatype == "FP32" and list(tensor.shape) == list(expected[output_name].shape)
    got = shm.get_contents_as_numpy(outputs_handle, np.float32, list(tensor.shape), offset=8)
    assert got.tobytes() == expected[output_name].tobytes()  # bit-identical to the signature called in process

    status = client.get_system_shared_memory_status()
    assert {(r.name, r.byte_size) for r in status.regions.values()} == {
        ("inputs", 4096 + IMAGES.nbytes),
        ("outputs", 8 + out_size),
    }
    assert "system_shared_memory" in client.get_server_metadata().extensions


def test_a_streamed_request_reads_its_input_from_shared_memory(client, region, in_process) -> None:
    expected = in_process("cnn", {"image": IMAGES})
    handle = region("streamed", IMAGES.nbytes)
    shm.set_shared_memory_region(handle, [IMAGES])
    image = triton.InferInput("image", list(IMAGES.shape), "FP32")
    image.set_shared_memory("streamed", IMAGES.nbytes)
    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        client.async_stream_infer("cnn", [image])
        result, error = answers.get(timeout=60)
    finally:
        client.stop_stream()
    assert error is None
    for name, array in expected.items():
        assert result.as_numpy(name).tobytes() == array.tobytes()


def test_shared_memory_errors(client, region, in_process) -> None:
    (output_name,) = in_process("cnn", {"image": IMAGES})
    region("small", 64)
    with pytest.raises(InferenceServerException, match="already registered") as info:
        client.register_system_shared_memory("small", f"/kerve-test-{os.getpid()}-small", 64)
    assert info.value.status() == "StatusCode.ALREADY_EXISTS"
    with pytest.raises(InferenceServerException, match="no shared memory object") as info:
        client.register_system_shared_memory("ghost", "/kerve-test-no-such-object", 64)
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"

    image = triton.InferInput("image", list(IMAGES.shape), "FP32")
    image.set_shared_memory("nowhere", IMAGES.nbytes)
    with pytest.raises(
        InferenceServerException, match="input 'image': shared memory region 'nowhere' is not regis"
    ) as info:
        client.infer("cnn", [image])
    assert info.value.status() == "StatusCode.NOT_FOUND"  # as Triton's "Unable to find shared memory region"
    image.set_shared_memory("small", IMAGES.nbytes)  # larger than the region
    with pytest.raises(InferenceServerException, match="outside shared memory region 'small' \\(64 bytes\\)"):
        client.infer("cnn", [image])

    image.set_data_from_numpy(IMAGES)
    wanted = triton.InferRequestedOutput(output_name)
    wanted.set_shared_memory("small", 64)  # 3 x 10 float32 need 120 bytes
    with pytest.raises(InferenceServerException, match="at least 120 bytes") as info:
        client.infer("cnn", [image], outputs=[wanted])
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"

    client.unregister_system_shared_memory("small")
    assert len(client.get_system_shared_memory_status().regions) == 0
    with pytest.raises(InferenceServerException, match="not registered") as info:
        client.get_system_shared_memory_status("small")
    assert info.value.status() == "StatusCode.NOT_FOUND"
    assert client.infer("cnn", [triton.InferInput("image", list(IMAGES.shape), "FP32").set_data_from_numpy(IMAGES)])


class _Aborted(Exception):
    pass


class _Context:
    """What a servicer method uses of grpc.aio's context when it fails a call."""

    async def abort(self, code, details: str) -> None:  # noqa: ANN001
        raise _Aborted(code, details)


def test_with_the_extension_off_its_rpcs_fail_and_metadata_leaves_it_out() -> None:
    import asyncio

    import grpc

    from kerve.protos import grpc_service_pb2 as pb
    from kerve.server.v2_service import V2Servicer

    servicer = V2Servicer(None, None, lambda: True, shared_memory=None)  # type: ignore[arg-type]
    calls = [
        servicer.SystemSharedMemoryRegister(
            pb.SystemSharedMemoryRegisterRequest(name="r", key="/k", byte_size=8), _Context()
        ),
        servicer.SystemSharedMemoryStatus(pb.SystemSharedMemoryStatusRequest(), _Context()),
        servicer.SystemSharedMemoryUnregister(pb.SystemSharedMemoryUnregisterRequest(), _Context()),
    ]
    for call in calls:
        with pytest.raises(_Aborted) as info:
            asyncio.run(call)
        assert info.value.args == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "system shared memory is off on this server (--no-shared-memory)",
        )
    metadata = asyncio.run(servicer.ServerMetadata(pb.ServerMetadataRequest(), _Context()))
    assert "system_shared_memory" not in metadata.extensions and "classification" in metadata.extensions
