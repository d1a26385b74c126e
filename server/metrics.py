"""Prometheus metrics, named by Prometheus' rules (base units, `_total` counters).

The engine and manager call these methods with plain values (model, version, protocol, status code name);
nothing here knows a wire format. Each server owns its own registry so several can run in one process. In a
`serve --processes N` group each process writes its values to a shared directory (PROMETHEUS_MULTIPROC_DIR) and
the parent exports their combination.

What changes per request or per batch is kept in tallies (tally.py) and pushed into the instruments when /metrics
is scraped and once a second (`push_every`, for a group's processes, which are never scraped themselves): a
group's figures are at most that second behind.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Metric, start_http_server
from prometheus_client.metrics import MetricWrapperBase

from .tally import CounterTally, GaugeTally, HistogramTally

log = logging.getLogger("kerve.server.metrics")

_TALLIES: dict[type, Any] = {Counter: CounterTally, Gauge: GaugeTally, Histogram: HistogramTally}

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
UNKNOWN_MODEL = "<unknown>"  # bounds label cardinality: clients can send any model name


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        # Updated per request or per batch through tallies (tally.py), registered through one collector that
        # pushes the tallies first, so a scrape reads every update made before it
        self.requests = Counter(
            "kerve_requests", "Inference requests by outcome.", ["model", "version", "protocol", "code"], registry=None
        )
        self.request_seconds = Histogram(
            "kerve_request_duration_seconds",
            "Time from decode to response.",
            ["model", "protocol"],
            buckets=LATENCY_BUCKETS,
            registry=None,
        )
        self.queue_seconds = Histogram(
            "kerve_queue_duration_seconds",
            "Time a request waited before its batch ran.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=None,
        )
        self.compute_seconds = Histogram(
            "kerve_compute_duration_seconds",
            "Model execution time per batch.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=None,
        )
        self.batch_size = Histogram(
            "kerve_batch_size", "Samples per model execution.", ["model"], buckets=BATCH_BUCKETS, registry=None
        )
        self.batches = Counter(
            "kerve_batches", "Model executions by device replica.", ["model", "device"], registry=None
        )
        self.queue_timeouts = Counter(
            "kerve_queue_timeouts",
            "Requests that reached their queue policy's timeout, by the action taken (reject, delay).",
            ["model", "action"],
            registry=None,
        )
        self.cache_lookups = Counter(
            "kerve_response_cache_lookups",
            "Response cache lookups of models that use it, by result (hit, miss).",
            ["model", "result"],
            registry=None,
        )
        self.cache_evictions = Counter(
            "kerve_response_cache_evictions", "Responses evicted from the cache to make room.", registry=None
        )
        # multiprocess_mode: how a `serve --processes N` group's values combine (ignored by a single process)
        self.cache_bytes = Gauge(
            "kerve_response_cache_bytes", "Bytes the response cache holds.", registry=None, multiprocess_mode="livesum"
        )
        self.queue_depth = Gauge(
            "kerve_queue_depth", "Samples waiting to be batched.", ["model"], registry=None, multiprocess_mode="livesum"
        )
        self.inflight = Gauge(
            "kerve_inflight_requests",
            "Requests being processed.",
            ["model"],
            registry=None,
            multiprocess_mode="livesum",
        )
        r.register(
            _PushedOnCollect(
                self,
                (
                    self.requests,
                    self.request_seconds,
                    self.queue_seconds,
                    self.compute_seconds,
                    self.batch_size,
                    self.batches,
                    self.queue_timeouts,
                    self.cache_lookups,
                    self.cache_evictions,
                    self.queue_depth,
                    self.inflight,
                    self.cache_bytes,
                ),
            )
        )
        # Updated on model loads and unloads only: straight into prometheus_client
        self.model_state = Gauge(
            "kerve_model_state",
            "1 for the current state of each model version.",
            ["model", "version", "state"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.load_seconds = Gauge(
            "kerve_model_load_duration_seconds",
            "Time the last load of a version took.",
            ["model", "version"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.reloads = Counter(
            "kerve_model_reload_events",
            "Version loads and unloads by result.",
            ["model", "event"],
            registry=r,
        )

        # One tally per (instrument, label values), made on first use; label values are bounded (UNKNOWN_MODEL,
        # known codes and devices). The two series below only save the per-request and per-batch paths lookups.
        self._tallies: dict[tuple[MetricWrapperBase, tuple[str, ...]], Any] = {}
        self._push_lock = threading.Lock()  # a scrape's push and the periodic one
        self._request_series: dict[tuple[str, str, str, str], tuple[CounterTally, HistogramTally]] = {}
        self._batch_series: dict[str, tuple[HistogramTally, HistogramTally, HistogramTally]] = {}
        self._pushers: list[Callable[[], None]] = []

    def add_pusher(self, update: Callable[[], None]) -> None:
        """Run `update` at every push, after the tallies: instruments derived from state kept elsewhere
        (triton_metrics.py) are set then instead of per request."""
        self._pushers.append(update)

    def serve(self, host: str, port: int) -> None:
        start_http_server(port, addr=host, registry=self.registry)

    def push(self) -> None:
        """Move the tallies' updates into the instruments (a scrape does this first)."""
        with self._push_lock:
            for tally in list(self._tallies.values()):  # one C call: the loop cannot add one midway
                tally.push()
            for update in self._pushers:
                try:
                    update()
                except Exception:  # a scrape must still answer
                    log.exception("updating derived metrics failed")

    async def push_every(self, interval_s: float) -> None:
        """Keep the instruments current without a scrape: a --processes group's parent reads its children's
        values from shared files, never through their registries. Runs until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            self.push()

    def _tally(self, instrument: MetricWrapperBase, *labels: str) -> Any:
        """The tally of `instrument`'s child for `labels` (a CounterTally, GaugeTally or HistogramTally, by the
        instrument's type)."""
        key = (instrument, labels)
        tally = self._tallies.get(key)
        if tally is None:
            child = instrument.labels(*labels) if labels else instrument  # an instrument without labels is its child
            tally = self._tallies[key] = _TALLIES[type(instrument)](child)
        return tally

    def observe_request(self, model: str, version: str, protocol: str, code: str, seconds: float) -> None:
        key = (model, version, protocol, code)
        series = self._request_series.get(key)
        if series is None:
            series = self._request_series[key] = (
                self._tally(self.requests, *key),
                self._tally(self.request_seconds, model, protocol),
            )
        series[0].value += 1
        series[1].observe(seconds)

    def count_request(self, model: str, version: str, protocol: str, code: str) -> None:
        """A request that ended before timing started (rejected while decoding)."""
        self._tally(self.requests, model, version, protocol, code).value += 1

    def inflight_gauge(self, model: str) -> GaugeTally:
        """The model's requests in flight: the caller adds 1 when one starts and takes it off when it ends."""
        return self._tally(self.inflight, model)

    def device_batches(self, model: str, device: str) -> CounterTally:
        """Model executions on one replica: the caller adds 1 per batch."""
        return self._tally(self.batches, model, device)

    def count_queue_timeout(self, model: str, action: str) -> None:
        """A request of `model` reached its queue policy's timeout and was rejected or delayed (rare: no cache)."""
        self._tally(self.queue_timeouts, model, action).value += 1

    def cache_lookups_of(self, model: str) -> tuple[CounterTally, CounterTally]:
        """(hits, misses) of `model`'s response cache lookups: the caller adds 1 per lookup."""
        return self._tally(self.cache_lookups, model, "hit"), self._tally(self.cache_lookups, model, "miss")

    def cache_gauges(self) -> tuple[GaugeTally, CounterTally]:
        """(bytes held, evictions) of the server's response cache, set after each store."""
        return self._tally(self.cache_bytes), self._tally(self.cache_evictions)

    def observe_batch(self, model: str, size: int, queue_s: float, compute_s: float) -> None:
        series = self._batch_series.get(model)
        if series is None:
            series = self._batch_series[model] = (
                self._tally(self.batch_size, model),
                self._tally(self.queue_seconds, model),
                self._tally(self.compute_seconds, model),
            )
        series[0].observe(size)
        series[1].observe(queue_s)
        series[2].observe(compute_s)

    def set_state(self, model: str, version: int | str, state: str, all_states: list[str]) -> None:
        """version "" is the model as a whole (e.g. FAILED for an invalid config.yaml)."""
        for name in all_states:
            self.model_state.labels(model, str(version), name).set(1.0 if name == state else 0.0)
        if state == "READY":
            # export the per-model gauges at 0 from the first load on: autoscalers and alerts then read 0 for
            # an idle model instead of "no data"
            self.queue_depth.labels(model)
            self.inflight.labels(model)

    def clear_state(self, model: str, version: int | str, all_states: list[str]) -> None:
        """Drop the series of a version the server no longer knows, so removed versions do not linger."""
        for name in all_states:
            retire(self.model_state, model, str(version), name)
        if version != "":
            retire(self.load_seconds, model, str(version))

    def forget_model(self, model: str) -> None:
        """A model gone from the repository: its gauges go (a counter's total stays, as Prometheus expects of
        counters), so models that come and go do not pile up series an autoscaler keeps reading as 0."""
        with self._push_lock:  # a push must not set the in-flight series again from a tally dropped here
            self._tallies.pop((self.inflight, (model,)), None)
            retire(self.inflight, model)
            retire(self.queue_depth, model)


def retire(gauge: Gauge, *labels: str) -> None:
    """Drop one series of `gauge`. In a `--processes` group its value also lives in this process's file, which
    the parent reads and nothing can delete from: NaN there marks the series gone (processes.py skips NaNs), so a
    version a process unloaded leaves the group's /metrics as it leaves a single server's."""
    gauge.labels(*labels).set(math.nan)
    gauge.remove(*labels)


class _PushedOnCollect:
    """The registry's view of the tallied instruments: pushes the tallies, then reports the instruments."""

    def __init__(self, metrics: Metrics, instruments: tuple[MetricWrapperBase, ...]) -> None:
        self._metrics = metrics
        self._instruments = instruments

    def describe(self) -> list[Metric]:
        return [family for instrument in self._instruments for family in instrument.describe()]

    def collect(self) -> Iterator[Metric]:
        self._metrics.push()
        for instrument in self._instruments:
            yield from instrument.collect()
