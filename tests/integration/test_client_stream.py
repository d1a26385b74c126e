"""The SDK's streams, model config and classification against a real `kerve serve` process on loopback.

Calls that must stay unanswered for a while (timeouts, closing with calls pending, a server dying under them)
freeze the server with SIGSTOP instead of racing it: nothing it holds can be answered until SIGCONT.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from subprocess import Popen
from typing import Any

import numpy as np
import pytest

from helpers import running_server, wait_for
from kerve.client import (
    AsyncClient,
    CancelledError,
    Client,
    DeadlineExceededError,
    InvalidArgumentError,
    ModelConfig,
    NotFoundError,
    TensorConfig,
    UnavailableError,
)

pytestmark = pytest.mark.integration

RNG = np.random.default_rng(21)
IMAGES = RNG.random((64, 8, 8, 1), dtype=np.float32)


def rows(i: int) -> np.ndarray:
    """Call i's input: 1 to 3 images, different for every i (so a mixed-up answer shows in shape or values)."""
    start = (i * 5) % 60
    return IMAGES[start : start + 1 + i % 3]


def unary_reference(target: str, count: int) -> list[np.ndarray]:
    with Client(target) as client:
        return [client.predict("cnn", {"image": rows(i)})["output_0"] for i in range(count)]


def assert_same(got: np.ndarray, expected: np.ndarray) -> None:
    # a stream's messages may share a batch with their neighbours: equal to float32 rounding
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)


@contextlib.contextmanager
def frozen(proc: Popen[bytes]) -> Iterator[None]:
    """The server process stopped (it reads and answers nothing) for the block; continued after it, whatever happens."""
    proc.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        proc.send_signal(signal.SIGCONT)


def stream_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("kerve-stream-")]


async def only_this_task_left(timeout_s: float = 10.0) -> None:
    """Poll until no task but the caller's is left (grpc finishes a cancelled call's bookkeeping a moment later)."""
    deadline = time.monotonic() + timeout_s
    while (left := asyncio.all_tasks() - {asyncio.current_task()}) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert not left, left


def outcome(call: Any) -> Any:
    try:
        return call()
    except Exception as exc:  # the test looks at which
        return exc


# --- many callers, one stream -----------------------------------------------------------------------------


def test_threads_share_one_stream_and_each_gets_its_own_answer(server: str) -> None:
    count = 96
    expected = unary_reference(server, count)
    threads_before = threading.active_count()
    with Client(server) as client, client.stream("cnn") as stream:
        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(lambda i: stream.infer({"image": rows(i)}), range(count)))
        assert stream.pending == 0
    assert len({r.id for r in results}) == count
    for result, reference in zip(results, expected, strict=True):
        assert result.model_name == "cnn" and result.model_version == "1"
        assert_same(result.outputs["output_0"], reference)
    assert not stream_threads()
    wait_for(lambda: threading.active_count() <= threads_before, "the stream's threads to end", 10)


def test_tasks_share_one_async_stream_and_each_gets_its_own_answer(server: str) -> None:
    count = 96
    expected = unary_reference(server, count)

    async def main() -> list[Any]:
        async with AsyncClient(server) as client:
            async with client.stream("cnn") as stream:
                results = await asyncio.gather(*(stream.infer({"image": rows(i)}) for i in range(count)))
                assert stream.pending == 0
            assert stream._reader.done()
            await only_this_task_left()  # nothing of the stream left running
            return results

    results = asyncio.run(main())
    assert len({r.id for r in results}) == count
    for result, reference in zip(results, expected, strict=True):
        assert result.model_version == "1"
        assert_same(result.outputs["output_0"], reference)


# --- in-band errors -----------------------------------------------------------------------------------------


def test_an_in_band_error_fails_only_its_call_and_the_stream_goes_on(server: str) -> None:
    expected = unary_reference(server, 12)
    bad = {
        3: {"image": rows(3).astype(np.int32)},  # wrong datatype
        7: {"image": rows(7), "extra": np.zeros((1, 1), np.float32)},  # unknown input
    }
    with Client(server) as client, client.stream("cnn") as stream:
        with ThreadPoolExecutor(6) as pool:
            outcomes = list(
                pool.map(lambda i: outcome(lambda: stream.infer(bad.get(i, {"image": rows(i)}))), range(12))
            )
        for i, got in enumerate(outcomes):
            if i in bad:
                assert isinstance(got, InvalidArgumentError), got
                assert got.code == "INVALID_ARGUMENT"
                assert ("input 'image'" if i == 3 else "'extra'") in got.message
            else:
                assert_same(got.outputs["output_0"], expected[i])
        assert not stream.closed
        assert_same(stream.predict({"image": rows(0)})["output_0"], expected[0])  # the next call succeeds

        with client.stream("nope") as missing:
            with pytest.raises(NotFoundError, match="'nope'"):
                missing.infer({"image": rows(0)})
            with pytest.raises(NotFoundError):
                missing.infer({"image": rows(0)})  # still open: each message is answered on its own


