"""`batches_per_replica: auto`: one batch at a time on each replica, or two, whichever serves more rows per second.

A second batch at once on a replica uses the cores its call leaves idle (the seed LSTM's chain of small steps runs
on one core) and costs a model whose bound lies elsewhere (the light CNN's is the event loop and the GIL), whose
batches only halve: over four alternating pairs on the 2-core VM two batches per replica served the LSTM 1.17x,
the ResNet 1.06x and the light CNN 0.97x (docs/benchmarks.md, twenty-fourth session). Nothing known when a model
loads says which kind it is, so its batcher measures it on the traffic it serves. While work waits for the replicas
(a window in which they ran batches at least `busy_min` of the time, and at least half its batches ended with rows
queued), it alternates windows of two and one batch at once and keeps the setting with the higher median rows per
second over `trials` windows each; two must win by `gain`, since one batch at a time makes larger batches and holds
less memory. A model whose replicas idle between batches, or whose callers wait for each answer before they send
again (one at a time: a second slot would find nothing to run), never pays for trials.

A window opens and closes at batch completions, so its rows are exactly those of the batches completed in it. After
a switch the completions of batches that started under the old setting are skipped (at most replicas x the old
limit of them), so no window mixes the two. As with `call_choice`, a choice is not for good: the load moves, so it is
timed again after `retime_s` (doubling while trials confirm it, up to `retime_max_s`; a changed choice starts over).
Pure logic, the clock passed in: unit-tested with made-up completions.
"""

from __future__ import annotations

import logging
import math
import re
import statistics
from collections.abc import Sequence

from .types import device_kind

log = logging.getLogger("kerve.server.slot_choice")

MOST = 2  # batches at once per replica that `auto` tries: past two, batches shrink further for no core to gain
WINDOW_S = 0.5  # a window's length (it closes at the first completion after this long)
TRIALS = 3  # windows of each setting per trial
BUSY_MIN = 0.75  # replicas' busy share over a window that makes one batch at a time worth questioning
GAIN = 1.03  # how much more two batches at once must serve to be kept
RETIME_S = 30.0  # seconds before a choice is timed again
RETIME_MAX_S = 960.0  # the longest that wait grows to while trials keep confirming the choice


_LOGGED = re.compile(
    r"slot_choice: (?:(?P<label>.*?): )?(?P<limit>\d+) batch\(es\) at once per replica \(median (?P<more>\d+) rows/s "
    r"with \d+, (?P<one>\d+) with 1\)"
)


def logged_choices(log_text: str) -> list[dict[str, object]]:
    """The choices a server's log records, in order: label, batches_per_replica, and the median rows/s measured
    with more (`more_rows_per_s`) and with one (`one_rows_per_s`). A first choice and every change are logged at
    INFO, a confirmed one at DEBUG; the last entry of a label is the one in force. `bench.run` keeps them."""
    return [
        {
            "label": found["label"] or "",
            "batches_per_replica": int(found["limit"]),
            "more_rows_per_s": int(found["more"]),
            "one_rows_per_s": int(found["one"]),
        }
        for found in _LOGGED.finditer(log_text)
    ]


def learns_slots(devices: Sequence[str]) -> bool:
    """Whether `auto` measures its limit on replicas on these devices: CPUs only. On a GPU or TPU a second batch at
    once doubles the device memory batches take and contends for one stream of kernels, and no session has measured
    it there (no GPU was lent), so `auto` runs one batch at a time on them; a number asks for more."""
    return bool(devices) and all((kind := device_kind(device)) is not None and kind[0] == "CPU" for device in devices)


