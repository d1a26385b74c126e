"""Which of two equivalent ways of running a batch is faster for this model, learned from its own batches.

A TF1 session can run a batch's ops on TensorFlow's inter-op pool or on the thread that calls the model
(`RunOptions.inter_op_thread_pool = -1`). Which is faster depends on the model and the batch size: on the 2-core
benchmark VM, in process, the caller's thread ran the seed CNN's batches 4-15% faster at every size and the seed
LSTM's of 2 or more rows 1.2-1.6x slower, with the ResNet's in between (docs/benchmarks.md, eighteenth and
nineteenth sessions). No rule of thumb picks it, so each replica times both on the batches it serves: per bucket
of row counts (1, 2, 3-4, 5-8, ...), the first calls alternate between the two ways, and once each has `trials`
durations the one with the lower median is kept. Alternating makes drift on the machine (a load burst, another
model's batches) hit both alike; timing real batches in the server measures the call as the server pays for it,
beside its own threads. The ways alternate in blocks of `block` calls, the first of each untimed: a pool call right
after a caller-thread call finds the pool's threads asleep and pays to wake them, which a server that kept to the
pool would not (alternating call by call, the seed LSTM's batches of 2-4 rows timed faster on the caller's thread
in the server, though they ran 1.2-1.4x slower there in process).

A choice is not for good: what is faster moves with the load (a pool hand-off wakes a sleeping thread at low load
and finds a spinning or busy one at high load) and with whatever else the host runs, and the first batches a bucket
sees come at start-up, often under a load unlike the day's. So after `retime_after` calls a decided bucket times
both ways again and keeps the winner; each time the trials confirm the choice the wait doubles (up to
`retime_max`), and a changed choice starts it over. The trials cost at most half of `2 * trials * block` calls on
the slower way: a few percent of a bucket's calls at the first re-time, less after. Pure logic, no TensorFlow:
unit-tested with made-up durations.
"""

from __future__ import annotations

import logging
import math
import re
import statistics
import threading
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("kerve.server.call_choice")

AUTO_MAX_ROWS = 32  # largest batch `auto` times both ways for: past it, a batch's ops outlast any hand-off
TRIALS = 8  # durations of each way per bucket before choosing
BLOCK = 4  # consecutive calls one way before switching; the first of each is not timed
RETIME_AFTER = 1024  # calls a bucket runs its chosen way before timing both ways again
RETIME_MAX = 65536  # the longest that wait grows to while the trials keep confirming the choice


def bucket(rows: int) -> int:
    """The power of two at or above `rows`: batch sizes that close share one choice."""
    return 1 << max(0, rows - 1).bit_length()


@dataclass
class _Bucket:
    durations: tuple[list[float], list[float]] = field(default_factory=lambda: ([], []))
    calls: int = 0  # calls since the trials began
    chosen: bool | None = None  # None while the trials run
    standing: bool | None = None  # the choice in force before these trials (re-timing), reported meanwhile
    kept: int = 0  # calls run the chosen way since the choice (counted without the lock: approximate)
    retime: int = 0  # kept calls before the next trials


_WAYS = {True: "the calling thread", False: "TensorFlow's inter-op pool"}
_LOGGED = re.compile(
    r"call_choice: (?:(?P<label>.*?): )?batches of (?P<rows>\d+(?:-\d+)?) rows (?:now |still )?run on (?P<way>"
    + "|".join(map(re.escape, _WAYS.values()))
    + r") \(median (?P<there>[\d.]+) ms there, (?P<other>[\d.]+) ms on the other\)"
)


def logged_choices(log_text: str) -> list[dict[str, Any]]:
    """The choices a server's log records, in order (the log is where a choice leaves the server): label, rows,
    caller_thread, median_ms (the way kept) and other_ms. A re-timed bucket whose choice changed appears again;
    its last entry is the one in force. `bench.run` keeps them beside its figures."""
    return [
        {
            "label": found["label"] or "",
            "rows": found["rows"],
            "caller_thread": found["way"] == _WAYS[True],
            "median_ms": float(found["there"]),
            "other_ms": float(found["other"]),
        }
        for found in _LOGGED.finditer(log_text)
    ]


