"""The one internal request/response type every protocol adapter translates to and from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class TensorSpec:
    """A signature tensor: numpy dtype (object for strings) and shape with None for variable dims."""

    name: str
    dtype: np.dtype[Any]
    shape: tuple[int | None, ...] | None  # None: unknown rank

    @property
    def wire_shape(self) -> list[int]:
        return [-1 if d is None else int(d) for d in (self.shape or ())]

    @property
    def batched(self) -> bool:
        """True when the leading dimension is variable, so requests can be concatenated on it."""
        return bool(self.shape) and self.shape[0] is None


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


@dataclass
class InferResponse:
    model: str
    version: int
    outputs: dict[str, np.ndarray]
    id: str = ""
    output_specs: dict[str, TensorSpec] = field(default_factory=dict)
    class_labels: tuple[str, ...] | None = None  # class i's name, for a single-output classifier that has them
