"""Signature validation: names, dtypes, shapes and batch consistency, with messages naming the tensor."""

from __future__ import annotations

import numpy as np
import pytest

from kerve.server.errors import ErrorCode, ServingError
from kerve.server.types import TensorSpec
from kerve.server.validation import select_outputs, validate_inputs

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
    check({**OK, "ids": OK["ids"].astype(np.int32)}, "input 'ids': expected datatype INT64, got INT32")
    check(
        {**OK, "image": np.zeros((3, 8, 8), np.float32)}, "input 'image': expected shape [-1, 8, 8, 1], got [3, 8, 8]"
    )
    check({**OK, "ids": np.zeros((4, 2), np.int64)}, "batch dimension 4 differs from 3")


def test_string_inputs_accept_object_arrays() -> None:
    specs = {"text": TensorSpec("text", np.dtype(object), (None,))}
    validate_inputs("m", {"text": np.array([b"a"], dtype=object)}, specs)


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
