"""Triton's per-model Prometheus metrics under Triton's own names (`serve --triton-metrics`), so the dashboards,
alerts and autoscaling rules written for Triton (`nv_inference_request_success`, `nv_inference_queue_duration_us`,
...) read kerve unchanged.

They are the statistics kerve already keeps for ModelStatistics (stats.py, Triton's semantics), read when metrics
are pushed (each scrape, and every second in a `--processes` group) rather than counted again per request: the
request path pays nothing for them. Labels are Triton's `model` and `version`; durations are cumulative
microseconds, counts cumulative, as Triton's counters. They are exported as gauges holding those cumulative values:
a prometheus_client counter would add `_total` to the name, and Triton's name is the point; `rate()` and
`increase()` read them as they read Triton's. In a `--processes` group each process's values are summed.

`nv_inference_request_failure` carries Triton's `reason` label (REJECTED, CANCELED, BACKEND, OTHER: stats.py's
`failure_reason`), every reason shown from the start (0 until one happens). `nv_inference_pending_request_count`
is, as Triton's, the requests waiting for execution: those not yet wholly in a batch (a version without a batcher
runs each request in a worker thread at once and shows 0). Difference, by necessity: no GPU metrics (nv_gpu_*),
kerve does not read DCGM. The CPU ones (nv_cpu_*) come with this flag too, from /proc: server/host_metrics.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Gauge

from .metrics import retire
from .stats import FAILURE_REASONS, Duration

_US = 1e6

# name -> (help, how to read it from a version: (entry) -> value)
_FAMILIES: dict[str, tuple[str, Callable[[Any], float]]] = {
    "nv_inference_request_success": (
        "Number of successful inference requests, all batch sizes (cache hits included)",
        lambda e: e.stats.success.count,
    ),
    "nv_inference_count": (
        "Number of inferences performed (a batch of n counts n; cache hits excluded)",
        lambda e: e.stats.inference_count,
    ),
    "nv_inference_exec_count": (
        "Number of model executions performed (cache hits excluded)",
        lambda e: e.stats.execution_count,
    ),
    "nv_inference_request_duration_us": (
        "Cumulative inference request duration in microseconds (cache hits included)",
        lambda e: e.stats.success.seconds * _US,
    ),
    "nv_inference_queue_duration_us": (
        "Cumulative inference queuing duration in microseconds",
        lambda e: e.stats.queue.seconds * _US,
    ),
    "nv_inference_compute_input_duration_us": (
        "Cumulative compute input duration in microseconds (assembling batches)",
        lambda e: e.stats.compute_input.seconds * _US,
    ),
    "nv_inference_compute_infer_duration_us": (
        "Cumulative compute inference duration in microseconds",
        lambda e: e.stats.compute_infer.seconds * _US,
    ),
    "nv_inference_compute_output_duration_us": (
        "Cumulative compute output duration in microseconds (cutting batch outputs per request)",
        lambda e: e.stats.compute_output.seconds * _US,
    ),
}
_PENDING = "nv_inference_pending_request_count"  # summed over a version's copies (two while it is re-placed)
_FAILURE = "nv_inference_request_failure"  # by reason
_CACHE_FAMILIES: dict[str, tuple[str, Callable[[Duration], float]]] = {
    "nv_cache_num_hits_per_model": ("Number of response cache hits per model", lambda d: d.count),
    "nv_cache_num_misses_per_model": ("Number of response cache misses per model", lambda d: d.count),
    "nv_cache_hit_duration_per_model": (
        "Cumulative time requests spend retrieving a cached response per model (microseconds)",
        lambda d: d.seconds * _US,
    ),
    "nv_cache_miss_duration_per_model": (
        "Cumulative time requests spend looking up and inserting responses into the cache per model (microseconds)",
        lambda d: d.seconds * _US,
    ),
}


class TritonMetrics:
    """Gauges named as Triton's metrics, set from the served versions' statistics by `update`."""

    def __init__(self, registry: CollectorRegistry, versions: Callable[[], Iterable[Any]]) -> None:
        """`versions` lists the versions being served (ModelVersion: model, version, stats, pending, config);
        it is called from whichever thread pushes metrics, so it must be safe there (ModelManager.snapshot)."""
        self._versions = versions
        self._gauges = {
            name: Gauge(name, doc, ["model", "version"], registry=registry, multiprocess_mode="livesum")
            for name, (doc, _) in {**_FAMILIES, **_CACHE_FAMILIES}.items()
        }
        self._failures = Gauge(
            _FAILURE,
            "Number of failed inference requests, all batch sizes",
            ["model", "version", "reason"],
            registry=registry,
            multiprocess_mode="livesum",
        )
        self._gauges[_PENDING] = Gauge(
            _PENDING,
            "Instantaneous number of pending requests awaiting execution per-model.",
            ["model", "version"],
            registry=registry,
            multiprocess_mode="livesum",
        )
        self._shown: set[tuple[str, str]] = set()
        self._cached: set[tuple[str, str]] = set()

    def update(self) -> None:
        shown: set[tuple[str, str]] = set()
        cached: set[tuple[str, str]] = set()
        pending: dict[tuple[str, str], int] = {}
        for entry in self._versions():
            labels = (entry.model, str(entry.version))
            pending[labels] = pending.get(labels, 0) + entry.pending
            if labels in shown:  # the copy being replaced: the same statistics object
                continue
            shown.add(labels)
            for name, (_, read) in _FAMILIES.items():
                self._gauges[name].labels(*labels).set(read(entry))
            for reason, count in entry.stats.fail_reasons.items():
                self._failures.labels(*labels, reason).set(count)
            if entry.config.response_cache:  # as Triton: cache metrics for the models that use the cache
                cached.add(labels)
                stats = entry.stats
                for name, (_, read) in _CACHE_FAMILIES.items():
                    duration = stats.cache_hit if "hit" in name else stats.cache_miss
                    self._gauges[name].labels(*labels).set(read(duration))
        for labels, count in pending.items():
            self._gauges[_PENDING].labels(*labels).set(count)
        unloaded = self._shown - shown
        for gone, families in ((unloaded, [*_FAMILIES, _PENDING]), (self._cached - cached, list(_CACHE_FAMILIES))):
            for labels in gone:  # a version that unloaded: its series go, as Triton's do
                for name in families:
                    retire(self._gauges[name], *labels)
        for labels in unloaded:
            for reason in FAILURE_REASONS:
                retire(self._failures, *labels, reason)
        self._shown, self._cached = shown, cached
