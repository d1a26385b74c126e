"""Cumulative per-version counters behind the V2 ModelStatistics RPC (Triton's semantics).

Updated from the event loop thread only, so plain integers suffice.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, seconds: float, count: int = 1) -> None:
        self.count += count
        self.ns += int(seconds * 1e9)


@dataclass
class VersionStats:
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    inference_count: int = 0  # samples, so a batch-64 request counts 64
    execution_count: int = 0  # model executions
    last_inference_ms: int = 0
    batch_sizes: dict[int, Duration] = field(default_factory=dict)

    def record_success(self, total_s: float, samples: int) -> None:
        self.success.add(total_s)
        self.inference_count += samples
        self.last_inference_ms = int(time.time() * 1000)

    def record_failure(self, total_s: float) -> None:
        self.fail.add(total_s)

    def record_execution(self, batch_size: int, queue_s: float, compute_s: float) -> None:
        self.execution_count += 1
        self.queue.add(queue_s)
        self.compute_infer.add(compute_s)
        self.batch_sizes.setdefault(batch_size, Duration()).add(compute_s)
