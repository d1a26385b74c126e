"""Signature validation: names, dtypes, shapes and batch consistency, with messages naming the tensor."""

from __future__ import annotations

import numpy as np
import pytest

from kerve.server import v2_codec
from kerve.server.errors import ErrorCode, ServingError
from kerve.server.types import TensorSpec
from kerve.server.validation import DtypeMismatch, select_outputs, validate_inputs

SPECS = {
    "image": TensorSpec("image", np.dtype(np.float32), (None, 8, 8, 1)),
    "ids": TensorSpec("ids", np.dtype(np.int64), (None, 2)),
}
OK = {"image": np.zeros((3, 8, 8, 1), np.float32), "ids": np.zeros((3, 2), np.int64)}


def check(inputs: dict[str, np.ndarray], message: str) -> None:
    with pytest.raises(ServingError) as info:
        validate_inputs("m", inputs, SPECS)
    assert info.value.code is ErrorCode.INVALID_ARGUMENT
    assert message in info.value.message


def test_valid_inputs_pass() -> None:
    validate_inputs("m", OK, SPECS)


def test_each_violation_has_a_precise_message() -> None:
    check({}, "request for model 'm' has no inputs; expected ['ids', 'image']")
    check({**OK, "x": OK["ids"]}, "model 'm' has no input 'x'")
    check({"image": OK["image"]}, "missing input 'ids'")
    check({**OK, "ids": OK["ids"].astype(np.int32)}, "input 'ids': expected dtype int64, got int32")
    check(
        {**OK, "image": np.zeros((3, 8, 8), np.float32)}, "input 'image': expected shape [-1, 8, 8, 1], got [3, 8, 8]"
    )
    check({**OK, "ids": np.zeros((4, 2), np.int64)}, "batch dimension 4 differs from 3")


def test_a_wrong_dtype_carries_the_dtypes_for_each_protocol_to_name() -> None:
    with pytest.raises(DtypeMismatch) as info:
        validate_inputs("m", {**OK, "image": OK["image"].astype(np.float16)}, SPECS)
    error = info.value
    assert (error.name, error.expected, error.got) == ("image", np.dtype(np.float32), np.dtype(np.float16))
    assert error.code is ErrorCode.INVALID_ARGUMENT
    assert error.message == "input 'image': expected dtype float32, got float16"  # no protocol's names
    assert error.worded("type", lambda dt: dt.name.upper()) == "input 'image': expected type FLOAT32, got FLOAT16"
    assert v2_codec.error_message(error) == "input 'image': expected datatype FP32, got FP16"
    other = DtypeMismatch("z", np.dtype(np.complex64), np.dtype(np.float32))  # no V2 datatype: numpy's name
    assert v2_codec.error_message(other) == "input 'z': expected datatype complex64, got FP32"
    assert v2_codec.error_message(ServingError(ErrorCode.NOT_FOUND, "gone")) == "gone"


def test_string_inputs_accept_object_arrays() -> None:
    specs = {"text": TensorSpec("text", np.dtype(object), (None,))}
    validate_inputs("m", {"text": np.array([b"a"], dtype=object)}, specs)


@pytest.mark.parametrize(
    ("shape", "good", "bad"),
    [
        ((None, 2), [(1, 2), (5, 2)], [(2,), (1, 3), (1, 2, 1), (2, 1)]),  # fixed dims after the batch: one compare
        ((None,), [(1,), (7,)], [(), (1, 1)]),  # a scalar has no batch dimension
        ((None, None, 3), [(1, 4, 3), (2, 9, 3)], [(1, 4), (1, 4, 2), (1, 4, 3, 1)]),  # a variable dim: dim by dim
        ((2, 3), [(2, 3)], [(1, 3), (2, 3, 1)]),  # no batch dimension
    ],
)
def test_shapes_are_checked_dim_by_dim(shape: tuple, good: list[tuple], bad: list[tuple]) -> None:
    specs = {"x": TensorSpec("x", np.dtype(np.float32), shape)}
    for got in good:
        validate_inputs("m", {"x": np.zeros(got, np.float32)}, specs)
    for got in bad:
        with pytest.raises(ServingError, match="input 'x': expected shape"):
            validate_inputs("m", {"x": np.zeros(got, np.float32)}, specs)


def test_unknown_rank_accepts_any_shape() -> None:
    specs = {"x": TensorSpec("x", np.dtype(np.float32), None)}
    validate_inputs("m", {"x": np.zeros((2, 5, 7), np.float32)}, specs)


def test_select_outputs() -> None:
    outs = {"b": SPECS["ids"], "a": SPECS["image"]}
    assert select_outputs("m", None, outs) == ["a", "b"]
    assert select_outputs("m", ["b"], outs) == ["b"]
    with pytest.raises(ServingError, match="has no output 'c'"):
        select_outputs("m", ["c"], outs)
    with pytest.raises(ServingError, match="more than once"):
        select_outputs("m", ["a", "a"], outs)
