"""TensorFlow Serving messages <-> InferRequest / numpy, at the edge of the server.

Tensors: `tensor_content` is viewed with np.frombuffer (no copy beyond the protobuf field itself); typed fields
(`float_val`, `int_val`, `string_val`, ...) are converted with numpy, with TensorFlow's rules: fewer values than
elements repeat the last one (a scalar fills the tensor), none means zeros. Responses carry numeric tensors in
`tensor_content` and strings in `string_val`, which `tf.make_ndarray` reads back exactly. No TensorFlow ops here.

tf.Example inputs (Classify / Regress) become one DT_STRING tensor of serialized examples under the signature's
`inputs` key, the way TF Serving feeds them; a context example is prepended to each example's bytes, which is
protobuf's merge (the example's own features win), again as TF Serving does.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import classification_pb2, input_pb2, model_pb2, predict_pb2, regression_pb2

from kerve.codecs import bfloat16

from .errors import ServingError, invalid
from .types import InferRequest
from .validation import DtypeMismatch

PROTOCOL = "tfs"
DEFAULT_SIGNATURE = "serving_default"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
PREDICT_METHOD = "tensorflow/serving/predict"
EXAMPLES_INPUT = "inputs"  # TF Serving's kClassifyInputs / kRegressInputs
CLASSES_OUTPUT = "classes"
SCORES_OUTPUT = "scores"
REGRESS_OUTPUT = "outputs"

# DataType -> (numpy dtype, typed value field)
_TYPES: dict[int, tuple[np.dtype[Any], str]] = {
    types_pb2.DT_FLOAT: (np.dtype("<f4"), "float_val"),
    types_pb2.DT_DOUBLE: (np.dtype("<f8"), "double_val"),
    types_pb2.DT_INT32: (np.dtype("<i4"), "int_val"),
    types_pb2.DT_UINT8: (np.dtype("u1"), "int_val"),
    types_pb2.DT_INT16: (np.dtype("<i2"), "int_val"),
    types_pb2.DT_INT8: (np.dtype("i1"), "int_val"),
    types_pb2.DT_UINT16: (np.dtype("<u2"), "int_val"),
    types_pb2.DT_INT64: (np.dtype("<i8"), "int64_val"),
    types_pb2.DT_UINT32: (np.dtype("<u4"), "uint32_val"),
    types_pb2.DT_UINT64: (np.dtype("<u8"), "uint64_val"),
    types_pb2.DT_BOOL: (np.dtype(np.bool_), "bool_val"),
    types_pb2.DT_HALF: (np.dtype("<f2"), "half_val"),
    types_pb2.DT_BFLOAT16: (bfloat16(), "half_val"),  # typed values: the 16 bits in half_val, as for DT_HALF
    types_pb2.DT_STRING: (np.dtype(object), "string_val"),
    # typed values: (real, imaginary) pairs of floats
    types_pb2.DT_COMPLEX64: (np.dtype("<c8"), "scomplex_val"),
    types_pb2.DT_COMPLEX128: (np.dtype("<c16"), "dcomplex_val"),
}
# what a typed value field holds on the wire: narrower types are cast from it, keeping the low bits of an
# out-of-range value as TensorFlow's Tensor::FromProto does (numpy refuses such a value in the narrower type)
_WIRE_TYPE = {"int_val": np.int32}
# a shorter value list is repeated to fill the shape (TF's rule); past this many bytes the request is refused
# rather than expanded: a few bytes on the wire must not make the server allocate gigabytes
MAX_EXPANDED_BYTES = 1 << 30
_VALUE_FIELDS = sorted({f for _, f in _TYPES.values()} | {"scomplex_val", "dcomplex_val"})
_BY_KIND_SIZE = {(dt.kind, dt.itemsize): code for code, (dt, _) in _TYPES.items() if dt.kind != "O"}


class TensorProtoError(ValueError):
    """A TensorProto cannot be decoded or encoded; the caller prefixes the tensor name."""


def dtype_name(code: int) -> str:
    try:
        return types_pb2.DataType.Name(code)
    except ValueError:
        return f"DataType({code})"


def datatype_of(dtype: np.dtype[Any]) -> int:
    """The TF DataType enum value for a numpy dtype (strings, bytes and objects are DT_STRING)."""
    dt = np.dtype(dtype)
    if dt.kind in ("O", "S", "U"):
        return types_pb2.DT_STRING
    try:
        return _BY_KIND_SIZE[dt.kind, dt.itemsize]
    except KeyError:
        raise TensorProtoError(f"numpy dtype {dt} has no TensorFlow DataType") from None


def _dtype_name(dtype: np.dtype[Any]) -> str:
    """A numpy dtype by its TF name (DT_FLOAT), or numpy's where TensorFlow has none."""
    try:
        return dtype_name(datatype_of(dtype))
    except TensorProtoError:
        return str(dtype)