def test_an_in_band_error_on_an_async_stream(server: str) -> None:
    async def main() -> None:
        async with AsyncClient(server) as client, client.stream("cnn", version=1) as stream:
            bad, good = await asyncio.gather(
                stream.infer({"image": rows(1).astype(np.float64)}),
                stream.infer({"image": rows(2)}),
                return_exceptions=True,
            )
            assert isinstance(bad, InvalidArgumentError) and "input 'image'" in bad.message, bad
            assert good.outputs["output_0"].shape == (3, 10)
            after = await stream.infer({"image": rows(0)})
            assert after.outputs["output_0"].shape == (1, 10) and after.model_version == "1"

    asyncio.run(main())


# --- caller-chosen request ids -------------------------------------------------------------------------------


def test_a_callers_request_id_round_trips_and_one_in_flight_is_refused(
    server_process: tuple[str, Popen[bytes]],
) -> None:
    target, proc = server_process
    expected = unary_reference(target, 4)
    with Client(target) as client, client.stream("cnn", timeout=60) as stream, ThreadPoolExecutor(1) as pool:
        mine = stream.infer({"image": rows(0)}, request_id="caller-0")
        assert (mine.id, mine.model_name) == ("caller-0", "cnn")
        assert stream.infer({"image": rows(1)}).id == "0"  # generated ids count as before
        with frozen(proc):  # nothing is answered: "held" stays in flight
            held = pool.submit(stream.infer, {"image": rows(2)}, request_id="held")
            wait_for(lambda: stream.pending == 1, "the call in flight", 10)
            with pytest.raises(ValueError, match="request id 'held' is still in flight"):
                stream.infer({"image": rows(3)}, request_id="held")
            assert stream.pending == 1 and not stream.closed
        answered = held.result(timeout=30)
        again = stream.infer({"image": rows(3)}, request_id="held")  # answered: free again
    assert (answered.id, again.id) == ("held", "held")
    for result, i in ((mine, 0), (answered, 2), (again, 3)):
        assert_same(result.outputs["output_0"], expected[i])


