"""TensorProto <-> numpy against TensorFlow's own tf.make_tensor_proto / tf.make_ndarray (no server)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2

from kerve.server import tfs_codec
from kerve.server.errors import ErrorCode, ServingError
from kerve.server.tfs_codec import TensorProtoError, decode_tensor, encode_tensor
from kerve.server.validation import DtypeMismatch

pytestmark = pytest.mark.integration

RNG = np.random.default_rng(1)
ARRAYS = [
    RNG.random((2, 3), dtype=np.float32),
    RNG.random((4,), dtype=np.float64),
    RNG.integers(-100, 100, (2, 2, 2), dtype=np.int32),
    RNG.integers(-(2**40), 2**40, (3,), dtype=np.int64),
    RNG.integers(0, 255, (5,), dtype=np.uint8),
    RNG.integers(-100, 100, (5,), dtype=np.int8),
    RNG.integers(-1000, 1000, (5,), dtype=np.int16),
    RNG.integers(0, 60000, (5,), dtype=np.uint16),
    RNG.integers(0, 2**31, (2,), dtype=np.uint32),
    RNG.integers(0, 2**62, (2,), dtype=np.uint64),
    RNG.random((3,)).astype(np.float16),
    RNG.random((2, 3)).astype(tf.bfloat16.as_numpy_dtype),  # DT_BFLOAT16: mixed-precision (TPU) models' outputs
    np.array([[True, False, True]]),
    np.array([b"a", b"", "\u00e9".encode()], dtype=object),
    np.float32(2.5).reshape(()),
    np.zeros((0, 3), np.float32),
]


@pytest.mark.parametrize("array", ARRAYS, ids=lambda a: f"{a.dtype}{list(a.shape)}")
def test_decode_reads_what_tensorflow_writes(array: np.ndarray) -> None:
    got = decode_tensor(tf.make_tensor_proto(array))  # TF picks tensor_content or typed fields per dtype
    assert got.dtype == (object if array.dtype == object else array.dtype) and got.shape == array.shape
    assert got.tolist() == array.tolist()


@pytest.mark.parametrize("array", ARRAYS, ids=lambda a: f"{a.dtype}{list(a.shape)}")
def test_tensorflow_reads_what_encode_writes(array: np.ndarray) -> None:
    back = tf.make_ndarray(encode_tensor(array))
    assert back.shape == array.shape and back.tolist() == array.tolist()
    if array.dtype != object:
        assert back.dtype == array.dtype and back.tobytes() == array.tobytes()


def test_bfloat16_typed_values_are_the_bits_in_half_val() -> None:
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_BFLOAT16)
    proto.tensor_shape.dim.add(size=2)
    proto.half_val.extend([0x3FC0, 0xC040])  # 1.5, -3.0
    got = decode_tensor(proto)
    assert got.dtype == tf.bfloat16.as_numpy_dtype and got.tolist() == tf.make_ndarray(proto).tolist() == [1.5, -3.0]


def test_tensor_content_is_viewed_not_copied_per_element() -> None:
    proto = tf.make_tensor_proto(RNG.random((64, 64), dtype=np.float32))
    assert proto.tensor_content
    got = decode_tensor(proto)
    assert not got.flags.writeable and not got.flags.owndata  # a view over the field's bytes


def test_typed_fields_follow_tensorflow_fill_rules() -> None:
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT)
    for size in (2, 3):
        proto.tensor_shape.dim.add(size=size)
    proto.float_val.extend([1.5, 2.5])  # fewer than 6 values: the last one repeats
    assert decode_tensor(proto).tolist() == tf.make_ndarray(proto).tolist() == [[1.5, 2.5, 2.5], [2.5, 2.5, 2.5]]
    del proto.float_val[:]
    assert decode_tensor(proto).tolist() == [[0.0] * 3] * 2  # none: zeros


def test_out_of_range_int_val_keeps_its_low_bits_as_tensorflow_does() -> None:
    """int_val and half_val are int32 fields: TensorFlow's C++ Tensor::FromProto casts them to the narrower type
    (its Python make_ndarray raises instead), so the low bits of an out-of-range value stay."""
    half_bits = np.array([0xFFFF, 4464], np.uint16)  # -1 and 70000, their low 16 bits
    cases = [(types_pb2.DT_UINT8, "int_val", [300, -1], np.array([44, 255], np.uint8)),
             (types_pb2.DT_INT8, "int_val", [200], np.array([-56], np.int8)),
             (types_pb2.DT_INT16, "int_val", [70000], np.array([4464], np.int16)),
             (types_pb2.DT_UINT16, "int_val", [-2], np.array([65534], np.uint16)),
             (types_pb2.DT_HALF, "half_val", [-1, 70000], half_bits.view(np.float16))]  # fmt: skip
    for dtype, field, sent, expected in cases:
        proto = tensor_pb2.TensorProto(dtype=dtype)
        proto.tensor_shape.dim.add(size=len(sent))
        getattr(proto, field).extend(sent)
        got = decode_tensor(proto)
        assert got.dtype == expected.dtype
        assert got.tobytes() == expected.tobytes(), types_pb2.DataType.Name(dtype)


def test_shapes_too_large_to_hold_or_to_fill_are_refused() -> None:
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT)
    for size in (2**32, 2**32):
        proto.tensor_shape.dim.add(size=size)
    with pytest.raises(TensorProtoError, match=r"more than 2\*\*63 - 1 elements"):
        decode_tensor(proto)
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT)
    proto.tensor_shape.dim.add(size=2**40)
    proto.float_val.append(1.0)  # one value repeated over 2**40 elements: 4 TiB
    with pytest.raises(TensorProtoError, match="repeating them would take 4398046511104 bytes"):
        decode_tensor(proto)
    for dims in ([1] * 65, [0, 2**62, 2**62]):  # TensorFlow takes both; numpy cannot build either
        proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT)
        for size in dims:
            proto.tensor_shape.dim.add(size=size)
        proto.float_val.extend([1.0] * math.prod(dims))
        with pytest.raises(TensorProtoError, match="cannot be made into an array"):
            decode_tensor(proto)
        proto.ClearField("float_val")
        proto.tensor_content = b"\0\0\0\0" * math.prod(dims)
        with pytest.raises(TensorProtoError, match="cannot be made into an array"):
            decode_tensor(proto)


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (lambda p: setattr(p, "dtype", types_pb2.DT_VARIANT), "dtype DT_VARIANT is not supported"),
        (lambda p: setattr(p, "tensor_content", p.tensor_content[:-1]), "tensor_content has 23 bytes, expected 24"),
        (lambda p: p.tensor_shape.dim.add(size=-1), "negative dimension"),
        (lambda p: setattr(p.tensor_shape, "unknown_rank", True), "unknown rank"),
        (lambda p: p.int_val.append(3), "reads float_val, but int_val is set"),
    ],
)
def test_malformed_tensors_are_rejected(mutate, fragment: str) -> None:  # noqa: ANN001
    proto = tf.make_tensor_proto(np.zeros((2, 3), np.float32))
    mutate(proto)
    with pytest.raises(TensorProtoError, match=fragment):
        decode_tensor(proto)


def test_extra_values_and_a_tensor_content_beside_them_read_as_tensorflow_reads_them() -> None:
    """TensorFlow's Tensor::FromProto (tf.io.parse_tensor here) takes the first values a shape needs, and reads
    tensor_content when it is set whatever a typed field holds: so does kerve, so a sloppy client's request that
    TF Serving serves is served."""
    extra = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT)
    for size in (1, 2):
        extra.tensor_shape.dim.add(size=size)
    extra.float_val.extend([1.0, 2.0, 3.0])
    both = tf.make_tensor_proto(np.array([1.5, 2.5], np.float32))
    both.float_val.append(9.0)
    for proto in (extra, both):
        expected = tf.io.parse_tensor(proto.SerializeToString(), tf.float32).numpy()
        np.testing.assert_array_equal(decode_tensor(proto), expected)


def test_predict_request_names_the_bad_input() -> None:
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "m"
    request.model_spec.version_label = "stable"
    request.inputs["good"].CopyFrom(tf.make_tensor_proto(np.ones(2, np.float32)))
    request.output_filter.append("y")
    decoded = tfs_codec.decode_predict(request, time_remaining=5.0)
    assert (decoded.model, decoded.version, decoded.label) == ("m", None, "stable")
    assert decoded.signature == "serving_default"
    assert decoded.outputs == ["y"] and decoded.protocol == "tfs" and decoded.deadline is not None
    request.inputs["bad"].dtype = types_pb2.DT_RESOURCE
    with pytest.raises(ServingError, match="input 'bad': dtype DT_RESOURCE is not supported"):
        tfs_codec.decode_predict(request)


def test_error_messages_name_dtypes_as_tensorflow_does() -> None:
    error = DtypeMismatch("x", np.dtype(np.float32), np.dtype(np.float16))
    assert tfs_codec.error_message(error) == "input 'x': expected dtype DT_FLOAT, got DT_HALF"
    strings = DtypeMismatch("s", np.dtype(object), np.dtype(np.int64))
    assert tfs_codec.error_message(strings) == "input 's': expected dtype DT_STRING, got DT_INT64"
    bf16 = DtypeMismatch("b", np.dtype(tf.bfloat16.as_numpy_dtype), np.dtype(np.complex64))
    assert tfs_codec.error_message(bf16) == "input 'b': expected dtype DT_BFLOAT16, got DT_COMPLEX64"
    odd = DtypeMismatch("d", np.dtype(np.float32), np.dtype("datetime64[s]"))  # no TensorFlow type: numpy's name
    assert tfs_codec.error_message(odd) == "input 'd': expected dtype DT_FLOAT, got datetime64[s]"
    assert tfs_codec.error_message(ServingError(ErrorCode.NOT_FOUND, "gone")) == "gone"


def test_complex_tensors_travel_as_tensorflow_writes_and_reads_them() -> None:
    """DT_COMPLEX64/128: in tensor_content, or as (real, imaginary) pairs in scomplex_val / dcomplex_val, repeated
    to fill the shape as any typed field; kerve answers them in tensor_content, which TensorFlow reads back."""
    for dtype, field in ((np.complex64, "scomplex_val"), (np.complex128, "dcomplex_val")):
        array = (RNG.random((2, 3)) + 1j * RNG.random((2, 3))).astype(dtype)
        np.testing.assert_array_equal(decode_tensor(tf.make_tensor_proto(array)), array)
        assert tf.make_ndarray(encode_tensor(array)).tobytes() == array.tobytes()
        typed = tensor_pb2.TensorProto(dtype=tf.as_dtype(dtype).as_datatype_enum)
        for size in (2, 2):
            typed.tensor_shape.dim.add(size=size)
        getattr(typed, field).extend([1.0, 2.0, 3.0, -4.0])  # two of the four elements: the last one repeats
        expected = tf.io.parse_tensor(typed.SerializeToString(), tf.as_dtype(dtype)).numpy()
        np.testing.assert_array_equal(decode_tensor(typed), expected)
        getattr(typed, field).append(5.0)
        with pytest.raises(TensorProtoError, match="complex elements are \\(real, imaginary\\) pairs"):
            decode_tensor(typed)