def error_message(error: ServingError) -> str:
    """What TF Serving clients read for an error: dtypes by their TF DataType names."""
    if isinstance(error, DtypeMismatch):
        return error.worded("dtype", _dtype_name)
    return error.message


def decode_tensor(proto: tensor_pb2.TensorProto) -> np.ndarray:
    """An ndarray with the proto's dtype and shape, TensorFlow's Tensor::FromProto rules."""
    try:
        dtype, field = _TYPES[proto.dtype]
    except KeyError:
        raise TensorProtoError(f"dtype {dtype_name(proto.dtype)} is not supported") from None
    if proto.tensor_shape.unknown_rank:
        raise TensorProtoError("tensor_shape has unknown rank; give every dimension")
    shape = tuple(int(d.size) for d in proto.tensor_shape.dim)
    if any(d < 0 for d in shape):
        raise TensorProtoError(f"tensor_shape {list(shape)} has a negative dimension")
    count = math.prod(shape)
    if count >= 1 << 63:
        raise TensorProtoError(f"tensor_shape {list(shape)} has more than 2**63 - 1 elements")
    for other in _VALUE_FIELDS:
        if other != field and len(getattr(proto, other)):
            raise TensorProtoError(f"dtype {dtype_name(proto.dtype)} reads {field}, but {other} is set")
    content = proto.tensor_content
    if content:  # TensorFlow reads tensor_content when it is set, whatever a typed field holds
        if dtype.kind == "O":
            raise TensorProtoError("DT_STRING tensors carry their elements in string_val, not tensor_content")
        if len(content) != count * dtype.itemsize:
            raise TensorProtoError(
                f"tensor_content has {len(content)} bytes, expected {count * dtype.itemsize} "
                f"for shape {list(shape)} of {dtype_name(proto.dtype)}"
            )
        return _reshaped(np.frombuffer(content, dtype=dtype), shape)
    values = getattr(proto, field)
    n = len(values) // 2 if dtype.kind == "c" else len(values)
    if n > count:  # TensorFlow takes the first `count` values
        values, n = values[: 2 * count if dtype.kind == "c" else count], count
    if dtype.kind == "O":
        flat = np.empty(n, dtype=object)
        flat[:] = list(values)
    elif dtype.kind == "c":
        if len(values) % 2:
            raise TensorProtoError(f"{field} has {len(values)} values: complex elements are (real, imaginary) pairs")
        flat = np.asarray(values, dtype=np.float32 if dtype.itemsize == 8 else np.float64).view(dtype)
    elif proto.dtype in (types_pb2.DT_HALF, types_pb2.DT_BFLOAT16):
        flat = np.asarray(values, dtype=np.int32).astype(np.uint16).view(dtype)
    elif field in _WIRE_TYPE:
        flat = np.asarray(values, dtype=_WIRE_TYPE[field]).astype(dtype)
    else:
        flat = np.asarray(values, dtype=dtype)
    if n == count:
        return _reshaped(flat, shape)
    if count * dtype.itemsize > MAX_EXPANDED_BYTES:
        raise TensorProtoError(
            f"{field} has {n} values for the {count} elements of shape {list(shape)}: repeating them would take "
            f"{count * dtype.itemsize} bytes, more than {MAX_EXPANDED_BYTES}; send every value"
        )
    out = np.full(count, b"" if dtype.kind == "O" else 0, dtype=dtype)
    if n:
        out[:n] = flat
        out[n:] = flat[-1]
    return _reshaped(out, shape)