class CallerThreadChoice:
    """Per bucket of row counts up to `max_rows`: run on the caller's thread (True) or the pool (False)?

    `choose(rows)` says which way to run a batch and whether to time it; `record` takes the timed duration.
    Batches over `max_rows` rows always run on the pool. A decided bucket is timed again after `retime_after` calls
    (module docstring). Safe to use from several threads.
    """

    def __init__(
        self,
        max_rows: int = AUTO_MAX_ROWS,
        trials: int = TRIALS,
        label: str = "",
        block: int = BLOCK,
        retime_after: int = RETIME_AFTER,
        retime_max: int = RETIME_MAX,
    ) -> None:
        if max_rows < 0 or trials < 1 or block < 2:
            raise ValueError(f"max_rows must be >= 0, trials >= 1 and block >= 2, got {max_rows}, {trials} and {block}")
        if not 1 <= retime_after <= retime_max:
            raise ValueError(f"retime_after must be in 1..retime_max, got {retime_after} and {retime_max}")
        self.max_rows = max_rows
        self.trials = trials
        self.block = block
        self.label = label
        self.retime_after = retime_after
        self.retime_max = retime_max
        self._buckets: dict[int, _Bucket] = {}
        self._lock = threading.Lock()

    def choose(self, rows: int) -> tuple[bool, bool]:
        """(run this batch on the caller's thread, time it and `record` the duration)."""
        if not 0 < rows <= self.max_rows:
            return False, False
        found = self._buckets.get(bucket(rows))
        if found is not None and found.chosen is not None:
            found.kept += 1  # a lost increment between threads only delays the re-time a little
            if found.kept <= found.retime:
                return found.chosen, False
        with self._lock:
            found = self._buckets.setdefault(bucket(rows), _Bucket())
            if found.chosen is not None:
                if found.kept <= found.retime:
                    return found.chosen, False
                found.standing, found.chosen, found.calls = found.chosen, None, 0  # time both ways again
            call = found.calls
            found.calls += 1
            # blocks alternate, starting on the caller's thread; the first call of a block pays for the switch
            return (call // self.block) % 2 == 0, call % self.block != 0

    def record(self, rows: int, caller_thread: bool, seconds: float) -> None:
        with self._lock:
            found = self._buckets.get(bucket(rows))
            if found is None or found.chosen is not None:
                return
            found.durations[caller_thread].append(seconds)
            if min(len(durations) for durations in found.durations) < self.trials:
                return
            pool, caller = (statistics.median(durations) for durations in found.durations)
            found.chosen = chosen = caller < pool
            found.durations[0].clear()
            found.durations[1].clear()
            standing, found.standing = found.standing, None
            confirmed = standing is chosen
            found.retime = min(2 * found.retime, self.retime_max) if confirmed else self.retime_after
            found.kept = 0
        size = bucket(rows)
        rows_text = f"{size // 2 + 1}-{size}" if size > 2 else str(size)
        log.log(
            logging.DEBUG if confirmed else logging.INFO,
            "%sbatches of %s rows %srun on %s (median %.3f ms there, %.3f ms on the other)",
            f"{self.label}: " if self.label else "",
            rows_text,
            "" if standing is None else "still " if confirmed else "now ",
            _WAYS[chosen],
            1e3 * min(pool, caller),
            1e3 * max(pool, caller),
        )

    def trial_calls(self) -> int:
        """The most calls a bucket's first trials take: blocks alternate between the two ways and the first call of
        each is not timed, so each way needs ceil(trials / (block - 1)) blocks."""
        return 2 * self.block * math.ceil(self.trials / (self.block - 1))

    def chosen(self) -> dict[int, bool]:
        """Bucket (largest row count in it) -> caller's thread, for the buckets decided so far (a bucket being
        timed again reports the choice in force until the trials end)."""
        with self._lock:
            return {
                size: way
                for size, b in sorted(self._buckets.items())
                if (way := b.chosen if b.chosen is not None else b.standing) is not None
            }


class FixedCallerThread:
    """`--caller-thread-max-batch N`: batches of at most `max_rows` rows on the caller's thread, never timed."""

    def __init__(self, max_rows: int) -> None:
        if max_rows < 0:
            raise ValueError(f"max_rows must be >= 0, got {max_rows}")
        self.max_rows = max_rows

    def choose(self, rows: int) -> tuple[bool, bool]:
        return 0 < rows <= self.max_rows, False

    def record(self, rows: int, caller_thread: bool, seconds: float) -> None:
        """Nothing to learn: the choice is fixed."""

    def trial_calls(self) -> int:
        """No trials."""
        return 0


def policy(max_rows: int | None, label: str = "") -> CallerThreadChoice | FixedCallerThread:
    """`None` (auto): time both ways per bucket up to AUTO_MAX_ROWS rows; a number: that fixed limit (0: off)."""
    return CallerThreadChoice(AUTO_MAX_ROWS, label=label) if max_rows is None else FixedCallerThread(max_rows)