class SlotChoice:
    """The batches each replica of one batcher runs at once (`limit`, 1 or `most`), learned from its completions.

    The batcher calls `observe` on the event loop after every successful batch; a number returned is the new limit,
    which the batcher applies at once (more slots: dispatch into them; fewer: a running batch's slot is dropped as
    it ends). Not thread-safe: one loop thread drives it, as it drives the batcher.
    """

    def __init__(
        self,
        replicas: int = 1,
        label: str = "",
        *,
        most: int = MOST,
        window_s: float = WINDOW_S,
        trials: int = TRIALS,
        busy_min: float = BUSY_MIN,
        gain: float = GAIN,
        retime_s: float = RETIME_S,
        retime_max_s: float = RETIME_MAX_S,
    ) -> None:
        if replicas < 1 or most < 2 or trials < 1 or window_s <= 0 or gain < 1:
            raise ValueError(
                f"replicas must be >= 1, most >= 2, trials >= 1, window_s > 0 and gain >= 1, got {replicas}, "
                f"{most}, {trials}, {window_s} and {gain}"
            )
        if not 0 < retime_s <= retime_max_s:
            raise ValueError(f"retime_s must be in (0, retime_max_s], got {retime_s} and {retime_max_s}")
        self.replicas = replicas
        self.label = label
        self.most = most
        self.window_s = window_s
        self.trials = trials
        self.busy_min = busy_min
        self.gain = gain
        self.retime_s = retime_s
        self.retime_max_s = retime_max_s
        self.limit = 1
        self._skip = 0  # completions still to skip after a switch (batches started under the old limit)
        self._opened = math.nan  # when the current window opened (a completion's time); nan: not open yet
        self._rows = 0
        self._busy_s = 0.0
        self._batches = 0
        self._backlogged = 0  # batches of the window that ended with rows queued
        self._blocks: list[int] = []  # limits still to measure in the running trial
        self._rates: dict[int, list[float]] = {}  # rows/s by limit in the running trial; empty: no trial
        self._standing = 0  # the limit in force when the running trial began
        self._next_trial = -math.inf
        self._wait = retime_s

    @property
    def trying(self) -> bool:
        """Whether a trial is running (the limit alternates)."""
        return bool(self._rates)

    def observe(self, now: float, rows: int, call_s: float, queued: int) -> int | None:
        """A batch of `rows` rows whose model call took `call_s` completed at `now` with `queued` rows waiting for a
        batch: the new limit, or None."""
        if self._skip:
            self._skip -= 1
            if not self._skip:
                self._open(now)
            return None
        if math.isnan(self._opened):
            self._open(now)
            return None
        self._rows += rows
        self._busy_s += call_s
        self._batches += 1
        self._backlogged += queued > 0
        elapsed = now - self._opened
        if elapsed < self.window_s:
            return None
        rate = self._rows / elapsed
        busy = self._busy_s / (elapsed * self.replicas)
        waiting = 2 * self._backlogged >= self._batches
        self._open(now)
        if self._rates:
            self._rates[self.limit].append(rate)
            return self._switch(self._blocks.pop(0)) if self._blocks else self._decide(now)
        if now < self._next_trial or not waiting or (self.limit == 1 and busy < self.busy_min):
            return None
        other = self.most if self.limit == 1 else 1
        self._standing = self.limit
        self._rates = {1: [], self.most: []}
        self._blocks = [self.limit, other] * self.trials
        self._blocks.pop()  # the last block's limit is `other`, the one switched to now
        return self._switch(other)

    def _open(self, now: float) -> None:
        self._opened = now
        self._rows = 0
        self._busy_s = 0.0
        self._batches = 0
        self._backlogged = 0

    def _switch(self, limit: int) -> int:
        self._skip = self.replicas * self.limit  # batches possibly in flight under the old limit
        self._opened = math.nan
        self.limit = limit
        return limit

    def _decide(self, now: float) -> int | None:
        one, more = statistics.median(self._rates[1]), statistics.median(self._rates[self.most])
        chosen = self.most if more >= self.gain * one else 1
        confirmed = chosen == self._standing and self._next_trial > -math.inf  # a first trial confirms nothing
        self._wait = min(2 * self._wait, self.retime_max_s) if confirmed else self.retime_s
        self._next_trial = now + self._wait
        self._rates = {}
        log.log(
            logging.DEBUG if confirmed else logging.INFO,
            "%s%d batch(es) at once per replica (median %.0f rows/s with %d, %.0f with 1); timed again in %.0f s",
            f"{self.label}: " if self.label else "",
            chosen,
            more,
            self.most,
            one,
            self._wait,
        )
        return self._switch(chosen) if chosen != self.limit else None