def _reshaped(array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    # numpy refuses shapes TensorFlow takes (more than 64 dimensions) and ones whose dimensions overflow beside a
    # zero; a bare ValueError would reach the client as UNKNOWN
    try:
        return array.reshape(shape)
    except ValueError as exc:
        raise TensorProtoError(f"tensor_shape {list(shape)} cannot be made into an array: {exc}") from None


def encode_tensor(array: np.ndarray, proto: tensor_pb2.TensorProto | None = None) -> tensor_pb2.TensorProto:
    """Fill (or make) a TensorProto: numeric in tensor_content (little-endian, row-major), strings in string_val."""
    proto = tensor_pb2.TensorProto() if proto is None else proto
    array = np.asarray(array)
    code = datatype_of(array.dtype)
    proto.dtype = code
    for d in array.shape:
        proto.tensor_shape.dim.add(size=int(d))
    if code == types_pb2.DT_STRING:
        proto.string_val.extend(_as_bytes(item) for item in array.ravel(order="C"))
    else:
        proto.tensor_content = np.ascontiguousarray(array, dtype=_TYPES[code][0]).tobytes()
    return proto


def _as_bytes(item: object) -> bytes:
    if isinstance(item, str):
        return item.encode("utf-8")
    if isinstance(item, bytes | bytearray | memoryview | np.bytes_):
        return bytes(item)
    raise TensorProtoError(f"string element of type {type(item).__name__} is neither bytes nor str")


# --- model specs -----------------------------------------------------------------------------------------


def spec_version(spec: model_pb2.ModelSpec) -> tuple[int | None, str | None]:
    """(version, label) requested by a ModelSpec; (None, None) means the latest."""
    choice = spec.WhichOneof("version_choice")
    if choice == "version":
        return int(spec.version.value), None
    if choice == "version_label":
        return None, spec.version_label  # "" set explicitly is a label too (TF Serving: unrecognized)
    return None, None


def response_spec(target: model_pb2.ModelSpec, name: str, version: int, signature: str | None = None) -> None:
    target.name = name
    target.version.value = version
    if signature is not None:
        target.signature_name = signature


def _deadline(time_remaining: float | None) -> float | None:
    return None if time_remaining is None else time.monotonic() + time_remaining


def _require_name(spec: model_pb2.ModelSpec) -> None:
    if not spec.name:
        raise invalid("model_spec.name is required")


# --- Predict ---------------------------------------------------------------------------------------------


def decode_predict(message: predict_pb2.PredictRequest, time_remaining: float | None = None) -> InferRequest:
    spec = message.model_spec
    _require_name(spec)
    version, label = spec_version(spec)
    inputs: dict[str, np.ndarray] = {}
    for name, tensor in message.inputs.items():
        try:
            inputs[name] = decode_tensor(tensor)
        except TensorProtoError as exc:
            raise invalid(f"input {name!r}: {exc}") from None
    return InferRequest(
        model=spec.name,
        version=version,
        label=label,
        signature=spec.signature_name or DEFAULT_SIGNATURE,
        inputs=inputs,
        outputs=list(message.output_filter) or None,
        deadline=_deadline(time_remaining),
        protocol=PROTOCOL,
    )


def encode_predict(
    name: str, version: int, signature: str, outputs: dict[str, np.ndarray]
) -> predict_pb2.PredictResponse:
    response = predict_pb2.PredictResponse()
    response_spec(response.model_spec, name, version, signature)
    for key, array in outputs.items():
        try:
            encode_tensor(array, response.outputs[key])
        except TensorProtoError as exc:
            raise invalid(f"output {key!r}: {exc}") from None
    return response


# --- Classify / Regress ----------------------------------------------------------------------------------


def serialized_examples(message: input_pb2.Input, what: str) -> np.ndarray:
    """The request's tf.Examples as a 1-D object array of serialized bytes (context merged in)."""
    kind = message.WhichOneof("kind")
    if kind == "example_list":
        items = [example.SerializeToString() for example in message.example_list.examples]
    elif kind == "example_list_with_context":
        context = message.example_list_with_context.context.SerializeToString()
        items = [context + example.SerializeToString() for example in message.example_list_with_context.examples]
    else:
        items = []
    if not items:
        raise invalid(f"{what}::input is empty.")
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out


def decode_examples_request(
    message: classification_pb2.ClassificationRequest | regression_pb2.RegressionRequest,
    what: str,
    time_remaining: float | None = None,
) -> InferRequest:
    spec = message.model_spec
    _require_name(spec)
    version, label = spec_version(spec)
    return InferRequest(
        model=spec.name,
        version=version,
        label=label,
        signature=spec.signature_name or DEFAULT_SIGNATURE,
        inputs={EXAMPLES_INPUT: serialized_examples(message.input, what)},
        deadline=_deadline(time_remaining),
        protocol=PROTOCOL,
    )


def _check_batch(name: str, array: np.ndarray, rows: int, ndim: Sequence[int]) -> None:
    if array.ndim not in ndim:
        want = "[batch_size, n]" if 1 not in ndim else "[batch_size] or [batch_size, 1]"
        raise invalid(f"Expected output {name!r} of shape {want}, got {list(array.shape)}")
    if array.shape[0] != rows:
        raise invalid(f"Expected {name} output batch size of {rows}. Got: {array.shape[0]}")


def encode_classification(
    result: classification_pb2.ClassificationResult, outputs: dict[str, np.ndarray], rows: int
) -> None:
    """TF Serving's PostProcessClassificationResult: classes [batch, n] strings and/or scores [batch, n] floats."""
    classes, scores = outputs.get(CLASSES_OUTPUT), outputs.get(SCORES_OUTPUT)
    for name, array in ((CLASSES_OUTPUT, classes), (SCORES_OUTPUT, scores)):
        if array is not None:
            _check_batch(name, array, rows, (2,))
    if scores is not None and scores.dtype != np.float32:
        raise invalid(f"Expected scores Tensor of DT_FLOAT. Got: {dtype_name(datatype_of(scores.dtype))}")
    if classes is not None and classes.dtype.kind != "O":
        raise invalid(f"Expected classes Tensor of DT_STRING. Got: {dtype_name(datatype_of(classes.dtype))}")
    if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
        got = f"{classes.shape[1]} vs. {scores.shape[1]}"
        raise invalid(f"Tensors class and score should match in dim_size(1). Got {got}")
    n = (classes if classes is not None else scores).shape[1]
    for i in range(rows):
        classifications = result.classifications.add()
        for c in range(n):
            cls = classifications.classes.add()
            if classes is not None:
                cls.label = _as_bytes(classes[i, c]).decode("utf-8", errors="replace")
            if scores is not None:
                cls.score = float(scores[i, c])


def encode_regression(result: regression_pb2.RegressionResult, outputs: dict[str, np.ndarray], rows: int) -> None:
    """TF Serving's PostProcessRegressionResult: outputs of shape [batch] or [batch, 1], float."""
    values = outputs[REGRESS_OUTPUT]
    _check_batch(REGRESS_OUTPUT, values, rows, (1, 2))
    if values.ndim == 2 and values.shape[1] != 1:
        shape = list(values.shape)
        raise invalid(f"Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got {shape}")
    if values.dtype != np.float32:
        raise invalid(f"Expected output Tensor of DT_FLOAT. Got: {dtype_name(datatype_of(values.dtype))}")
    for value in values.reshape(rows):
        result.regressions.add(value=float(value))
