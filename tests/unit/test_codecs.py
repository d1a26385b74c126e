"""kerve.codecs: the V2 tensor encoding shared by client and server (pure numpy, no TF)."""

from __future__ import annotations

import numpy as np
import pytest

from kerve import codecs
from kerve.protos import grpc_service_pb2 as pb

NUMERIC = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64"]


@pytest.mark.parametrize("datatype", NUMERIC)
def test_raw_roundtrip_every_numeric_datatype(datatype: str) -> None:
    dtype = codecs.dtype_of(datatype)
    array = (np.arange(24) % 7).astype(dtype).reshape(2, 3, 4)
    assert codecs.datatype_of(array.dtype) == datatype
    raw = codecs.encode_raw(array)
    assert len(raw) == array.size * dtype.itemsize
    decoded = codecs.decode_raw(raw, datatype, [2, 3, 4])
    assert decoded.dtype == dtype and np.array_equal(decoded, array)


def test_bf16_travels_as_raw_bfloat16_bits() -> None:
    ml_dtypes = pytest.importorskip("ml_dtypes")
    array = np.array([[1.5, -2.25], [3.0, 0.1]], dtype=ml_dtypes.bfloat16)
    assert codecs.datatype_of(array.dtype) == "BF16" and codecs.dtype_of("BF16") == array.dtype
    raw = codecs.encode_raw(array)
    assert raw == array.view(np.uint16).astype("<u2").tobytes()  # 2 bytes each: the top half of a float32
    decoded = codecs.decode_raw(raw, "BF16", [2, 2])
    assert decoded.dtype == array.dtype and decoded.tobytes() == array.tobytes()
    with pytest.raises(codecs.CodecError, match="BF16 has no typed contents field"):
        codecs.decode_contents(pb.InferTensorContents(), "BF16", [1])


def test_bf16_without_ml_dtypes_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(__import__("sys").modules, "ml_dtypes", None)  # a client installed without it
    with pytest.raises(codecs.CodecError, match=r"BF16 tensors need the ml_dtypes package \(pip install ml-dtypes\)"):
        codecs.decode_raw(b"\x00\x00", "BF16", [1])


def test_decode_raw_is_zero_copy() -> None:
    raw = np.arange(6, dtype=np.float32).tobytes()
    decoded = codecs.decode_raw(raw, "FP32", [2, 3])
    assert not decoded.flags.writeable and not decoded.flags.owndata


def test_big_endian_input_is_written_little_endian() -> None:
    array = np.array([1, 256], dtype=">i4")
    assert codecs.encode_raw(array) == np.array([1, 256], dtype="<i4").tobytes()


def test_bytes_roundtrip_with_length_prefix() -> None:
    array = np.array([[b"a", b""], ["\u00e9", b"xyz"]], dtype=object)
    raw = codecs.encode_raw(array)
    assert raw[:5] == b"\x01\x00\x00\x00a"
    decoded = codecs.decode_raw(raw, "BYTES", [2, 2])
    assert decoded.tolist() == [[b"a", b""], ["\u00e9".encode(), b"xyz"]]


@pytest.mark.parametrize(
    ("raw", "count", "message"),
    [
        (b"\x05\x00\x00\x00ab", 1, "claims 5 bytes"),
        (b"\x01\x00", 1, "of 2 bytes cannot hold 1 elements"),
        (b"\x01\x00\x00\x00ab\x00\x00", 2, "ends after 1 of 2"),
        (b"\x01\x00\x00\x00ab", 1, "1 trailing bytes"),
    ],
)
def test_malformed_bytes_are_rejected(raw: bytes, count: int, message: str) -> None:
    with pytest.raises(codecs.CodecError, match=message):
        codecs.decode_raw(raw, "BYTES", [count])


def test_a_bytes_shape_too_large_for_its_content_is_refused_before_allocating() -> None:
    """Four bytes cannot hold 2**40 elements: refused at once, not after an object array of 8 TiB."""
    with pytest.raises(codecs.CodecError, match="of 4 bytes cannot hold 1099511627776 elements"):
        codecs.decode_raw(b"\x00" * 4, "BYTES", [2**40])


def test_out_of_range_typed_integers_keep_their_low_bits_as_triton_does() -> None:
    """int_contents / uint_contents carry 32 bits; a narrower type keeps the low ones (numpy alone would raise)."""
    cases = [("INT8", "int_contents", [200, -1], [-56, -1]), ("UINT8", "uint_contents", [300, 255], [44, 255]),
             ("INT16", "int_contents", [70000], [4464]), ("UINT16", "uint_contents", [70000], [4464])]  # fmt: skip
    for datatype, field, sent, got in cases:
        contents = pb.InferTensorContents(**{field: sent})
        decoded = codecs.decode_contents(contents, datatype, [len(sent)])
        assert decoded.dtype == codecs.dtype_of(datatype) and decoded.tolist() == got, datatype


