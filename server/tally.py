"""Per-request metric updates as plain Python numbers, pushed into prometheus_client's instruments in bulk.

Every prometheus_client update takes a lock and makes four to eight Python calls (`inc`, `observe`, the
observability checks, the value's own `inc`); counting one request that way (requests counter, latency
histogram, in-flight gauge up and down) cost the event loop about a quarter of kerve's own Python calls per
request and a third of its loop CPU (`bench.request_path`). A tally is updated by the event loop thread alone with
attribute arithmetic (a histogram adds one `bisect`), and `push` moves what changed since the last push into the
instrument's child: when /metrics is scraped, and every second for processes of a `--processes` group, whose
values the parent reads from shared files instead of scraping them.

A push may run on another thread (the scrape's) while the loop updates: tallies only ever grow (gauges are set),
and each push remembers what it pushed and adds the difference, so no update is lost or counted twice; a scrape
that lands between a histogram's bucket and sum updates sees the sum one observation behind until the next one.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any


class _ValueTally:
    __slots__ = ("_child", "_pushed", "value")

    def __init__(self, child: Any) -> None:
        self._child = child
        self.value = 0
        self._pushed = 0


class CounterTally(_ValueTally):
    """A counter child's increments: `value += n` on the loop."""

    __slots__ = ()

    def push(self) -> None:
        value = self.value
        if value != self._pushed:
            self._child.inc(value - self._pushed)
            self._pushed = value


class GaugeTally(_ValueTally):
    """A gauge child's current value: `value = n` (or `+= 1` / `-= 1`) on the loop."""

    __slots__ = ()

    def push(self) -> None:
        value = self.value
        if value != self._pushed:
            self._child.set(value)
            self._pushed = value


class HistogramTally:
    """A histogram child's observations: per-bucket counts (Prometheus' `le` buckets, +Inf last) and the sum.

    prometheus_client has no call that adds a count to a bucket, so `push` adds to the child's bucket and sum
    values directly (`_buckets`, `_sum`, `_upper_bounds`: unchanged since its first releases; a unit test compares
    a pushed histogram's exposition with one fed by `observe`, so a change there fails the tests, not production).
    """

    __slots__ = ("_child", "_pushed_counts", "_pushed_sum", "bounds", "counts", "sum")

    def __init__(self, child: Any) -> None:
        self._child = child
        self.bounds: tuple[float, ...] = tuple(child._upper_bounds)
        self.counts = [0] * len(self.bounds)
        self.sum = 0.0
        self._pushed_counts = [0] * len(self.bounds)
        self._pushed_sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # the first bound >= value: Prometheus' `le`
        self.sum += value

    def push(self) -> None:
        counts, total = self.counts[:], self.sum
        for bucket, now, before in zip(self._child._buckets, counts, self._pushed_counts, strict=True):
            if now != before:
                bucket.inc(now - before)
        if total != self._pushed_sum:
            self._child._sum.inc(total - self._pushed_sum)
        self._pushed_counts, self._pushed_sum = counts, total
