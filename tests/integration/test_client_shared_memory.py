"""The SDK's shared memory inputs against a real `kerve serve` on this host: regions made, registered, used by
unary calls and streams, unregistered and removed."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import numpy as np
import pytest

from kerve.client import AsyncClient, Client, InvalidArgumentError, SharedTensor
from kerve.protos import grpc_service_pb2 as pb
from kerve.protos import grpc_service_pb2_grpc as pb_grpc

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="no POSIX shared memory (/dev/shm) here"),
]

IMAGES = np.random.default_rng(8).random((4, 8, 8, 1), dtype=np.float32)


def registered(target: str) -> dict[str, pb.SystemSharedMemoryStatusResponse.RegionStatus]:
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        return dict(stub.SystemSharedMemoryStatus(pb.SystemSharedMemoryStatusRequest(), timeout=30).regions)


def test_inputs_in_a_region_give_what_the_same_inputs_in_the_message_give(server: str) -> None:
    with Client(server) as client:
        expected = client.predict("cnn", {"image": IMAGES})["output_0"]
        with client.shared_memory(2 * IMAGES.nbytes, name="sdk-inputs") as region:
            status = registered(server)["sdk-inputs"]
            assert (status.key, status.byte_size) == (region.key, 2 * IMAGES.nbytes)
            assert Path("/dev/shm", region.key[1:]).exists()
            tensor = region.put(IMAGES, offset=IMAGES.nbytes)
            assert tensor == SharedTensor("sdk-inputs", IMAGES.nbytes, IMAGES.nbytes, "FP32", IMAGES.shape)
            got = client.predict("cnn", {"image": tensor})["output_0"]
            assert got.tobytes() == expected.tobytes()
            region.put(IMAGES[::-1], offset=IMAGES.nbytes)  # reused at once: the server copied the last one out
            again = client.predict("cnn", {"image": tensor})["output_0"]
            assert again.tobytes() == expected[::-1].tobytes()
            with client.stream("cnn") as stream:
                streamed = stream.predict({"image": region.put(IMAGES[:1])})["output_0"]
            np.testing.assert_allclose(streamed, expected[:1], rtol=1e-5, atol=1e-7)
        assert "sdk-inputs" not in registered(server)
        assert not Path("/dev/shm", region.key[1:]).exists()
        with pytest.raises(InvalidArgumentError, match="is closed"):
            region.put(IMAGES)


def test_async_regions_and_errors(server: str) -> None:
    async def main() -> None:
        async with AsyncClient(server) as client:
            async with await client.shared_memory(IMAGES.nbytes) as region:
                assert region.name in registered(server)
                got = await client.predict("cnn", {"image": region.put(IMAGES)})
                assert got["output_0"].shape == (4, 10)
                with pytest.raises(InvalidArgumentError, match="do not fit shared memory region"):
                    region.put(np.zeros(IMAGES.size + 1, np.float32))
                wrong = region.put(IMAGES[:, :4])  # the data fits the region, the shape not the model
                with pytest.raises(InvalidArgumentError, match="input 'image': expected shape"):
                    await client.predict("cnn", {"image": wrong})
            assert region.name not in registered(server)

    asyncio.run(main())


def test_a_region_the_server_forgot_fails_the_call_precisely(server: str) -> None:
    with Client(server) as client, client.shared_memory(IMAGES.nbytes) as region:
        tensor = region.put(IMAGES)
        with grpc.insecure_channel(server) as channel:  # someone else unregisters every region
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            stub.SystemSharedMemoryUnregister(pb.SystemSharedMemoryUnregisterRequest(), timeout=30)
        with pytest.raises(InvalidArgumentError, match=f"shared memory region '{region.name}' is not registered"):
            client.predict("cnn", {"image": tensor})
    # closing still removed the object, though the server had forgotten the region already
    assert not Path("/dev/shm", region.key[1:]).exists()
