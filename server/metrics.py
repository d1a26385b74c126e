"""Prometheus metrics, named by Prometheus' rules (base units, `_total` counters).

The engine and manager call these methods with plain values (model, version, protocol, status code name);
nothing here knows a wire format. Each server owns its own registry so several can run in one process. In a
`serve --processes N` group each process writes its values to a shared directory (PROMETHEUS_MULTIPROC_DIR) and
the parent exports their combination.
"""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
UNKNOWN_MODEL = "<unknown>"  # bounds label cardinality: clients can send any model name


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "kerve_requests",
            "Inference requests by outcome.",
            ["model", "version", "protocol", "code"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "kerve_request_duration_seconds",
            "Time from decode to response.",
            ["model", "protocol"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_seconds = Histogram(
            "kerve_queue_duration_seconds",
            "Time a request waited before its batch ran.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.compute_seconds = Histogram(
            "kerve_compute_duration_seconds",
            "Model execution time per batch.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "kerve_batch_size", "Samples per model execution.", ["model"], buckets=BATCH_BUCKETS, registry=r
        )
        self.batches = Counter("kerve_batches", "Model executions by device replica.", ["model", "device"], registry=r)
        # multiprocess_mode: how a `serve --processes N` group's values combine (ignored by a single process)
        self.queue_depth = Gauge(
            "kerve_queue_depth", "Samples waiting to be batched.", ["model"], registry=r, multiprocess_mode="livesum"
        )
        self.inflight = Gauge(
            "kerve_inflight_requests", "Requests being processed.", ["model"], registry=r, multiprocess_mode="livesum"
        )
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

        # Label children by label values, so the per-request path is a dict lookup instead of prometheus'
        # labels() (argument checks, a lock, a tuple). Label values are bounded (UNKNOWN_MODEL, known codes).
        self._request_series: dict[tuple[str, str, str, str], tuple[Counter, Histogram]] = {}
        self._batch_series: dict[str, tuple[Histogram, Histogram, Histogram]] = {}
        self._inflight_series: dict[str, Gauge] = {}

    def serve(self, host: str, port: int) -> None:
        start_http_server(port, addr=host, registry=self.registry)

    def observe_request(self, model: str, version: str, protocol: str, code: str, seconds: float) -> None:
        key = (model, version, protocol, code)
        series = self._request_series.get(key)
        if series is None:
            series = self._request_series[key] = (
                self.requests.labels(model, version, protocol, code),
                self.request_seconds.labels(model, protocol),
            )
        series[0].inc()
        series[1].observe(seconds)

    def inflight_gauge(self, model: str) -> Gauge:
        gauge = self._inflight_series.get(model)
        if gauge is None:
            gauge = self._inflight_series[model] = self.inflight.labels(model)
        return gauge

    def count_request(self, model: str, version: str, protocol: str, code: str) -> None:
        """A request that ended before timing started (rejected while decoding)."""
        self.requests.labels(model, version, protocol, code).inc()

    def observe_batch(self, model: str, size: int, queue_s: float, compute_s: float) -> None:
        series = self._batch_series.get(model)
        if series is None:
            series = self._batch_series[model] = (
                self.batch_size.labels(model),
                self.queue_seconds.labels(model),
                self.compute_seconds.labels(model),
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
            with contextlib.suppress(KeyError):
                self.model_state.remove(model, str(version), name)
