"""Cumulative per-version counters behind the V2 ModelStatistics RPC, with Triton's semantics.

Triton counts `inference_stats` per request: each successful request adds one to `success`, `queue` and
`compute_infer` alike (its time in the queue until its batch's model call began, and that call's time), while
`execution_count` and `batch_stats` count model executions. perf_analyzer divides those sums by the request count
to break a request's latency down, so a per-batch queue sum would make kerve's queue look shorter than it is.

Updated from the event loop thread only, so plain numbers suffice; seconds are summed as floats and turned into
nanoseconds when reported, which keeps the per-request update free of calls.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class Duration:
    count: int = 0
    seconds: float = 0.0

    @property
    def ns(self) -> int:
        return int(self.seconds * 1e9)


@dataclass
class VersionStats:
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    inference_count: int = 0  # samples, so a batch-64 request counts 64
    execution_count: int = 0  # model executions
    last_inference_monotonic: float | None = None  # wall time derived when reported: no clock read per request
    batch_sizes: dict[int, Duration] = field(default_factory=dict)

    def record_success(self, total_s: float, samples: int, queue_s: float, compute_s: float, now: float) -> None:
        """A request answered at ``now`` (time.monotonic) after ``total_s``; ``queue_s`` from its start until its
        batch's model call began, which took ``compute_s``."""
        success, queue, compute = self.success, self.queue, self.compute_infer
        success.count += 1
        success.seconds += total_s
        queue.count += 1
        queue.seconds += queue_s
        compute.count += 1
        compute.seconds += compute_s
        self.inference_count += samples
        self.last_inference_monotonic = now

    def record_failure(self, total_s: float) -> None:
        self.fail.count += 1
        self.fail.seconds += total_s

    def record_execution(self, batch_size: int, compute_s: float) -> None:
        self.execution_count += 1
        duration = self.batch_sizes.get(batch_size)
        if duration is None:
            duration = self.batch_sizes[batch_size] = Duration()
        duration.count += 1
        duration.seconds += compute_s

    @property
    def last_inference_ms(self) -> int:
        """Triton's last_inference: milliseconds since the epoch of the last successful request (0: none yet)."""
        if self.last_inference_monotonic is None:
            return 0
        return int(1000 * (time.time() - (time.monotonic() - self.last_inference_monotonic)))