def test_async_request_ids_round_trip(server: str) -> None:
    count = 12
    expected = unary_reference(server, count)

    async def main() -> list[Any]:
        async with AsyncClient(server) as client, client.stream("cnn") as stream:
            return await asyncio.gather(
                *(stream.infer({"image": rows(i)}, request_id=f"task-{i}" if i % 2 else None) for i in range(count))
            )

    results = asyncio.run(main())
    assert [r.id for r in results[1::2]] == [f"task-{i}" for i in range(1, count, 2)]
    assert sorted(int(r.id) for r in results[::2]) == list(range(count // 2))  # the others: generated
    for result, reference in zip(results, expected, strict=True):
        assert_same(result.outputs["output_0"], reference)


# --- timeouts and closing -----------------------------------------------------------------------------------


def test_a_call_that_times_out_fails_alone(server_process: tuple[str, Popen[bytes]]) -> None:
    target, proc = server_process
    expected = unary_reference(target, 2)
    with Client(target) as client, client.stream("cnn", timeout=60) as stream:
        stream.infer({"image": rows(0)})  # the stream is up
        with frozen(proc):
            start = time.monotonic()
            with pytest.raises(DeadlineExceededError):
                stream.infer({"image": rows(1)}, timeout=0.3)
            assert 0.3 <= time.monotonic() - start < 5
            assert stream.pending == 0
        # the late answer to the timed-out call is dropped; the stream serves the next one
        assert_same(stream.infer({"image": rows(1)}).outputs["output_0"], expected[1])

    async def main() -> None:
        async with AsyncClient(target) as aclient, aclient.stream("cnn") as astream:
            await astream.infer({"image": rows(0)})
            with frozen(proc):
                with pytest.raises(DeadlineExceededError):
                    await astream.infer({"image": rows(1)}, timeout=0.3)
                assert astream.pending == 0
            assert_same((await astream.infer({"image": rows(1)})).outputs["output_0"], expected[1])

    asyncio.run(main())


def test_closing_cancels_calls_still_pending_after_the_grace(server_process: tuple[str, Popen[bytes]]) -> None:
    target, proc = server_process
    threads_before = threading.active_count()
    with Client(target) as client:
        stream = client.stream("cnn", timeout=60)
        stream.infer({"image": rows(0)})
        with frozen(proc), ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(outcome, lambda i=i: stream.infer({"image": rows(i)})) for i in range(4)]
            wait_for(lambda: stream.pending == 4, "four calls in flight", 10)
            start = time.monotonic()
            stream.close(grace_s=0.2)
            assert time.monotonic() - start < 5
            outcomes = [f.result(timeout=5) for f in futures]
        assert all(isinstance(o, CancelledError) for o in outcomes), outcomes
        with pytest.raises(CancelledError, match="closed"):
            stream.infer({"image": rows(0)})
        stream.close()  # again: nothing to do
        assert client.predict("cnn", {"image": rows(0)})["output_0"].shape == (1, 10)
    assert not stream_threads()
    wait_for(lambda: threading.active_count() <= threads_before, "the stream's threads to end", 10)


def test_closing_waits_for_pending_answers_within_the_grace(server_process: tuple[str, Popen[bytes]]) -> None:
    target, proc = server_process
    expected = unary_reference(target, 4)
    with Client(target) as client:
        stream = client.stream("cnn", timeout=60)
        with ThreadPoolExecutor(5) as pool:
            with frozen(proc):
                futures = [pool.submit(stream.infer, {"image": rows(i)}) for i in range(4)]
                wait_for(lambda: stream.pending == 4, "four calls in flight", 10)
                closing = pool.submit(stream.close, 60)
                wait_for(lambda: stream.closed, "close() to begin", 10)
                assert not closing.done()
            closing.result(timeout=30)  # the server answered all four, then ended the stream
            for future, reference in zip(futures, expected, strict=True):
                # answered before close() returned; the pool thread that waited in infer() may not have run yet
                assert_same(future.result(timeout=10).outputs["output_0"], reference)


def test_closing_an_async_stream_with_calls_pending(server_process: tuple[str, Popen[bytes]]) -> None:
    target, proc = server_process

    async def main() -> None:
        async with AsyncClient(target) as client:
            stream = client.stream("cnn", timeout=60)
            await stream.infer({"image": rows(0)})
            with frozen(proc):
                calls = [asyncio.ensure_future(stream.infer({"image": rows(i)})) for i in range(4)]
                deadline = time.monotonic() + 10
                while stream.pending < 4:
                    assert time.monotonic() < deadline, "four calls in flight"
                    await asyncio.sleep(0.01)
                start = time.monotonic()
                await stream.close(grace_s=0.2)
                assert time.monotonic() - start < 5
                outcomes = await asyncio.gather(*calls, return_exceptions=True)
            assert all(isinstance(o, CancelledError) for o in outcomes), outcomes
            with pytest.raises(CancelledError, match="closed"):
                await stream.infer({"image": rows(0)})
            await only_this_task_left()

    asyncio.run(main())


def test_a_server_that_dies_fails_pending_calls_promptly(model_repo: Path, tmp_path: Path) -> None:
    """SIGKILL with calls in flight on a sync and an async stream: each fails UNAVAILABLE within seconds (their
    timeouts are a minute away), later calls raise at once, and closing returns."""
    threads_before = threading.active_count()
    with running_server(model_repo, tmp_path) as (target, proc), Client(target) as client:
        stream = client.stream("cnn", timeout=60)
        stream.infer({"image": rows(0)})
        pool = ThreadPoolExecutor(4)
        proc.send_signal(signal.SIGSTOP)
        futures = [pool.submit(outcome, lambda i=i: stream.infer({"image": rows(i)})) for i in range(4)]
        wait_for(lambda: stream.pending == 4, "four calls in flight", 10)

        async def main() -> tuple[list[Any], float]:
            async with AsyncClient(target) as aclient:
                astream = aclient.stream("cnn", timeout=60)
                calls = [asyncio.ensure_future(astream.infer({"image": rows(i)})) for i in range(3)]
                while astream.pending < 3:
                    await asyncio.sleep(0.01)
                killed = time.monotonic()
                proc.kill()
                outcomes = await asyncio.gather(*calls, return_exceptions=True)
                elapsed = time.monotonic() - killed
                with pytest.raises(UnavailableError):
                    await astream.infer({"image": rows(0)})
                await astream.close()
                return outcomes, elapsed

        async_outcomes, async_elapsed = asyncio.run(asyncio.wait_for(main(), 30))
        outcomes = [f.result(timeout=10) for f in futures]
        pool.shutdown()
        assert all(isinstance(o, UnavailableError) for o in outcomes), outcomes
        assert all(isinstance(o, UnavailableError) for o in async_outcomes), async_outcomes
        assert async_elapsed < 10
        start = time.monotonic()
        with pytest.raises(UnavailableError):
            stream.infer({"image": rows(0)})
        stream.close()
        assert time.monotonic() - start < 5
    assert not stream_threads()
    wait_for(lambda: threading.active_count() <= threads_before, "the stream's threads to end", 10)


# --- model config -------------------------------------------------------------------------------------------


def test_config_describes_batching_tensors_and_instances(server: str) -> None:
    with Client(server) as client:
        config = client.config("cnn")
        pair = client.config("pair", version=1)
        with pytest.raises(NotFoundError):
            client.config("nope")
        with pytest.raises(NotFoundError):
            client.config("cnn", version=7)
    assert isinstance(config, ModelConfig)
    assert (config.name, config.platform, config.max_batch_size) == ("cnn", "tensorflow_savedmodel", 64)
    assert config.dynamic_batching and config.max_queue_delay_s == pytest.approx(0.001)
    assert config.preferred_batch_sizes == ()  # not padded on CPU unless asked
    assert config.inputs == (TensorConfig("image", "FP32", (8, 8, 1)),)
    assert config.outputs == (TensorConfig("output_0", "FP32", (10,)),)
    assert config.instance_groups and {g.kind for g in config.instance_groups} == {"CPU"}
    assert sum(g.count for g in config.instance_groups) >= 1
    assert pair.inputs == (TensorConfig("features", "FP32", (3,)), TensorConfig("ids", "INT64", (2,)))
    with pytest.raises(AttributeError):
        config.name = "other"  # frozen

    async def main() -> ModelConfig:
        async with AsyncClient(server) as aclient:
            return await aclient.config("cnn", timeout=10)

    assert asyncio.run(main()) == config


# --- classification -----------------------------------------------------------------------------------------


def test_classify_ranks_like_argsort_of_the_raw_output(server: str, in_process) -> None:
    images = IMAGES[:5]
    raw = in_process("cnn", {"image": images})["output_0"]  # what the server computes, bit for bit
    best = np.argsort(-raw, axis=1, kind="stable")
    with Client(server) as client:
        top = client.classify("cnn", {"image": images}, top_k=3)
        one = client.classify("cnn", {"image": images}, output="output_0", version=1)
        pair = client.classify(
            "pair", {"features": np.ones((2, 3), np.float32), "ids": np.ones((2, 2), np.int64)}, top_k=3
        )
        labels = client.infer("cnn", {"image": images}, class_counts={"output_0": 2}).outputs["output_0"]
        with pytest.raises(InvalidArgumentError, match="positive integer"):
            client.classify("cnn", {"image": images}, top_k=0)
    assert (top.model_name, top.model_version, top.output) == ("cnn", "1", "output_0")
    assert top.indices.dtype == np.int64 and top.scores.dtype == np.float64
    assert top.indices.shape == top.scores.shape == (5, 3)
    np.testing.assert_array_equal(top.indices, best[:, :3])
    np.testing.assert_array_equal(top.scores.astype(np.float32), np.take_along_axis(raw, best[:, :3], axis=1))
    np.testing.assert_array_equal(one.indices, best[:, :1])
    assert pair.indices.shape == (2, 1) and (pair.indices == 0).all()  # one class: k is capped
    assert labels.shape == (5, 2) and labels.dtype == object
    assert [int(label.split(b":")[1]) for label in labels[:, 0]] == best[:, 0].tolist()

    async def main() -> Any:
        async with AsyncClient(server) as aclient:
            return await aclient.classify("cnn", {"image": images}, top_k=10)

    every = asyncio.run(main())
    np.testing.assert_array_equal(every.indices, best)


def test_a_stream_can_ask_every_call_for_the_top_classes(server: str, in_process) -> None:
    """stream(..., class_counts=...) answers each call with "<score>:<index>" labels, as unary infer does."""
    images = IMAGES[:4]
    best = np.argsort(-in_process("cnn", {"image": images})["output_0"], axis=1, kind="stable")
    with Client(server) as client:
        unary = client.infer("cnn", {"image": images}, class_counts={"output_0": 2}).outputs["output_0"]
        with client.stream("cnn", class_counts={"output_0": 2}) as stream:
            streamed = [stream.infer({"image": images[i : i + 1]}).outputs["output_0"] for i in range(4)]
        with pytest.raises(InvalidArgumentError, match="positive integer"):
            client.stream("cnn", class_counts={"output_0": 0})  # refused when the stream opens

    async def main() -> Any:
        async with AsyncClient(server) as aclient, aclient.stream("cnn", class_counts={"output_0": 2}) as stream:
            return (await stream.infer({"image": images})).outputs["output_0"]

    def indices(labels: np.ndarray) -> list[list[int]]:  # scores may differ in the last digit between batch sizes
        return [[int(label.split(b":")[1]) for label in row] for row in labels]

    assert indices(np.concatenate(streamed)) == indices(unary) == best[:, :2].tolist()
    np.testing.assert_array_equal(asyncio.run(main()), unary)  # the same batch of four: the same labels
