"""The SDK's shared memory against a real `kerve serve` on this host: regions made, registered, used by unary calls
and streams for inputs and outputs, unregistered and removed."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest

from kerve.client import AsyncClient, Client, InvalidArgumentError, NotFoundError, SharedTensor
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
        forgotten = f"shared memory region '{region.name}' is not registered"
        with pytest.raises(NotFoundError, match=forgotten):  # Triton's status for it
            client.predict("cnn", {"image": tensor})
        with pytest.raises(NotFoundError, match=f"output 'output_0': {forgotten}"):
            client.predict("cnn", {"image": IMAGES}, outputs=[region.output("output_0")])
    # closing still removed the object, though the server had forgotten the region already
    assert not Path("/dev/shm", region.key[1:]).exists()


def test_outputs_written_into_a_region_match_outputs_in_the_message(server: str) -> None:
    with Client(server) as client:
        expected = client.predict("cnn", {"image": IMAGES})["output_0"]
        size, at = expected.nbytes, IMAGES.nbytes + 8
        with client.shared_memory(at + size, name="sdk-outputs") as region:
            place = region.output("output_0", offset=at, byte_size=size)
            got = client.infer("cnn", {"image": region.put(IMAGES)}, outputs=[place]).outputs["output_0"]
            assert (got.dtype, got.shape) == (np.float32, expected.shape) and got.tobytes() == expected.tobytes()
            again = client.predict("cnn", {"image": region.put(IMAGES[::-1])}, outputs=[place])["output_0"]
            assert again.tobytes() == expected[::-1].tobytes()
            assert Path("/dev/shm", region.key[1:]).read_bytes()[at:] == again.tobytes()  # it came through the region
            assert got.tobytes() == expected.tobytes()  # a copy: the region's reuse left the first result alone

            classes = client.infer("cnn", {"image": IMAGES}, class_counts={"output_0": 3}).outputs["output_0"]
            placed = client.infer(
                "cnn", {"image": IMAGES}, outputs=[region.output("output_0")], class_counts={"output_0": 3}
            )
            assert placed.outputs["output_0"].tolist() == classes.tolist()  # BYTES, read back by their lengths


def test_an_output_region_too_small_for_the_result_fails_the_call_precisely(server: str) -> None:
    with Client(server) as client, client.shared_memory(IMAGES.nbytes) as region:
        size = client.predict("cnn", {"image": IMAGES})["output_0"].nbytes
        short = region.output("output_0", byte_size=size - 1)
        message = f"output 'output_0': the shared memory given for it \\({size - 1} bytes\\) should be at least {size}"
        with pytest.raises(InvalidArgumentError, match=message):
            client.infer("cnn", {"image": IMAGES}, outputs=[short])


def test_async_outputs_in_a_region(server: str) -> None:
    async def main() -> tuple[np.ndarray, np.ndarray]:
        async with AsyncClient(server) as client:
            expected = (await client.predict("cnn", {"image": IMAGES}))["output_0"]
            async with await client.shared_memory(2 * IMAGES.nbytes) as region:
                place = region.output("output_0", offset=IMAGES.nbytes)
                got = await client.predict("cnn", {"image": region.put(IMAGES)}, outputs=[place])
                return got["output_0"], expected

    got, expected = asyncio.run(main())
    assert got.shape == expected.shape and got.tobytes() == expected.tobytes()


def test_stream_calls_place_their_outputs_in_a_region(server: str) -> None:
    """Each call on one stream names its own place; what comes back matches a unary call, and came through the
    region (the place held zeros before). A call without outputs still gets its answer in the message."""
    with Client(server) as client:
        expected = client.predict("cnn", {"image": IMAGES})["output_0"]
        row = expected[:1].nbytes
        with client.shared_memory(len(IMAGES) * row, name="sdk-stream-outputs") as region, client.stream("cnn") as s:
            path = Path("/dev/shm", region.key[1:])
            assert path.read_bytes() == bytes(len(IMAGES) * row)
            places = [region.output("output_0", offset=i * row, byte_size=row) for i in range(len(IMAGES))]
            with ThreadPoolExecutor(len(IMAGES)) as pool:  # concurrent messages, each written to its own place
                results = list(
                    pool.map(lambda i: s.infer({"image": IMAGES[i : i + 1]}, outputs=[places[i]]), range(len(IMAGES)))
                )
            got = np.concatenate([r.outputs["output_0"] for r in results])
            assert path.read_bytes() == got.tobytes()
            in_message = s.predict({"image": IMAGES})["output_0"]
    assert [r.model_name for r in results] == ["cnn"] * len(IMAGES)
    assert got.dtype == np.float32 and got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)  # rows may share a batch with other rows
    np.testing.assert_allclose(in_message, expected, rtol=1e-5, atol=1e-7)
    assert not path.exists()


def test_async_stream_calls_place_their_outputs_in_a_region(server: str) -> None:
    async def main() -> tuple[list[np.ndarray], np.ndarray, bytes]:
        async with AsyncClient(server) as client:
            expected = (await client.predict("cnn", {"image": IMAGES}))["output_0"]
            half = expected[:2].nbytes
            async with await client.shared_memory(2 * half) as region, client.stream("cnn") as stream:
                places = [region.output("output_0", offset=i * half, byte_size=half) for i in range(2)]
                calls = [stream.predict({"image": IMAGES[2 * i : 2 * i + 2]}, outputs=[places[i]]) for i in range(2)]
                got = [r["output_0"] for r in await asyncio.gather(*calls)]
                return got, expected, Path("/dev/shm", region.key[1:]).read_bytes()

    got, expected, written = asyncio.run(main())
    assert written == np.concatenate(got).tobytes()
    np.testing.assert_allclose(np.concatenate(got), expected, rtol=1e-5, atol=1e-7)
