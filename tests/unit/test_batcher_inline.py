"""A batch-1 call on the event loop thread (`inline_max_s`) happens only when every condition for it holds: its
caller marked it inline, it is one row alone, nothing else of the batcher runs, and the batcher's 1-row calls have
averaged within the budget. Fake models on a fake clock (no TensorFlow); the thread a call ran on is recorded."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import numpy as np
from test_batcher import BOUND_S, FakeClock, busy, rows, run, spin, submit

from kerve.server.batcher import Batcher, BatchingConfig
from kerve.server.errors import ServingError


class TimedModel:
    """y = 2x, costing `cost` seconds on the fake clock per call; records the thread of each call."""

    def __init__(self, clock: FakeClock, cost: float, release: threading.Event | None = None) -> None:
        self.clock = clock
        self.cost = cost
        self.release = release
        self.threads: list[int] = []
        self.fail = False

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.threads.append(threading.get_ident())
        if self.release is not None and not self.release.wait(BOUND_S):
            raise RuntimeError("test model was never released")
        self.clock.advance(self.cost)
        if self.fail:
            raise ValueError("model failed")
        return {"y": inputs["x"] * 2}

    def on_loop(self) -> list[bool]:
        main = threading.get_ident()
        return [thread == main for thread in self.threads]


def make(cost: float, budget: float = 0.002, **config: Any) -> tuple[TimedModel, Batcher]:
    clock = FakeClock()
    model = TimedModel(clock, cost)
    return model, Batcher([model], BatchingConfig(**config), clock=clock, inline_max_s=budget)


async def one(batcher: Batcher, value: float, inline: bool = True) -> np.ndarray:
    out = await batcher.submit({"x": rows(value)}, inline=inline)
    return out["y"]


async def serial(batcher: Batcher, count: int, first: int = 0, inline: bool = True) -> None:
    """`count` 1-row requests, each sent once the previous one answered, each answer checked."""
    for i in range(first, first + count):
        np.testing.assert_array_equal(await one(batcher, i, inline), rows(2 * i))


def test_a_serial_request_runs_on_the_loop_once_a_threaded_call_showed_the_model_is_fast() -> None:
    async def main() -> None:
        model, batcher = make(cost=0.001)
        await serial(batcher, 4)
        # the first call's cost is unknown, so it goes to a worker; it measured 1 ms against a 2 ms budget
        assert model.on_loop() == [False, True, True, True]
        await batcher.close()

    run(main())


def test_without_the_callers_mark_or_a_budget_every_call_goes_to_a_worker() -> None:
    async def main() -> None:
        model, batcher = make(cost=0.0)
        await serial(batcher, 3, inline=False)
        model_off, batcher_off = make(cost=0.0, budget=0.0)  # the default: off, even for a free model
        await serial(batcher_off, 3)
        assert model.on_loop() == [False] * 3 and model_off.on_loop() == [False] * 3
        await batcher.close()
        await batcher_off.close()

    run(main())


def test_a_model_slower_than_the_budget_stays_in_workers_and_one_that_slows_down_goes_back() -> None:
    async def main() -> None:
        slow, batcher = make(cost=0.005)
        await serial(batcher, 3)
        assert slow.on_loop() == [False] * 3
        await batcher.close()

        model, batcher = make(cost=0.001)
        await serial(batcher, 2)
        model.cost = 0.010  # the average (0.8 old + 0.2 new) passes 2 ms after one slow call: 0.8 + 2 = 2.8 ms
        await serial(batcher, 2, first=2)
        assert model.on_loop() == [False, True, True, False]
        await batcher.close()

    run(main())


def test_batches_of_several_rows_or_requests_and_calls_beside_a_running_batch_go_to_workers() -> None:
    async def main() -> None:
        clock = FakeClock()
        release = threading.Event()
        release.set()
        model = TimedModel(clock, 0.001, release)
        # no hold for a fuller batch: a warm batcher would arm a timer of real time, and the loop turns counted
        # below could run out before it fires (a fast machine runs 200 turns within its 1 ms)
        config = BatchingConfig(max_batch_size=8, max_queue_delay_s=0)
        batcher = Batcher([model, model], config, clock=clock, inline_max_s=0.002)
        await one(batcher, 0)  # measured in a worker
        out = await batcher.submit({"x": rows(1, 2)}, inline=True)  # two rows
        np.testing.assert_array_equal(out["y"], rows(2, 4))
        pair = [submit(batcher, rows(v), inline=True) for v in (3, 4)]  # two requests, one batch
        await asyncio.gather(*pair)
        assert model.on_loop() == [False, False, False]

        release.clear()  # one batch holds a replica: the next runs beside it, in the other replica's worker
        held = await busy(batcher, 5)
        beside = submit(batcher, rows(6), inline=True)
        await spin(lambda: batcher.in_flight_batches == 2)
        release.set()
        await asyncio.gather(held, beside)
        assert model.on_loop() == [False] * 5
        await batcher.close()

    run(main())


def test_a_failing_inline_call_fails_its_request_and_the_batcher_goes_on() -> None:
    async def main() -> None:
        model, batcher = make(cost=0.001)
        await one(batcher, 0)
        model.fail = True
        try:
            await one(batcher, 1)
        except ServingError as exc:
            assert "model failed" in exc.message
        else:
            raise AssertionError("the failing call answered")
        model.fail = False
        np.testing.assert_array_equal(await one(batcher, 2), rows(4))
        assert model.on_loop() == [False, True, True]
        assert batcher.in_flight_batches == 0
        await batcher.close()

    run(main())
