"""kerve.server.batcher driven by fake models: no TensorFlow, no grpc, no fixed sleeps.

Replicas that must stay busy block on a threading.Event; the event loop is advanced with `spin` (bounded loop
turns, no wall-clock waits), outcomes that wait on a worker thread are polled with `settle` under a deadline, and
time-dependent decisions use a FakeClock. Real time appears only as bounds.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

import numpy as np
import pytest

from kerve.server.batcher import Batcher, BatchingConfig, BatchStats
from kerve.server.errors import ErrorCode, ServingError

BOUND_S = 5.0  # upper bound for anything that waits on a worker thread; never reached when tests pass


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeModel:
    """y = 2x. Records every batch it sees; with block=True, calls wait until `release` is set."""

    def __init__(self, *, block: bool = False, release: threading.Event | None = None) -> None:
        self.release = release or threading.Event()
        if not block:
            self.release.set()
        self.started = threading.Event()
        self.calls: list[dict[str, np.ndarray]] = []
        self._lock = threading.Lock()

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:
            self.calls.append({name: arr.copy() for name, arr in inputs.items()})
        self.started.set()
        if not self.release.wait(BOUND_S):
            raise RuntimeError("test model was never released")
        x = inputs[sorted(inputs)[0]]
        if (x < 0).any():
            raise ValueError("negative input")
        return {"y": x * 2}

    @property
    def sizes(self) -> list[int]:
        return [len(next(iter(call.values()))) for call in self.calls]

    @property
    def seen(self) -> list[float]:
        """First column of every row the model saw, in call order."""
        return [float(v) for call in self.calls for v in next(iter(call.values()))[:, 0]]


def rows(*values: float, width: int = 1, dtype: Any = np.float32) -> np.ndarray:
    return np.array([[v] * width for v in values], dtype=dtype)


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, BOUND_S))


async def spin(condition: Callable[[], bool], turns: int = 200) -> None:
    """Let the event loop run until `condition` holds (loop turns, not time)."""
    for _ in range(turns):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition not reached")


async def settle(condition: Callable[[], bool]) -> None:
    """Poll `condition` until it holds or BOUND_S passes: for outcomes that wait on worker threads, whose pace no
    count of loop turns bounds (a loaded CI machine ran 200 turns before a fake batch finished)."""
    deadline = time.monotonic() + BOUND_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.001)


async def turns(n: int) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def wait_thread_event(event: threading.Event) -> None:
    assert await asyncio.to_thread(event.wait, BOUND_S), "worker never got there"


def submit(batcher: Batcher, x: np.ndarray, **kwargs: Any) -> asyncio.Future[dict[str, np.ndarray]]:
    return asyncio.ensure_future(batcher.submit({"x": x}, **kwargs))


async def busy(batcher: Batcher, value: float = 0.0) -> asyncio.Future[dict[str, np.ndarray]]:
    """Start one request and return once it occupies a replica."""
    before = batcher.in_flight_batches
    task = submit(batcher, rows(value))
    await spin(lambda: batcher.in_flight_batches == before + 1)
    return task


async def error_of(awaitable: Any) -> ServingError:
    with pytest.raises(ServingError) as info:
        await awaitable
    return info.value


# ----------------------------------------------------------------------------------------------- batching


def test_requests_accumulate_into_one_batch_while_the_replica_is_busy() -> None:
    async def main() -> None:
        clock = FakeClock()
        model = FakeModel(block=True)
        batcher = Batcher([model], BatchingConfig(max_batch_size=8), clock=clock)
        first = await busy(batcher, 0)
        rest = [submit(batcher, rows(i)) for i in range(1, 6)]
        await spin(lambda: batcher.queued_samples == 5)
        assert batcher.in_flight_batches == 1
        clock.advance(1.0)  # they have waited longer than max_queue_delay_s: no reason to hold them
        model.release.set()
        results = await asyncio.gather(first, *rest)
        assert model.sizes == [1, 5]
        for i, out in enumerate(results):
            np.testing.assert_array_equal(out["y"], rows(i) * 2)
        await batcher.close()

    run(main())


def test_lone_request_on_an_idle_batcher_runs_at_once() -> None:
    async def main() -> None:
        clock = FakeClock()
        model = FakeModel()
        # A delay nobody could wait out: finishing at all proves the request was not held.
        batcher = Batcher([model], BatchingConfig(max_queue_delay_s=60.0), clock=clock)
        out = await batcher.submit({"x": rows(3)})
        np.testing.assert_array_equal(out["y"], rows(6))
        clock.advance(61.0)  # the batcher cools down after max_queue_delay_s without batches
        out = await batcher.submit({"x": rows(4)})
        np.testing.assert_array_equal(out["y"], rows(8))
        assert model.sizes == [1, 1]
        await batcher.close()

    run(main())


def test_a_lone_sequential_client_is_never_held() -> None:
    async def main() -> None:
        model = FakeModel()
        # The clock never moves, so the batcher stays warm; the last batch had one row, so one row is enough.
        batcher = Batcher([model], BatchingConfig(max_queue_delay_s=60.0), clock=FakeClock())
        for i in range(5):
            out = await batcher.submit({"x": rows(i)})
            np.testing.assert_array_equal(out["y"], rows(2 * i))
        assert model.sizes == [1] * 5
        await batcher.close()

    run(main())


def test_requests_in_the_same_loop_turn_share_a_batch() -> None:
    async def main() -> None:
        model = FakeModel()
        batcher = Batcher([model], BatchingConfig(max_batch_size=8), clock=FakeClock())
        outs = await asyncio.gather(*(batcher.submit({"x": rows(i)}) for i in range(4)))
        assert model.sizes == [4]
        assert [float(o["y"][0, 0]) for o in outs] == [0, 2, 4, 6]
        await batcher.close()

    run(main())


def test_under_load_the_queue_is_held_for_the_callers_about_to_return() -> None:
    """A batch of 1 finishes with 3 rows queued: 4 rows are expected, so the 3 wait for the returning caller."""

    async def main() -> None:
        model = FakeModel(block=True)
        batcher = Batcher([model], BatchingConfig(max_batch_size=8, max_queue_delay_s=60.0), clock=FakeClock())
        first = await busy(batcher, 0)
        held = [submit(batcher, rows(i)) for i in range(1, 4)]
        await spin(lambda: batcher.queued_samples == 3)
        model.release.set()
        await first
        await turns(20)
        assert batcher.in_flight_batches == 0 and batcher.queued_samples == 3
        back = submit(batcher, rows(4))  # the first caller comes back: the expected batch is complete
        await asyncio.gather(*held, back)
        assert model.sizes == [1, 4]
        await batcher.close()

    run(main())


def test_a_held_request_waits_no_longer_than_max_queue_delay() -> None:
    async def main() -> None:
        model = FakeModel(block=True)
        # The test clock never moves: only the real-time timer can release the held request.
        batcher = Batcher([model], BatchingConfig(max_batch_size=8, max_queue_delay_s=0.01), clock=FakeClock())
        first = await busy(batcher, 0)
        task = submit(batcher, rows(1))
        await spin(lambda: batcher.queued_samples == 1)
        model.release.set()
        await first  # nobody comes back after this
        assert batcher.in_flight_batches == 0 and batcher.queued_samples == 1  # held, not dispatched
        out = await asyncio.wait_for(task, 1.0)
        np.testing.assert_array_equal(out["y"], rows(2))
        assert model.sizes == [1, 1]
        await batcher.close()

    run(main())


# ----------------------------------------------------------------------------------------------- padding, splitting


def test_batches_are_padded_to_allowed_sizes_and_sliced_back() -> None:
    async def main() -> None:
        stats: list[BatchStats] = []
        model = FakeModel()
        config = BatchingConfig(max_batch_size=8, allowed_batch_sizes=(2, 4, 8))
        batcher = Batcher([model], config, clock=FakeClock(), on_batch=stats.append)
        out = await batcher.submit({"x": rows(1, 2, 3)})
        np.testing.assert_array_equal(out["y"], rows(2, 4, 6))
        assert model.seen == [1, 2, 3, 3]  # padded by repeating the last row
        # Several requests padded together: 2 + 3 rows -> 8.
        outs = await asyncio.gather(batcher.submit({"x": rows(4, 5)}), batcher.submit({"x": rows(6, 7, 8)}))
        np.testing.assert_array_equal(outs[0]["y"], rows(8, 10))
        np.testing.assert_array_equal(outs[1]["y"], rows(12, 14, 16))
        assert model.sizes == [4, 8]
        assert [(s.batch_size, s.padded_size, s.requests) for s in stats] == [(3, 4, 1), (5, 8, 2)]
        await batcher.close()

    run(main())


def test_pad_to_allowed_false_runs_natural_sizes() -> None:
    async def main() -> None:
        model = FakeModel()
        config = BatchingConfig(max_batch_size=8, allowed_batch_sizes=(4, 8), pad_to_allowed=False)
        batcher = Batcher([model], config, clock=FakeClock())
        await batcher.submit({"x": rows(1, 2, 3)})
        assert model.sizes == [3]
        await batcher.close()

    run(main())


def test_oversized_request_is_split_and_reassembled() -> None:
    async def main() -> None:
        model = FakeModel()
        config = BatchingConfig(max_batch_size=4, max_queue_delay_s=0)
        batcher = Batcher([model], config, clock=FakeClock())
        x = rows(*range(10))
        out = await batcher.submit({"x": x, "x2": x + 100})
        np.testing.assert_array_equal(out["y"], x * 2)
        assert model.sizes == [4, 4, 2]
        assert batcher.queued_samples == 0
        await batcher.close()

    run(main())


def test_split_request_runs_on_two_replicas_concurrently_and_keeps_order() -> None:
    barrier = threading.Barrier(2, timeout=BOUND_S)

    def replica(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        barrier.wait()  # breaks (-> INTERNAL) unless both halves run at the same time
        return {"y": inputs["x"] * 2}

    async def main() -> None:
        batcher = Batcher([replica, replica], BatchingConfig(max_batch_size=4), clock=FakeClock())
        x = rows(*range(8))
        out = await batcher.submit({"x": x})
        np.testing.assert_array_equal(out["y"], x * 2)
        await batcher.close()

    run(main())


# ----------------------------------------------------------------------------------------------- limits


def test_queue_full_is_resource_exhausted() -> None:
    async def main() -> None:
        clock = FakeClock()
        model = FakeModel(block=True)
        batcher = Batcher([model], BatchingConfig(max_batch_size=4, max_queued=4), clock=clock)
        first = await busy(batcher)
        queued = [submit(batcher, rows(i)) for i in range(1, 5)]
        await spin(lambda: batcher.queued_samples == 4)
        err = await error_of(batcher.submit({"x": rows(9)}))
        assert err.code is ErrorCode.RESOURCE_EXHAUSTED
        assert "max_queued=4" in err.message
        clock.advance(1.0)
        model.release.set()
        await asyncio.gather(first, *queued)
        # Larger than the whole queue: taken when nothing else is queued (refused then, it could never run) ...
        out = await batcher.submit({"x": rows(*range(10, 15))})
        np.testing.assert_array_equal(out["y"], rows(*range(20, 30, 2)))
        assert model.seen == [0, 1, 2, 3, 4, 10, 11, 12, 13, 14]
        # ... and refused, retryable, while other requests are queued
        model.release.clear()
        again = await busy(batcher)
        waiting = submit(batcher, rows(5))
        await spin(lambda: batcher.queued_samples == 1)
        err = await error_of(batcher.submit({"x": rows(*range(5))}))
        assert err.code is ErrorCode.RESOURCE_EXHAUSTED and "max_queued=4" in err.message
        model.release.set()
        await asyncio.gather(again, waiting)
        await batcher.close()

    run(main())


def test_expired_deadline_fails_without_running() -> None:
    async def main() -> None:
        clock = FakeClock()
        model = FakeModel(block=True)
        batcher = Batcher([model], BatchingConfig(max_batch_size=8), clock=clock)
        first = await busy(batcher)
        late = submit(batcher, rows(7), deadline=clock() + 1.0)
        fine = submit(batcher, rows(8), deadline=clock() + 10.0)
        await spin(lambda: batcher.queued_samples == 2)
        clock.advance(2.0)
        model.release.set()
        err = await error_of(late)
        assert err.code is ErrorCode.DEADLINE_EXCEEDED
        np.testing.assert_array_equal((await fine)["y"], rows(16))
        await first
        assert 7 not in model.seen
        # Already past when submitted: refused up front, never queued.
        err = await error_of(batcher.submit({"x": rows(5)}, deadline=clock() - 0.1))
        assert err.code is ErrorCode.DEADLINE_EXCEEDED
        assert batcher.queued_samples == 0 and 5 not in model.seen
        await batcher.close()

    run(main())


def test_a_request_whose_deadline_falls_in_the_hold_window_is_not_held() -> None:
    """Holding for a fuller batch while a replica idles must not outlast a request's deadline: it was held to
    max_queue_delay and failed DEADLINE_EXCEEDED (or its queue policy's UNAVAILABLE) without ever running."""

    async def main() -> None:
        model = FakeModel()
        batcher = Batcher([model], BatchingConfig(max_batch_size=8, max_queue_delay_s=5.0))
        await asyncio.gather(*(batcher.submit({"x": rows(i)}) for i in range(4)))  # it learns to expect 4 rows
        out = await asyncio.wait_for(batcher.submit({"x": rows(9)}, timeout_s=0.5), BOUND_S)
        np.testing.assert_array_equal(out["y"], rows(18))
        held = submit(batcher, rows(1))  # no deadline: held for a fuller batch
        await spin(lambda: batcher.queued_samples == 1)
        quick = batcher.submit({"x": rows(2)}, timeout_s=0.5)  # cannot wait for the hold: both go now
        np.testing.assert_array_equal((await asyncio.wait_for(quick, BOUND_S))["y"], rows(4))
        np.testing.assert_array_equal((await asyncio.wait_for(held, BOUND_S))["y"], rows(2))
        await batcher.close()

    run(main())


def test_a_queued_request_past_its_deadline_leaves_the_fifo_queue_at_once() -> None:
    """Without priority levels, a deadline was only noticed at the head of the queue: the expired rows kept
    counting against max_queued (RESOURCE_EXHAUSTED for newcomers) until a replica came free."""

    async def main() -> None:
        clock = FakeClock()
        model = FakeModel(block=True)
        batcher = Batcher([model], BatchingConfig(max_batch_size=4, max_queued=2), clock=clock)
        first = await busy(batcher)
        late = submit(batcher, rows(7, 7), deadline=0.05)  # the expiry timer fires in real time
        await settle(lambda: late.done())
        assert (await error_of(late)).code is ErrorCode.DEADLINE_EXCEEDED
        assert batcher.queued_samples == 0
        fits = submit(batcher, rows(8))  # room again while the replica is still busy
        await spin(lambda: batcher.queued_samples == 1)
        model.release.set()
        np.testing.assert_array_equal((await fits)["y"], rows(16))
        await first
        assert 7 not in model.seen
        await batcher.close()

    run(main())


# ----------------------------------------------------------------------------------------------- fairness, cancellation


def test_fifo_no_starvation_under_a_continuous_stream() -> None:
    """Each time a batch runs, two new requests arrive (enough to fill every batch on their own); the older
    requests still go first, so the model sees rows in exactly the order they were submitted."""

    class Stepper(FakeModel):
        def __init__(self) -> None:
            super().__init__()
            self.go = threading.Semaphore(0)
            self.entered = threading.Semaphore(0)

        def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            self.entered.release()
            if not self.go.acquire(timeout=BOUND_S):
                raise RuntimeError("never stepped")
            return super().__call__(inputs)

    async def main() -> None:
        model = Stepper()
        config = BatchingConfig(max_batch_size=2, max_queue_delay_s=0)
        batcher = Batcher([model], config, clock=FakeClock())
        counter = iter(range(1000))
        tasks = [submit(batcher, rows(next(counter)))]
        await spin(lambda: batcher.in_flight_batches == 1)
        tasks += [submit(batcher, rows(next(counter))) for _ in range(3)]  # a backlog older than the stream
        for _ in range(6):
            assert await asyncio.to_thread(model.entered.acquire, True, BOUND_S)
            tasks += [submit(batcher, rows(next(counter))) for _ in range(2)]
            await spin(lambda: batcher.queued_samples >= 2)
            model.go.release()
        for _ in range(len(tasks)):
            model.go.release()
        outs = await asyncio.gather(*tasks)
        assert model.seen == sorted(model.seen) == list(range(len(tasks)))
        assert [float(o["y"][0, 0]) for o in outs] == [2.0 * i for i in range(len(tasks))]
        await batcher.close()

    run(main())


def test_priority_levels_go_first_and_fill_up_from_the_levels_below() -> None:
    """Triton's priority: level 1 before 2 before 3, oldest first within a level; a batch that one level cannot
    fill takes the next level's rows; 0 or a level the model lacks means the default level (2 here)."""

    async def main() -> None:
        model = FakeModel(block=True)
        config = BatchingConfig(max_batch_size=3, max_queue_delay_s=0, priority_levels=3, default_priority_level=2)
        batcher = Batcher([model], config, clock=FakeClock())
        first = await busy(batcher, 0)
        queued = [
            submit(batcher, rows(10), priority=3),
            submit(batcher, rows(20)),  # no priority: the default level, 2
            submit(batcher, rows(30), priority=1),
            submit(batcher, rows(21), priority=2),
            submit(batcher, rows(11), priority=3),
            submit(batcher, rows(22), priority=7),  # no such level: the default
            submit(batcher, rows(31), priority=1),
        ]
        await spin(lambda: batcher.queued_samples == 7)
        model.release.set()
        await asyncio.gather(first, *queued)
        assert model.seen == [0, 30, 31, 20, 21, 22, 10, 11]
        assert model.sizes == [1, 3, 3, 1]  # level 1's two rows took the oldest level-2 row along
        await batcher.close()

    run(main())


def test_without_priority_levels_a_priority_changes_nothing() -> None:
    async def main() -> None:
        model = FakeModel(block=True)
        batcher = Batcher([model], BatchingConfig(max_batch_size=8), clock=FakeClock())
        first = await busy(batcher, 0)
        queued = [submit(batcher, rows(v), priority=p) for v, p in ((1, 3), (2, 1), (3, 0))]
        await spin(lambda: batcher.queued_samples == 3)
        model.release.set()
        await asyncio.gather(first, *queued)
        assert model.seen == [0, 1, 2, 3]
        await batcher.close()

    run(main())


def test_cancelled_request_never_reaches_the_model() -> None:
    async def main() -> None:
        model = FakeModel(block=True)
        batcher = Batcher([model], BatchingConfig(max_batch_size=8, max_queue_delay_s=0), clock=FakeClock())
        first = await busy(batcher)
        gone = submit(batcher, rows(7))
        split = submit(batcher, rows(*range(20, 40)))  # larger than a batch: cancel before any piece runs
        kept = submit(batcher, rows(8))
        await spin(lambda: batcher.queued_samples == 22)
        gone.cancel()
        split.cancel()
        await spin(lambda: gone.done() and split.done())
        assert gone.cancelled() and split.cancelled()
        assert batcher.queued_samples == 1
        model.release.set()
        np.testing.assert_array_equal((await kept)["y"], rows(16))
        await first
        assert model.seen == [0, 8]
        await batcher.close()

    run(main())


def test_cancelling_a_split_request_midway_drops_its_remaining_pieces() -> None:
    async def main() -> None:
        model = FakeModel(block=True)
        batcher = Batcher([model], BatchingConfig(max_batch_size=2, max_queue_delay_s=0), clock=FakeClock())
        task = submit(batcher, rows(*range(6)))
        await spin(lambda: batcher.in_flight_batches == 1)
        assert batcher.queued_samples == 4
        task.cancel()
        await spin(task.done)
        assert batcher.queued_samples == 0
        model.release.set()
        out = await batcher.submit({"x": rows(9)})  # keeps working; the running piece finished first
        np.testing.assert_array_equal(out["y"], rows(18))
        assert model.seen == [0, 1, 9]
        await batcher.close()

    run(main())


def test_queued_requests_counts_requests_until_their_last_piece_is_in_a_batch() -> None:
    """Triton's pending count: a running request is not pending, a split one is until its last piece runs, and
    one that leaves (cancelled, deadline passed) stops counting."""

    async def main() -> None:
        clock = FakeClock()
        model = FakeModel(block=True)
        batcher = Batcher([model], BatchingConfig(max_batch_size=2, max_queue_delay_s=0), clock=clock)
        split = submit(batcher, rows(*range(5)))  # pieces of 2, 2, 1: the first runs at once
        await spin(lambda: batcher.in_flight_batches == 1)
        assert batcher.queued_requests == 1 and batcher.queued_samples == 3
        later = submit(batcher, rows(10))
        gone = submit(batcher, rows(11))
        expiring = submit(batcher, rows(12), deadline=clock.now + 1.0)
        await spin(lambda: batcher.queued_samples == 6)
        assert batcher.queued_requests == 4
        gone.cancel()
        await spin(gone.done)
        assert batcher.queued_requests == 3
        clock.advance(2.0)
        model.release.set()
        assert (await error_of(expiring)).code is ErrorCode.DEADLINE_EXCEEDED
        np.testing.assert_array_equal((await split)["y"], rows(*range(5)) * 2)
        await later
        assert batcher.queued_requests == 0 and batcher.queued_samples == 0
        await batcher.close()

    run(main())


class RecordingSink:
    """A caller's own sink (enqueue): what arrived, and when (always from the loop thread, never twice)."""

    def __init__(self) -> None:
        self.results: list[Any] = []
        self.errors: list[BaseException] = []
        self.threads: set[int] = set()

    def done(self) -> bool:
        return bool(self.results or self.errors)

    def set_result(self, result: dict[str, np.ndarray], /) -> None:
        self.threads.add(threading.get_ident())
        self.results.append(result)

    def set_exception(self, exception: BaseException, /) -> None:
        self.threads.add(threading.get_ident())
        self.errors.append(exception)


def test_a_sink_that_raises_on_its_result_fails_alone_and_the_batch_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    """A defect in one caller's completion must not strand the others of its batch (nor the batcher)."""

    class Broken(RecordingSink):
        def set_result(self, result: dict[str, np.ndarray], /) -> None:
            raise RuntimeError("a broken sink")

    async def main() -> None:
        model = FakeModel(block=True)
        batcher = Batcher([model], BatchingConfig(max_batch_size=8, max_queue_delay_s=0), clock=FakeClock())
        first = await busy(batcher, 0)
        sinks = [RecordingSink(), Broken(), RecordingSink()]
        for value, sink in enumerate(sinks, 1):
            batcher.enqueue({"x": rows(value)}, None, sink)
        model.release.set()
        await first
        await settle(lambda: all(s.done() for s in (sinks[0], sinks[2])))
        assert [s.results[0]["y"].tolist() for s in (sinks[0], sinks[2])] == [[[2.0]], [[6.0]]]
        assert sinks[1].errors and sinks[1].errors[0].code is ErrorCode.INTERNAL
        np.testing.assert_array_equal((await batcher.submit({"x": rows(5)}))["y"], rows(10))
        await batcher.close()

    with caplog.at_level(logging.ERROR, logger="kerve.server.batcher"):
        run(main())
    assert "delivering the outputs of a request" in caplog.text


def test_enqueue_delivers_to_the_callers_sink_and_abandon_silences_it() -> None:
    async def main() -> None:
        model = FakeModel(block=True)
        batcher = Batcher([model], BatchingConfig(max_batch_size=8, max_queue_delay_s=0), clock=FakeClock())
        first = await busy(batcher)
        kept, split, dropped = RecordingSink(), RecordingSink(), RecordingSink()
        batcher.enqueue({"x": rows(1)}, None, kept)
        batcher.enqueue({"x": rows(*range(10, 20))}, None, split)  # split over two batches, reassembled
        ticket = batcher.enqueue({"x": rows(5)}, None, dropped)
        await spin(lambda: batcher.queued_samples == 12)
        batcher.abandon(ticket)
        assert batcher.queued_samples == 11
        model.release.set()
        await first
        await settle(lambda: kept.done() and split.done())
        np.testing.assert_array_equal(kept.results[0]["y"], rows(2))
        np.testing.assert_array_equal(split.results[0]["y"], rows(*range(20, 40, 2)))
        assert len(kept.results) == len(split.results) == 1 and not kept.errors and not split.errors
        assert kept.threads == split.threads == {threading.get_ident()}  # the loop thread
        assert not dropped.done() and 5.0 not in model.seen  # abandoned before it ran: never run, never told
        batcher.abandon(ticket)  # again, and after the fact: harmless
        with pytest.raises(ServingError) as info:  # refusals raise from enqueue itself
            batcher.enqueue({"x": rows(1)}, 0.0, RecordingSink())
        assert info.value.code is ErrorCode.DEADLINE_EXCEEDED
        await batcher.close()

    run(main())


def test_a_sink_reads_its_model_calls_span_and_a_split_requests_runs_from_first_to_last_piece() -> None:
    """What statistics and traces read in set_result: its batch's execution as (start, input end, output start,
    end), or for a split request from its first piece's start and input end to its last piece's output start and
    end; BatchStats carries each execution's three phases."""

    class Spanning(RecordingSink):
        def __init__(self, batcher: Batcher) -> None:
            super().__init__()
            self.batcher = batcher
            self.span: tuple[float, float, float, float] | None = None

        def set_result(self, result: dict[str, np.ndarray], /) -> None:
            self.span = self.batcher.last_compute
            super().set_result(result)

    class WorkerTicking(FakeClock):  # each read from a worker thread (the batch's phases) moves it on 0.25 s
        def __call__(self) -> float:
            now = self.now
            if threading.current_thread() is not threading.main_thread():
                self.now += 0.25
            return now

    clock = WorkerTicking()

    class Ticking(FakeModel):  # every call takes 10 seconds of the batcher's clock
        def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            clock.advance(10.0)
            return super().__call__(inputs)

    async def main() -> None:
        stats: list[BatchStats] = []
        config = BatchingConfig(max_batch_size=2, max_queue_delay_s=0)
        batcher = Batcher([Ticking()], config, clock=clock, on_batch=stats.append)
        split, joined = Spanning(batcher), Spanning(batcher)
        batcher.enqueue({"x": rows(*range(5))}, None, split)  # calls of rows 2, 2, then 1 + `joined`'s
        batcher.enqueue({"x": rows(9)}, None, joined)
        await settle(lambda: split.done() and joined.done())
        # each execution: start t, input end t + 0.25, the call 10 s (+ the read after it), output start t + 10.5,
        # end t + 10.75, the next one from t + 11
        assert joined.span == (22.0, 22.25, 32.5, 32.75)
        assert split.span == (0.0, 0.25, 32.5, 32.75)
        assert [(s.input_s, s.compute_s, s.output_s) for s in stats] == [(0.25, 10.25, 0.25)] * 3
        await batcher.close()

    run(main())


# ----------------------------------------------------------------------------------------------- failures


def test_replica_exception_fails_its_batch_and_the_batcher_recovers(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        clock = FakeClock()
        model = FakeModel(block=True)
        batcher = Batcher([model], BatchingConfig(max_batch_size=8), clock=clock, name="m")
        first = await busy(batcher, 1)
        bad = submit(batcher, rows(-1))
        innocent = submit(batcher, rows(2))  # same batch as the bad one: fails with it
        await spin(lambda: batcher.queued_samples == 2)
        clock.advance(1.0)
        model.release.set()
        for task in (bad, innocent):
            err = await error_of(task)
            assert err.code is ErrorCode.INTERNAL and "negative input" in err.message
        await first
        out = await batcher.submit({"x": rows(3)})
        np.testing.assert_array_equal(out["y"], rows(6))
        assert batcher.in_flight_batches == 0 and batcher.queued_samples == 0
        await batcher.close()

    with caplog.at_level(logging.ERROR, logger="kerve.server.batcher"):
        run(main())
    assert "negative input" in caplog.text


def test_serving_error_from_the_replica_passes_through() -> None:
    def replica(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise ServingError(ErrorCode.INVALID_ARGUMENT, "pixel values out of range")

    async def main() -> None:
        batcher = Batcher([replica], clock=FakeClock())
        err = await error_of(batcher.submit({"x": rows(1)}))
        assert err.code is ErrorCode.INVALID_ARGUMENT and err.message == "pixel values out of range"
        await batcher.close()

    run(main())


class ChecksRows(FakeModel):
    """FakeModel that judges its inputs the way a model parsing tf.Examples does: a bad row refuses the call."""

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if (inputs["x"] < 0).any():
            with self._lock:
                self.calls.append({name: arr.copy() for name, arr in inputs.items()})
            raise ServingError(ErrorCode.INVALID_ARGUMENT, "row is negative")
        return super().__call__(inputs)


@pytest.mark.parametrize("allowed", [(), (2, 4, 8)])
def test_a_refused_batch_reruns_its_requests_alone_so_only_the_bad_one_fails(allowed: tuple[int, ...]) -> None:
    async def main() -> None:
        clock = FakeClock()
        model = ChecksRows(block=True)
        batcher = Batcher([model], BatchingConfig(max_batch_size=8, allowed_batch_sizes=allowed), clock=clock)
        first = await busy(batcher, 0)
        good, bad, pair = submit(batcher, rows(1)), submit(batcher, rows(-1)), submit(batcher, rows(2, 3))
        await spin(lambda: batcher.queued_samples == 4)
        clock.advance(1.0)
        model.release.set()
        await first
        np.testing.assert_array_equal((await good)["y"], rows(2))
        np.testing.assert_array_equal((await pair)["y"], rows(4, 6))
        err = await error_of(bad)
        assert err.code is ErrorCode.INVALID_ARGUMENT and err.message == "row is negative"
        # The merged batch once, then each request alone (padded up to an allowed size when there are any).
        expected = [1, 4, 1, 1, 2] if not allowed else [2, 4, 2, 2, 2]
        assert model.sizes == expected
        await batcher.close()

    run(main())


def test_a_refused_lone_request_is_not_run_twice() -> None:
    async def main() -> None:
        model = ChecksRows()
        batcher = Batcher([model], BatchingConfig(max_batch_size=8), clock=FakeClock())
        err = await error_of(batcher.submit({"x": rows(-1, 2)}))
        assert err.code is ErrorCode.INVALID_ARGUMENT
        assert model.sizes == [2]
        await batcher.close()

    run(main())


@pytest.mark.parametrize(
    ("result", "fragment"),
    [
        ([1, 2], "expected a dict"),
        ({"y": np.zeros((3, 1))}, "leading batch dimension of 1"),
        ({"y": np.float32(1)}, "leading batch dimension of 1"),
    ],
)
def test_malformed_replica_outputs_are_internal(result: object, fragment: str) -> None:
    async def main() -> None:
        batcher = Batcher([lambda inputs: result], clock=FakeClock())
        err = await error_of(batcher.submit({"x": rows(1)}))
        assert err.code is ErrorCode.INTERNAL and fragment in err.message
        await batcher.close()

    run(main())


@pytest.mark.parametrize(
    ("inputs", "fragment"),
    [
        ({}, "no inputs"),
        ({"x": [[1.0]]}, "numpy array"),
        ({"x": np.array(1.0)}, "scalar"),
        ({"x": np.zeros((0, 3))}, "empty batch"),
        ({"a": np.zeros((2, 3)), "b": np.zeros((3, 3))}, "'a' has 2 rows, 'b' has 3"),
    ],
)
def test_malformed_requests_are_invalid_argument(inputs: dict[str, Any], fragment: str) -> None:
    async def main() -> None:
        model = FakeModel()
        batcher = Batcher([model], clock=FakeClock())
        err = await error_of(batcher.submit(inputs))
        assert err.code is ErrorCode.INVALID_ARGUMENT and fragment in err.message
        assert model.calls == [] and batcher.queued_samples == 0
        await batcher.close()

    run(main())


# ----------------------------------------------------------------------------------------------- replicas, shapes


def test_two_replicas_both_take_batches_under_load() -> None:
    async def main() -> None:
        release = threading.Event()
        a, b = FakeModel(block=True, release=release), FakeModel(block=True, release=release)
        config = BatchingConfig(max_batch_size=4, max_queue_delay_s=0)
        batcher = Batcher([a, b], config, clock=FakeClock())
        first = await busy(batcher, 0)
        second = await busy(batcher, 1)  # the other replica is idle, so it takes this one
        await wait_thread_event(a.started)
        await wait_thread_event(b.started)
        assert batcher.in_flight_batches == 2
        more = [submit(batcher, rows(i)) for i in range(2, 12)]
        await spin(lambda: batcher.queued_samples == 10)
        release.set()
        outs = await asyncio.gather(first, second, *more)
        assert [float(o["y"][0, 0]) for o in outs] == [2.0 * i for i in range(12)]
        assert sorted(a.seen + b.seen) == list(range(12))
        assert max(a.sizes + b.sizes) <= 4
        await batcher.close()

    run(main())


def test_incompatible_requests_are_never_mixed() -> None:
    async def main() -> None:
        clock = FakeClock()
        model = FakeModel(block=True)
        batcher = Batcher([model], BatchingConfig(max_batch_size=8), clock=clock)
        first = await busy(batcher)
        a = submit(batcher, rows(1, width=3))
        b = submit(batcher, rows(2, width=4))
        c = submit(batcher, rows(3, width=3, dtype=np.float64))
        d = submit(batcher, rows(4, width=3))
        e = asyncio.ensure_future(batcher.submit({"z": rows(5, width=3)}))
        await spin(lambda: batcher.queued_samples == 5)
        clock.advance(1.0)
        model.release.set()
        outs = await asyncio.gather(first, a, b, c, d, e)
        for out, value, width in zip(outs[1:], [1, 2, 3, 4, 5], [3, 4, 3, 3, 3], strict=True):
            np.testing.assert_array_equal(out["y"], rows(2 * value, width=width))
        assert outs[3]["y"].dtype == np.float64
        seen = [
            (name, arr.shape, arr.dtype.name, [float(v) for v in arr[:, 0]])
            for call in model.calls[1:]
            for name, arr in call.items()
        ]
        assert seen == [  # FIFO by each group's oldest request; a and d share a batch
            ("x", (2, 3), "float32", [1, 4]),
            ("x", (1, 4), "float32", [2]),
            ("x", (1, 3), "float64", [3]),
            ("z", (1, 3), "float32", [5]),
        ]
        await batcher.close()

    run(main())


# ----------------------------------------------------------------------------------------------- close


def test_close_drains_queued_work_and_refuses_new_requests() -> None:
    async def main() -> None:
        clock = FakeClock()
        model = FakeModel(block=True)
        batcher = Batcher([model], BatchingConfig(max_batch_size=8), clock=clock)
        first = await busy(batcher)
        queued = [submit(batcher, rows(i)) for i in range(1, 4)]
        await spin(lambda: batcher.queued_samples == 3)
        closer = asyncio.ensure_future(batcher.close())
        await spin(lambda: batcher.closing)
        err = await error_of(batcher.submit({"x": rows(9)}))
        assert err.code is ErrorCode.UNAVAILABLE and "draining" in err.message
        assert not closer.done()
        model.release.set()
        await closer
        outs = await asyncio.gather(first, *queued)
        assert [float(o["y"][0, 0]) for o in outs] == [0, 2, 4, 6]
        assert model.sizes == [1, 3]

    run(main())


def test_close_without_drain_fails_queued_but_finishes_in_flight() -> None:
    async def main() -> None:
        model = FakeModel(block=True)
        batcher = Batcher([model], BatchingConfig(max_batch_size=8), clock=FakeClock())
        first = await busy(batcher)
        queued = [submit(batcher, rows(i)) for i in range(1, 4)]
        await spin(lambda: batcher.queued_samples == 3)
        closer = asyncio.ensure_future(batcher.close(drain=False))
        for task in queued:
            err = await error_of(task)
            assert err.code is ErrorCode.UNAVAILABLE
        assert batcher.queued_samples == 0
        await turns(10)
        assert not closer.done()  # the running batch still owns the replica
        model.release.set()
        await closer
        np.testing.assert_array_equal((await first)["y"], rows(0))
        assert model.sizes == [1]

    run(main())


def test_close_leaves_a_caller_supplied_executor_running() -> None:
    import concurrent.futures

    async def main() -> None:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            batcher = Batcher([FakeModel()], executor=pool, clock=FakeClock())
            await batcher.submit({"x": rows(1)})
            await batcher.close()
            assert pool.submit(lambda: 42).result(BOUND_S) == 42

    run(main())


# ----------------------------------------------------------------------------------------------- hooks


def test_on_batch_reports_sizes_and_its_errors_do_not_break_batching() -> None:
    async def main() -> None:
        clock = FakeClock()
        stats: list[BatchStats] = []

        def hook(s: BatchStats) -> None:
            stats.append(s)
            raise RuntimeError("metrics backend down")

        model = FakeModel(block=True)
        batcher = Batcher([model], BatchingConfig(max_batch_size=8), clock=clock, on_batch=hook)
        first = await busy(batcher)
        queued = [submit(batcher, rows(i)) for i in range(1, 4)]
        await spin(lambda: batcher.queued_samples == 3)
        clock.advance(0.5)
        model.release.set()
        await asyncio.gather(first, *queued)
        assert [(s.batch_size, s.padded_size, s.requests, s.replica, s.ok) for s in stats] == [
            (1, 1, 1, 0, True),
            (3, 3, 3, 0, True),
        ]
        assert stats[1].queue_wait_s == pytest.approx(0.5)
        await batcher.close()

    run(main())


# ----------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"max_batch_size": 0}, "max_batch_size must be >= 1"),
        ({"max_batch_size": 2.5}, "max_batch_size must be an integer"),
        ({"max_batch_size": True}, "max_batch_size must be an integer"),
        ({"max_queue_delay_s": -1}, "max_queue_delay_s must be a finite number >= 0"),
        ({"max_queue_delay_s": float("nan")}, "max_queue_delay_s must be a finite number >= 0"),
        ({"max_queue_delay_s": "soon"}, "max_queue_delay_s must be a number"),
        ({"max_queued": 0}, "max_queued must be >= 1"),
        ({"pad_to_allowed": "yes"}, "pad_to_allowed must be true or false"),
        ({"max_batch_size": 8, "allowed_batch_sizes": (4, 2, 8)}, "strictly increasing"),
        ({"max_batch_size": 8, "allowed_batch_sizes": (2, 2, 8)}, "strictly increasing"),
        ({"max_batch_size": 8, "allowed_batch_sizes": (2, 4)}, "must equal max_batch_size (8)"),
        ({"max_batch_size": 8, "allowed_batch_sizes": (0, 8)}, "allowed_batch_sizes entry must be >= 1"),
        ({"allowed_batch_sizes": "64"}, "allowed_batch_sizes must be a list"),
        ({"priority_levels": -1}, "priority_levels must be >= 0"),
        ({"priority_levels": 2, "default_priority_level": 3}, "default_priority_level must be between 1 and"),
        ({"default_priority_level": 1}, "default_priority_level must be between 1 and priority_levels (0)"),
    ],
)
def test_config_validation(kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        BatchingConfig(**kwargs)
    assert fragment in str(info.value)


def test_config_from_mapping() -> None:
    config = BatchingConfig.from_mapping(
        {"max_batch_size": 8, "allowed_batch_sizes": [2, 8], "max_queue_delay_s": "1e-3", "max_queued": 100}
    )
    assert config == BatchingConfig(
        max_batch_size=8, allowed_batch_sizes=(2, 8), max_queue_delay_s=0.001, max_queued=100
    )
    assert config.padded_size(3) == 8 and config.padded_size(2) == 2
    assert BatchingConfig.from_mapping(None) == BatchingConfig() == BatchingConfig.from_mapping({})
    with pytest.raises(ValueError, match="unknown batching option 'max_batch'"):
        BatchingConfig.from_mapping({"max_batch": 8})
    with pytest.raises(ValueError, match="max_queued must be an integer"):
        BatchingConfig.from_mapping({"max_queued": "lots"})
    with pytest.raises(ValueError, match="must be a mapping"):
        BatchingConfig.from_mapping([("max_batch_size", 8)])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one replica"):
        Batcher([], config)


# ----------------------------------------------------------------------------------------------- packaging


def test_importing_the_batcher_pulls_in_neither_tensorflow_nor_grpc() -> None:
    code = (
        "import sys, kerve.server.batcher\n"
        "heavy = sorted(m for m in ('tensorflow', 'grpc', 'keras') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
