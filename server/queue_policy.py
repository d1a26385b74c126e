"""Triton's queue policy: how long a request may wait for a batch, what happens then, and how many may wait.

A model that serves both interactive and bulk traffic needs more than one global queue bound: an interactive
request that has waited 50 ms is better refused at once (the client retries elsewhere) than run late, while a bulk
request that has waited long should step aside for fresh ones rather than fail. Triton's `ModelQueuePolicy` says
that per priority level, and kerve takes it over unchanged so that a Triton model config means the same here:

- ``timeout_s``: the longest a request waits in the queue before its first rows go into a batch (0: no limit).
- ``timeout_action``: ``reject`` (answered UNAVAILABLE as in Triton: the server shed it, a client may retry; or
  DEADLINE_EXCEEDED where the timeout was the request's own; never run) or ``delay`` (it moves behind every request
  of its level that has not timed out, and runs when they have; a stream of fresh ones can delay it indefinitely).
- ``allow_timeout_override``: a request's own ``timeout`` parameter becomes its queue timeout when shorter than
  ``timeout_s`` (it may not lengthen it). Without the override kerve keeps that parameter a deadline for the whole
  request, as it does for a model with no policy.
- ``max_queue_size``: most requests waiting at the level (0: no limit); one more is RESOURCE_EXHAUSTED.

No TensorFlow or gRPC here: the batcher applies it, config.yaml and Triton load configs produce it.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping
from typing import Any

__all__ = ["ACTIONS", "QueuePolicy", "level_policies"]

ACTIONS = ("reject", "delay")


@dataclasses.dataclass(frozen=True)
class QueuePolicy:
    timeout_s: float = 0.0
    timeout_action: str = "reject"
    allow_timeout_override: bool = False
    max_queue_size: int = 0

    def __post_init__(self) -> None:
        timeout = self.timeout_s
        if isinstance(timeout, str):  # PyYAML reads `1e-3` (no dot) as a string
            try:
                timeout = float(timeout)
            except ValueError:
                raise ValueError(f"queue policy timeout_s must be a number of seconds, got {timeout!r}") from None
        if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real):
            raise ValueError(f"queue policy timeout_s must be a number of seconds, got {timeout!r}")
        if not math.isfinite(timeout) or timeout < 0:
            raise ValueError(f"queue policy timeout_s must be a finite number >= 0, got {timeout!r}")
        object.__setattr__(self, "timeout_s", float(timeout))
        if self.timeout_action not in ACTIONS:
            raise ValueError(f"queue policy timeout_action must be reject or delay, got {self.timeout_action!r}")
        if not isinstance(self.allow_timeout_override, bool):
            raise ValueError(
                f"queue policy allow_timeout_override must be true or false, got {self.allow_timeout_override!r}"
            )
        size = self.max_queue_size
        if isinstance(size, bool) or not isinstance(size, numbers.Integral) or not 0 <= size < 2**32:
            raise ValueError(
                f"queue policy max_queue_size must be an integer from 0 (no limit) to 2**32-1, got {size!r}"
            )
        object.__setattr__(self, "max_queue_size", int(size))

    @classmethod
    def from_mapping(cls, where: str, mapping: object) -> QueuePolicy:
        if isinstance(mapping, QueuePolicy):
            return mapping
        if not isinstance(mapping, Mapping):
            raise ValueError(f"{where} must be a mapping, got {type(mapping).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(str(key) for key in mapping if key not in known)
        if unknown:
            raise ValueError(f"unknown {where} option {unknown[0]!r}; expected one of: {', '.join(sorted(known))}")
        return cls(**mapping)

    @property
    def delays(self) -> bool:
        """Whether a timed-out request is kept (delayed) rather than refused."""
        return self.timeout_action == "delay"


def level_policies(default: object, per_level: object, levels: int) -> tuple[QueuePolicy, dict[int, QueuePolicy]]:
    """config.yaml's ``queue_policy`` and ``priority_queue_policy`` validated: the second keyed by levels 1..levels."""
    base = QueuePolicy.from_mapping("queue_policy", default if default is not None else {})
    if per_level is None:
        return base, {}
    if not isinstance(per_level, Mapping):
        raise ValueError(f"priority_queue_policy must map priority levels to queue policies, got {per_level!r}")
    result: dict[int, QueuePolicy] = {}
    for key, value in per_level.items():
        level = _level(key)
        if not 1 <= level <= levels:
            raise ValueError(
                f"priority_queue_policy level {key!r} is not one of the model's priority levels (1..{levels})"
                if levels
                else "priority_queue_policy needs priority_levels >= 1"
            )
        result[level] = QueuePolicy.from_mapping(f"priority_queue_policy[{level}]", value)
    return base, result


def _level(key: Any) -> int:
    if isinstance(key, str) and key.strip().isdigit():  # a YAML or JSON map key may come as a string
        return int(key)
    if isinstance(key, bool) or not isinstance(key, numbers.Integral):
        raise ValueError(f"priority_queue_policy keys must be priority levels (integers), got {key!r}")
    return int(key)
