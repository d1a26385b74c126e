"""Tallies (server/tally.py) against prometheus_client fed directly: the same updates must expose the same text,
pushes never lose or double an update, even while another thread pushes, and a scrape or `push_every` pushes."""

from __future__ import annotations

import asyncio
import threading
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from kerve.server.metrics import LATENCY_BUCKETS, Metrics
from kerve.server.tally import CounterTally, GaugeTally, HistogramTally

# on a bound (Prometheus' `le` includes it), between bounds, below the first, above the last, zero
VALUES = (0.001, 0.0007, 0.0001, 50.0, 0.0, 0.2, 0.2, 3.5, 1e-9)


def instruments(registry: CollectorRegistry) -> tuple[Counter, Gauge, Histogram]:
    return (
        Counter("c", "c", ["k"], registry=registry),
        Gauge("g", "g", ["k"], registry=registry),
        Histogram("h", "h", ["k"], buckets=LATENCY_BUCKETS, registry=registry),
    )


def test_pushed_tallies_expose_what_direct_updates_do() -> None:
    direct, tallied = CollectorRegistry(), CollectorRegistry()
    counter, gauge, histogram = instruments(direct)
    c, g, h = (instrument.labels("a") for instrument in instruments(tallied))
    count, level, latency = CounterTally(c), GaugeTally(g), HistogramTally(h)
    for step, value in enumerate(VALUES):
        counter.labels("a").inc()
        count.value += 1
        gauge.labels("a").set(step)
        level.value = step
        histogram.labels("a").observe(value)
        latency.observe(value)
        if step % 3 == 0:  # pushes in between must add only what is new
            for tally in (count, level, latency):
                tally.push()
    for tally in (count, level, latency):
        tally.push()
        tally.push()  # nothing new: nothing added
    assert exposition(tallied) == exposition(direct)


def exposition(registry: CollectorRegistry) -> list[str]:
    return [line for line in generate_latest(registry).decode().splitlines() if "_created" not in line]


def test_updates_during_pushes_from_another_thread_are_counted_once() -> None:
    registry = CollectorRegistry()
    _, _, histogram = instruments(registry)
    child = histogram.labels("a")
    tally = HistogramTally(child)
    updates = 200_000
    stop = threading.Event()

    def pusher() -> None:
        while not stop.is_set():
            tally.push()

    thread = threading.Thread(target=pusher)
    thread.start()
    try:
        for i in range(updates):
            tally.observe(0.003 if i % 2 else 0.0004)
    finally:
        stop.set()
        thread.join(timeout=30)
    tally.push()
    assert registry.get_sample_value("h_count", {"k": "a"}) == updates
    assert registry.get_sample_value("h_bucket", {"k": "a", "le": "0.0005"}) == updates / 2
    assert abs(registry.get_sample_value("h_sum", {"k": "a"}) - updates / 2 * 0.0034) < 1e-6


def test_a_scrape_reads_every_update_made_before_it() -> None:
    metrics = Metrics(CollectorRegistry())
    metrics.observe_request("m", "1", "v2", "OK", 0.003)
    metrics.count_request("m", "", "v2", "INVALID_ARGUMENT")
    metrics.inflight_gauge("m").value += 2
    metrics.device_batches("m", "CPU:0").value += 1
    metrics.observe_batch("m", 4, 0.001, 0.002)
    text = generate_latest(metrics.registry).decode()
    for line in (
        'kerve_requests_total{code="OK",model="m",protocol="v2",version="1"} 1.0',
        'kerve_requests_total{code="INVALID_ARGUMENT",model="m",protocol="v2",version=""} 1.0',
        'kerve_request_duration_seconds_bucket{le="0.005",model="m",protocol="v2"} 1.0',
        'kerve_inflight_requests{model="m"} 2.0',
        'kerve_batches_total{device="CPU:0",model="m"} 1.0',
        'kerve_batch_size_count{model="m"} 1.0',
        'kerve_compute_duration_seconds_sum{model="m"} 0.002',
    ):
        assert line in text.splitlines(), line


def test_push_every_keeps_the_instruments_current_without_a_scrape() -> None:
    metrics = Metrics(CollectorRegistry())
    child = metrics.requests.labels("m", "1", "v2", "OK")

    async def main() -> None:
        pusher = asyncio.create_task(metrics.push_every(0.01))
        try:
            metrics.observe_request("m", "1", "v2", "OK", 0.003)
            deadline = time.monotonic() + 10
            while child._value.get() != 1 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
        finally:
            pusher.cancel()
        assert child._value.get() == 1  # read without collecting: only push_every can have put it there

    asyncio.run(main())
