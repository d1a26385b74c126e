"""The one internal request/response type every protocol adapter translates to and from."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

CALL_PATHS = ("auto", "session", "function")  # how a model is called: server/model.py, --call-path

_DEVICE = re.compile(r"(?:/job:[^/,]*/replica:\d+/task:\d+)?/device:(CPU|GPU):(\d+)")  # one device, not a list


def device_kind(name: str) -> tuple[str, int] | None:
    """A replica's device as ("CPU" or "GPU", index); None for what is not one CPU or GPU device (a TPU core, a
    mirrored replica's list, a test's "default")."""
    match = _DEVICE.fullmatch(name)
    return None if match is None else (match[1], int(match[2]))


@dataclass(frozen=True)
class TensorSpec:
    """A signature tensor: numpy dtype (object for strings) and shape with None for variable dims."""

    name: str
    dtype: np.dtype[Any]
    shape: tuple[int | None, ...] | None  # None: unknown rank
    # Derived once, read per request without a call: whether the leading dimension is variable (requests can be
    # concatenated on it), and the fixed dims after it when all of them are fixed (a tuple to compare shapes with)
    batched: bool = field(init=False, repr=False, compare=False)
    batch_tail: tuple[int, ...] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        batched = bool(self.shape) and self.shape[0] is None  # type: ignore[index]
        tail = self.shape[1:] if batched else None  # type: ignore[index]
        object.__setattr__(self, "batched", batched)
        object.__setattr__(self, "batch_tail", tail if tail is not None and None not in tail else None)

    @property
    def wire_shape(self) -> list[int]:
        return [-1 if d is None else int(d) for d in (self.shape or ())]


@dataclass
class InferRequest:
    model: str
    inputs: dict[str, np.ndarray]
    version: int | None = None
    label: str | None = None
    signature: str | None = None
    outputs: list[str] | None = None
    id: str = ""
    deadline: float | None = None  # time.monotonic() value; None means no deadline
    protocol: str = "v2"
    priority: int = 0  # Triton's priority level (1 highest); 0: the model's default
    timeout_s: float | None = None  # Triton's per-request timeout: a queue policy's, or else a deadline (batcher)
    trace_context: dict[str, str] | None = None  # W3C traceparent / tracestate it came with (opentelemetry traces)


@dataclass
class InferResponse:
    model: str
    version: int
    outputs: dict[str, np.ndarray]
    id: str = ""
    output_specs: dict[str, TensorSpec] = field(default_factory=dict)
    class_labels: Mapping[str, tuple[str, ...]] | None = None  # by output: class i's name
    batched: bool = False  # served with a batcher (Triton's max_batch_size > 0): outputs lead with the batch
