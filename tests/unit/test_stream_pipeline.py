"""kerve.server.stream_pipeline: a stream's answers leave in arrival order, the writer sleeps until the head is
answered, the reader until there is room, and a stream going away cancels what it started. Pure asyncio: the
slots are completed by hand, as the batch's completion callback would; the event loop advances by turns."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from kerve.server.errors import ErrorCode, ServingError
from kerve.server.stream_pipeline import Pipeline, Slot
from kerve.server.types import InferResponse


async def spin(condition: Callable[[], bool] = lambda: False, turns: int = 50) -> bool:
    """Run the loop up to `turns` turns or until `condition` holds; whether it held."""
    for _ in range(turns):
        if condition():
            return True
        await asyncio.sleep(0)
    return condition()


def answer(name: str) -> InferResponse:
    return InferResponse(model=name, version=1, outputs={})


class FakeCall:
    def __init__(self) -> None:
        self.cancelled = 0

    def cancel(self) -> None:
        self.cancelled += 1


def test_answers_leave_in_arrival_order_and_only_a_ready_head_wakes_the_writer() -> None:
    async def main() -> None:
        pipeline = Pipeline(8)
        slots = [pipeline.slot(f"m{i}") for i in range(3)]
        for slot in slots:
            pipeline.push(slot)
        taken: list[Slot] = []

        async def writer() -> None:
            while (slot := await pipeline.next()) is not None:
                taken.append(slot)

        task = asyncio.ensure_future(writer())
        slots[2].set_result(answer("c"))
        slots[1].set_result(answer("b"))
        assert not await spin(lambda: bool(taken))  # the head is not answered: nothing leaves
        slots[0].set_exception(ServingError(ErrorCode.DEADLINE_EXCEEDED, "late"))
        assert await spin(lambda: len(taken) == 3)  # the head and the two waiting behind it, in order
        assert [s.request for s in taken] == ["m0", "m1", "m2"]
        assert taken[0].error is not None and taken[0].error.code is ErrorCode.DEADLINE_EXCEEDED
        assert [s.response.model for s in taken[1:]] == ["b", "c"]  # type: ignore[union-attr]
        pipeline.end()
        await asyncio.wait_for(task, 1)

    asyncio.run(main())


def test_a_rejected_message_at_the_head_is_answered_without_any_call() -> None:
    async def main() -> None:
        pipeline = Pipeline(8)
        waiting = asyncio.ensure_future(pipeline.next())
        await spin()
        assert not waiting.done()
        slot = pipeline.slot("bad")
        slot.reject(ServingError(ErrorCode.INVALID_ARGUMENT, "input 'x': expected FP32"))
        pipeline.push(slot)
        assert await asyncio.wait_for(waiting, 1) is slot
        assert slot.error is not None and slot.call is None

    asyncio.run(main())


def test_end_lets_the_writer_finish_what_was_pushed_then_stop() -> None:
    async def main() -> None:
        pipeline = Pipeline(8)
        assert len(pipeline) == 0
        slot = pipeline.slot("last")
        pipeline.push(slot)
        pipeline.end()
        waiting = asyncio.ensure_future(pipeline.next())
        assert not await spin(waiting.done)  # ended, but one message is still unanswered
        slot.set_result(answer("last"))
        assert await asyncio.wait_for(waiting, 1) is slot
        assert await asyncio.wait_for(pipeline.next(), 1) is None

        empty = Pipeline(1)
        waiting = asyncio.ensure_future(empty.next())
        await spin()
        empty.end()  # a writer asleep on an empty pipeline hears the end
        assert await asyncio.wait_for(waiting, 1) is None

    asyncio.run(main())


def test_the_reader_waits_for_room_until_the_writer_takes_an_answer() -> None:
    async def main() -> None:
        pipeline = Pipeline(2)
        first, second = pipeline.slot(1), pipeline.slot(2)
        pipeline.push(first)
        assert not pipeline.full
        pipeline.push(second)
        assert pipeline.full
        room = asyncio.ensure_future(pipeline.room())
        second.set_result(answer("b"))  # answered, but behind an unanswered head: no room yet
        assert not await spin(room.done)
        first.set_result(answer("a"))
        assert await asyncio.wait_for(pipeline.next(), 1) is first
        await asyncio.wait_for(room, 1)
        assert not pipeline.full

    asyncio.run(main())


def test_cancel_cancels_every_call_left_and_no_slot_keeps_its_call() -> None:
    async def main() -> None:
        pipeline = Pipeline(8)
        calls = [FakeCall() for _ in range(3)]
        slots = []
        for i, call in enumerate(calls):
            slot = pipeline.slot(i)
            slot.call = call  # type: ignore[assignment]
            pipeline.push(slot)
            slots.append(slot)
        rejected = pipeline.slot("rejected")
        rejected.reject(ServingError(ErrorCode.NOT_FOUND, "no such model"))
        pipeline.push(rejected)
        slots[0].set_result(answer("a"))
        assert await asyncio.wait_for(pipeline.next(), 1) is slots[0]
        pipeline.cancel()
        assert [c.cancelled for c in calls] == [0, 1, 1]  # taken already: not cancelled
        assert len(pipeline) == 0
        assert all(s.call is None for s in slots)  # taken or cancelled: no call <-> slot cycle left for the GC
        # A call's own cancel marks its slot done; a late answer to it must not wake anything or raise.
        assert slots[1].cancel() and slots[1].cancelled() and slots[1].done()
        assert not slots[0].cancel()  # already answered

    asyncio.run(main())


def test_a_non_serving_error_becomes_internal() -> None:
    async def main() -> None:
        pipeline = Pipeline(1)
        slot = pipeline.slot("x")
        pipeline.push(slot)
        slot.set_exception(RuntimeError("boom"))
        assert slot.exception() is slot.error
        assert slot.error is not None and slot.error.code is ErrorCode.INTERNAL and "boom" in slot.error.message

    asyncio.run(main())


def test_a_window_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="window"):
        Pipeline(0)
