"""Whether a server's requests are arriving one at a time, each after the previous one finished.

A batch-1 request's model call costs two thread hops (to a worker and back to the event loop) that matter only at
concurrency 1, where they are a visible share of its latency (docs/benchmarks.md, fifteenth session). Running the
call on the loop thread saves them, but blocks the loop meanwhile: harmless when nothing else is in flight, costly
under load, where the loop has other requests to decode and answer. The loop cannot see the requests still in
gRPC (being received, or their answers being sent), so "nothing else in kerve's handlers right now" is not enough:
under load that is true now and then. A run of arrivals that each found the server empty is the sign that the
traffic is serial, as one closed-loop client's is.
"""

from __future__ import annotations

SERIAL_RUN = 8
"""Arrivals in a row that must each find no other request in flight before the next counts as serial: at
concurrency 8 the chance that eight in a row do, with each request inside the handler even a third of its time,
is under one in a thousand."""


class SerialTraffic:
    """Counts the requests in flight and the run of arrivals that found none. Event loop thread only."""

    __slots__ = ("_needed", "_run", "live")

    def __init__(self, needed: int = SERIAL_RUN) -> None:
        if needed < 1:
            raise ValueError(f"needed must be >= 1, got {needed}")
        self._needed = needed
        self._run = 0
        self.live = 0

    def arrive(self) -> bool:
        """A request arrived; True when it is alone and the traffic has been serial (its caller calls `leave`
        once it ends, whatever the answer)."""
        self._run = self._run + 1 if self.live == 0 else 0
        self.live += 1
        return self._run > self._needed

    def leave(self) -> None:
        self.live -= 1
