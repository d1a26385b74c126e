"""Check decoded inputs against a signature before anything runs, with messages that name the tensor.

Pure numpy: the caller passes the signature's TensorSpecs. Every failure is INVALID_ARGUMENT, so a bad
request can never reach the model (where it would surface as an opaque INTERNAL error). Nothing here knows a wire
protocol: a wrong dtype raises DtypeMismatch with the numpy dtypes, which each protocol adapter words in its own
names (V2 `FP32`, TF Serving `DT_FLOAT`) when it sends the error.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from .errors import ErrorCode, ServingError, invalid
from .types import TensorSpec


def describe_shape(shape: Sequence[int | None] | None) -> str:
    if shape is None:
        return "<any>"
    return "[" + ", ".join("-1" if d is None else str(d) for d in shape) + "]"


class DtypeMismatch(ServingError):
    """INVALID_ARGUMENT: input `name` has dtype `got` where the signature wants `expected`.

    The message names the dtypes as numpy does; a protocol adapter sends `worded(...)` instead, with its own names.
    """

    def __init__(self, name: str, expected: np.dtype, got: np.dtype) -> None:
        self.name, self.expected, self.got = name, expected, got
        super().__init__(ErrorCode.INVALID_ARGUMENT, self.worded("dtype", str))

    def worded(self, noun: str, dtype_name: Callable[[np.dtype], str]) -> str:
        """The message with each dtype named by `dtype_name` and called a `noun` ("datatype", "dtype")."""
        return f"input {self.name!r}: expected {noun} {dtype_name(self.expected)}, got {dtype_name(self.got)}"


def validate_inputs(model: str, inputs: Mapping[str, np.ndarray], specs: Mapping[str, TensorSpec]) -> None:
    """Raise INVALID_ARGUMENT unless inputs match the signature exactly (names, dtypes, shapes)."""
    if inputs.keys() != specs.keys():  # sorted names for the messages only when they are needed
        expected = sorted(specs)
        if not inputs:
            raise invalid(f"request for model {model!r} has no inputs; expected {expected}")
        unknown = sorted(set(inputs) - set(specs))
        if unknown:
            raise invalid(f"model {model!r} has no input {unknown[0]!r}; expected inputs {expected}")
        missing = sorted(set(specs) - set(inputs))
        raise invalid(f"missing input {missing[0]!r} for model {model!r}; expected inputs {expected}")
    batch = None
    for name, array in inputs.items():
        spec = specs[name]
        if array.dtype != spec.dtype and not (array.dtype.kind == "O" and spec.dtype.kind == "O"):
            raise DtypeMismatch(name, spec.dtype, array.dtype)
        if spec.shape is not None:
            tail = spec.batch_tail
            if tail is not None:  # the usual signature (any batch, then fixed dims): one tuple comparison
                ok = array.ndim != 0 and array.shape[1:] == tail
            else:
                ok = len(array.shape) == len(spec.shape) and all(
                    want is None or want == got for want, got in zip(spec.shape, array.shape, strict=True)
                )
            if not ok:
                raise invalid(
                    f"input {name!r}: expected shape {describe_shape(spec.shape)}, got {describe_shape(array.shape)}"
                )
        if spec.batched:
            if batch is not None and array.shape[0] != batch[1]:
                raise invalid(
                    f"input {name!r}: batch dimension {array.shape[0]} differs from {batch[1]} of input {batch[0]!r}"
                )
            batch = (name, array.shape[0])


def select_outputs(model: str, requested: Sequence[str] | None, specs: Mapping[str, TensorSpec]) -> list[str]:
    """Output names to return: all (sorted) when none are requested, else the requested ones in order."""
    if not requested:
        return sorted(specs)
    for name in requested:
        if name not in specs:
            raise invalid(f"model {model!r} has no output {name!r}; outputs are {sorted(specs)}")
    if len(set(requested)) != len(requested):
        raise invalid(f"output names requested more than once: {list(requested)}")
    return list(requested)
