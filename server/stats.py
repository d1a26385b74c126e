"""Cumulative per-version counters behind the V2 ModelStatistics RPC, with Triton's semantics.

Triton counts `inference_stats` per request: each successful request adds one to `success`, `queue`,
`compute_input`, `compute_infer` and `compute_output` alike (its time in the queue until its batch's execution began,
then that execution's three phases: assembling the batch, the model call, cutting the outputs back per request),
while `execution_count` and `batch_stats` count model executions. perf_analyzer divides those sums by the request
count to break a request's latency down, so a per-batch queue sum would make kerve's queue look shorter than it is.
A request answered from the response cache adds to `success` and `cache_hit` only; a lookup that missed adds to
`cache_miss`, with the time taken to store the answer. A request that failed once its version was resolved adds to
`fail`, a cancelled one too (Triton responds CANCELLED and counts it), and to `fail_reasons` under Triton's reason.

Updated from the event loop thread only, so plain numbers suffice; seconds are summed as floats and turned into
nanoseconds when reported, which keeps the per-request update free of calls.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .errors import ErrorCode

# Why a request failed, Triton's `reason` label of nv_inference_request_failure (its core's FailureReason)
REJECTED = "REJECTED"  # the scheduler refused or expired it: queue full, deadline passed while queued
CANCELED = "CANCELED"  # the caller went away
BACKEND = "BACKEND"  # the model's execution failed
OTHER = "OTHER"  # anything else: bad inputs, the version unloading
FAILURE_REASONS = (REJECTED, CANCELED, BACKEND, OTHER)
_MODEL_ERRORS = (ErrorCode.INTERNAL, ErrorCode.INVALID_ARGUMENT, ErrorCode.RESOURCE_EXHAUSTED)

PHASES = ("compute_input", "compute_infer", "compute_output")  # a batch's execution, in order
DURATIONS = ("success", "fail", "queue", *PHASES, "cache_hit", "cache_miss")  # VersionStats' Duration fields


def failure_reason(code: ErrorCode, from_model: bool, shed: bool = False) -> str:
    """The reason for a failure with `code`; `from_model`: it came back from the batch's run, not the admission.
    A model's own INVALID_ARGUMENT or RESOURCE_EXHAUSTED (out of memory) is the backend's; the batcher's
    RESOURCE_EXHAUSTED (queue full), DEADLINE_EXCEEDED (expired while queued) and the requests it `shed`
    (ServingError.shed: a queue policy's timeout, UNAVAILABLE) are rejections."""
    if code is ErrorCode.CANCELLED:
        return CANCELED
    if shed or code is ErrorCode.DEADLINE_EXCEEDED or (code is ErrorCode.RESOURCE_EXHAUSTED and not from_model):
        return REJECTED
    if from_model and code in _MODEL_ERRORS:
        return BACKEND
    return OTHER


@dataclass
class Duration:
    count: int = 0
    seconds: float = 0.0

    @property
    def ns(self) -> int:
        return int(self.seconds * 1e9)

    def add(self, seconds: float) -> None:
        self.count += 1
        self.seconds += seconds


@dataclass
class BatchDurations:
    """Triton's InferBatchStatistics: the executions of one batch size, by phase."""

    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass
class VersionStats:
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    cache_hit: Duration = field(default_factory=Duration)  # lookups that answered a request, and their time
    cache_miss: Duration = field(default_factory=Duration)  # lookups that found nothing, plus storing the answer
    inference_count: int = 0  # samples, so a batch-64 request counts 64; not cache hits (Triton's)
    execution_count: int = 0  # model executions
    last_inference_monotonic: float | None = None  # wall time derived when reported: no clock read per request
    batch_sizes: dict[int, BatchDurations] = field(default_factory=dict)
    fail_reasons: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FAILURE_REASONS, 0))

    def record_success(
        self, total_s: float, samples: int, queue_s: float, input_s: float, infer_s: float, output_s: float, now: float
    ) -> None:
        """A request answered at ``now`` (time.monotonic) after ``total_s``; ``queue_s`` from its start until its
        batch's execution began: ``input_s`` assembling the batch, ``infer_s`` the model call, ``output_s`` cutting
        the outputs."""
        # inline, not Duration.add: this runs once per request on the event loop thread
        success, queue, c_input, c_infer, c_output = (
            self.success, self.queue, self.compute_input, self.compute_infer, self.compute_output
        )  # fmt: skip
        success.count += 1
        success.seconds += total_s
        queue.count += 1
        queue.seconds += queue_s
        c_input.count += 1
        c_input.seconds += input_s
        c_infer.count += 1
        c_infer.seconds += infer_s
        c_output.count += 1
        c_output.seconds += output_s
        self.inference_count += samples
        self.last_inference_monotonic = now

    def record_cache_hit(self, total_s: float, lookup_s: float, now: float, queue_s: float = 0.0) -> None:
        """A request answered from the response cache: a success and a queue entry (`queue_s`, from its arrival to
        the lookup: Triton's queue statistics include cache hits), but no compute and no inference."""
        self.success.add(total_s)
        self.queue.add(queue_s)
        self.cache_hit.add(lookup_s)
        self.last_inference_monotonic = now

    def record_failure(self, total_s: float, reason: str = OTHER) -> None:
        """A request that failed after ``total_s``, for ``reason`` (one of FAILURE_REASONS: `failure_reason`)."""
        self.fail.count += 1
        self.fail.seconds += total_s
        self.fail_reasons[reason] += 1

    def record_execution(self, batch_size: int, input_s: float, infer_s: float, output_s: float) -> None:
        self.execution_count += 1
        durations = self.batch_sizes.get(batch_size)
        if durations is None:
            durations = self.batch_sizes[batch_size] = BatchDurations()
        durations.compute_input.add(input_s)
        durations.compute_infer.add(infer_s)
        durations.compute_output.add(output_s)

    def to_record(self) -> dict[str, Any]:
        """These counts as JSON values, for the other processes of a --processes group (group_stats.py).
        `last_inference_monotonic` travels as it is: CLOCK_MONOTONIC is one clock for every process on a host."""
        return {
            "durations": {name: [getattr(self, name).count, getattr(self, name).seconds] for name in DURATIONS},
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "last_inference_monotonic": self.last_inference_monotonic,
            "batch_sizes": {
                str(size): [[getattr(d, phase).count, getattr(d, phase).seconds] for phase in PHASES]
                for size, d in self.batch_sizes.items()
            },
            "fail_reasons": dict(self.fail_reasons),
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> VersionStats:
        stats = cls(
            inference_count=int(record["inference_count"]),
            execution_count=int(record["execution_count"]),
            last_inference_monotonic=record["last_inference_monotonic"],
        )
        for name, (count, seconds) in record["durations"].items():
            setattr(stats, name, Duration(int(count), float(seconds)))
        for size, phases in record["batch_sizes"].items():
            stats.batch_sizes[int(size)] = BatchDurations(*(Duration(int(c), float(s)) for c, s in phases))
        stats.fail_reasons.update({reason: int(n) for reason, n in record["fail_reasons"].items()})
        return stats

    @property
    def last_inference_ms(self) -> int:
        """Triton's last_inference: milliseconds since the epoch of the last successful request (0: none yet)."""
        if self.last_inference_monotonic is None:
            return 0
        return int(1000 * (time.time() - (time.monotonic() - self.last_inference_monotonic)))


def summed(parts: Iterable[VersionStats]) -> VersionStats:
    """One version's counts over several processes: every count and time added, the latest last inference."""
    total = VersionStats()
    for part in parts:
        for name in DURATIONS:
            mine, theirs = getattr(total, name), getattr(part, name)
            mine.count += theirs.count
            mine.seconds += theirs.seconds
        total.inference_count += part.inference_count
        total.execution_count += part.execution_count
        latest, theirs = total.last_inference_monotonic, part.last_inference_monotonic
        if theirs is not None and (latest is None or theirs > latest):
            total.last_inference_monotonic = theirs
        for size, durations in part.batch_sizes.items():
            into = total.batch_sizes.setdefault(size, BatchDurations())
            for phase in PHASES:
                getattr(into, phase).count += getattr(durations, phase).count
                getattr(into, phase).seconds += getattr(durations, phase).seconds
        for reason, count in part.fail_reasons.items():
            total.fail_reasons[reason] = total.fail_reasons.get(reason, 0) + count
    return total
