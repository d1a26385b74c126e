"""The messages of one bidirectional stream between being read and being answered, answered in arrival order.

A stream keeps many messages in flight so that they share batches, yet must answer them in order. Each message's
engine call completes into the message's own slot (the call's `Completion`), and the stream's writer is woken only
when the answer at the head of the line is ready; answers behind it that are already there leave without waiting.
That is one task wake-up per message on the event loop, the one serial stage of the server, where a queue between
reader and writer plus an asyncio future per message cost two, and the queue's own bookkeeping besides.

No protocol here: the adapter decides what a slot's request is and how an answer or an error becomes a message.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from .errors import ErrorCode, ServingError
from .inference import Call
from .types import InferResponse

__all__ = ["Pipeline", "Slot"]


class Slot:
    """One message of a stream: its engine call's completion, or a message rejected before it could start."""

    __slots__ = ("_cancelled", "_pipeline", "call", "error", "outputs", "ready", "request", "response")

    def __init__(self, pipeline: Pipeline, request: Any) -> None:
        self._pipeline = pipeline
        self._cancelled = False
        self.request = request  # the wire message, for the adapter's error answer
        self.outputs: Any = None  # the adapter's own: how the message asked for its outputs back
        self.call: Call | None = None
        self.response: InferResponse | None = None
        self.error: ServingError | None = None
        self.ready = False

    def reject(self, error: ServingError) -> None:
        """The message never reached the engine; it is answered with ``error`` in its turn."""
        self.error = error
        self.ready = True

    # ---- the call's Completion (called on the event loop by the batch's completion callback)

    def done(self) -> bool:
        return self.ready

    def cancelled(self) -> bool:
        return self._cancelled

    def set_result(self, result: InferResponse, /) -> None:
        self.response = result
        self._finish()

    def set_exception(self, exception: BaseException, /) -> None:
        if not isinstance(exception, ServingError):  # Call only delivers ServingErrors; never let one escape typed
            exception = ServingError(ErrorCode.INTERNAL, str(exception) or type(exception).__name__)
        self.error = exception
        self._finish()

    def exception(self) -> BaseException | None:
        return self.error

    def cancel(self) -> bool:
        if self.ready:
            return False
        self.ready = self._cancelled = True  # nobody reads it: the stream is going away
        return True

    def _finish(self) -> None:
        self.ready = True
        self._pipeline.answered(self)


class Pipeline:
    """Slots in arrival order. One reader pushes, one writer takes answered slots off the head.

    The reader pauses (``room``) while ``window`` messages are unanswered, so a client that writes faster than the
    model answers is slowed by gRPC's flow control instead of growing the server's memory.
    """

    def __init__(self, window: int) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self._window = window
        self._slots: deque[Slot] = deque()
        self._writer: asyncio.Future[None] | None = None  # the writer, asleep until the head is answered
        self._reader: asyncio.Future[None] | None = None  # the reader, asleep until there is room
        self._ended = False

    def __len__(self) -> int:
        return len(self._slots)

    def slot(self, request: Any) -> Slot:
        """A slot for ``request``, to pass to the engine as its call's completion and then to ``push``."""
        return Slot(self, request)

    def push(self, slot: Slot) -> None:
        self._slots.append(slot)
        if slot.ready and self._slots[0] is slot:  # rejected up front, and first in line
            _wake(self._writer)

    @property
    def full(self) -> bool:
        return len(self._slots) >= self._window

    async def room(self) -> None:
        """Wait until fewer than ``window`` messages are unanswered (the reader's side)."""
        while self.full:
            self._reader = asyncio.get_running_loop().create_future()
            await self._reader

    def end(self) -> None:
        """No more messages: the writer stops once every pushed one is answered."""
        self._ended = True
        _wake(self._writer)

    def answered(self, slot: Slot) -> None:
        if self._slots and self._slots[0] is slot:
            _wake(self._writer)

    async def next(self) -> Slot | None:
        """The head once it is answered, or None once the reader ended and everything pushed was taken."""
        while True:
            slots = self._slots
            if slots and slots[0].ready:
                slot = slots.popleft()
                slot.call = None  # the call holds the slot as its completion: no cycle to leave to the GC
                if self._reader is not None and len(slots) < self._window:
                    _wake(self._reader)
                    self._reader = None
                return slot
            if not slots and self._ended:
                return None
            self._writer = asyncio.get_running_loop().create_future()
            try:
                await self._writer
            finally:
                self._writer = None

    def cancel(self) -> None:
        """The stream is going away: every call still running or queued is cancelled (counted, never run). The
        adapter cancels its reader first; a reader left waiting in ``room`` stays asleep."""
        while self._slots:
            slot = self._slots.popleft()
            call, slot.call = slot.call, None
            if call is not None:
                call.cancel()


def _wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)