def test_wrong_raw_length_names_sizes() -> None:
    with pytest.raises(codecs.CodecError, match="raw content has 12 bytes, expected 16 for shape \\[2, 2\\] of FP32"):
        codecs.decode_raw(b"\0" * 12, "FP32", [2, 2])


def test_negative_dimension_and_unknown_datatype() -> None:
    with pytest.raises(codecs.CodecError, match="negative dimension"):
        codecs.decode_raw(b"", "FP32", [-1, 2])
    with pytest.raises(codecs.CodecError, match="unsupported datatype 'FP8'"):
        codecs.dtype_of("FP8")
    with pytest.raises(codecs.CodecError, match="no V2 datatype"):
        codecs.datatype_of(np.complex64)


@pytest.mark.parametrize("datatype", [d for d in NUMERIC if d != "FP16"] + ["BYTES"])
def test_typed_contents_roundtrip(datatype: str) -> None:
    if datatype == "BYTES":
        array = np.array([b"x", b"yz", b"", b"w"], dtype=object).reshape(2, 2)
    else:
        array = (np.arange(4) % 2).astype(codecs.dtype_of(datatype)).reshape(2, 2)
    contents = pb.InferTensorContents()
    assert codecs.encode_contents(array, contents) == datatype
    assert codecs.has_contents(contents)
    decoded = codecs.decode_contents(contents, datatype, [2, 2])
    assert decoded.tolist() == array.tolist()


def test_typed_contents_checks() -> None:
    contents = pb.InferTensorContents(fp32_contents=[1.0, 2.0, 3.0])
    with pytest.raises(codecs.CodecError, match="fp32_contents has 3 elements, expected 4"):
        codecs.decode_contents(contents, "FP32", [2, 2])
    contents.int_contents.append(1)
    with pytest.raises(codecs.CodecError, match="contents set int_contents"):
        codecs.decode_contents(contents, "FP32", [3])
    with pytest.raises(codecs.CodecError, match="FP16 has no typed contents field"):
        codecs.decode_contents(pb.InferTensorContents(), "FP16", [1])


@pytest.mark.parametrize(
    "array",
    [
        np.arange(6, dtype=">f4").reshape(2, 3),  # big-endian in, V2's little-endian out
        np.array([True, False]),
        np.array([b"ab", b"", b"cde"], dtype=object),
        np.arange(4, dtype=np.int64)[::2],  # not contiguous
    ],
)
def test_write_raw_writes_what_encode_raw_returns(array: np.ndarray) -> None:
    expected = codecs.encode_raw(array)
    buffer = bytearray(len(expected) + 3)
    assert codecs.write_raw(array, memoryview(buffer)) == len(expected)
    assert bytes(buffer[: len(expected)]) == expected
    small = bytearray(len(expected) - 1)
    assert codecs.write_raw(array, memoryview(small)) == len(expected)  # too small: the size, nothing written
    assert small == bytearray(len(expected) - 1)


def test_wire_array_makes_unicode_strings_bytes_elements() -> None:
    array, datatype = codecs.wire_array(["a", "bc"])
    assert datatype == "BYTES" and array.dtype == object
    assert codecs.wire_array([[1.5]])[1] == "FP64"
    with pytest.raises(codecs.CodecError):
        codecs.wire_array(np.zeros(1, np.complex64))


@pytest.mark.parametrize(
    "shape",
    [
        [1] * 65,  # more dimensions than numpy takes
        [0, 2**62, 2**62],  # zero elements, but dimensions whose product overflows
    ],
)
def test_a_shape_numpy_cannot_build_is_a_codec_error(shape: list[int]) -> None:
    count = codecs.element_count(shape)
    contents = pb.InferTensorContents(fp32_contents=[1.0] * count)
    with pytest.raises(codecs.CodecError, match="cannot be made into an array"):
        codecs.decode_raw(b"\0" * 4 * count, "FP32", shape)
    with pytest.raises(codecs.CodecError, match="cannot be made into an array"):
        codecs.decode_contents(contents, "FP32", shape)
    with pytest.raises(codecs.CodecError, match="cannot be made into an array"):
        codecs.decode_raw(b"\0\0\0\0" * count, "BYTES", shape)
