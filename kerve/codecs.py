"""numpy <-> Open Inference Protocol (V2) tensor encoding, shared by the client and the server.

Kept free of TensorFlow and of server code so that `pip install kerve` (client only) can use it. Raw
contents are row-major little-endian bytes; BYTES elements are each prefixed by a 4-byte little-endian length,
the layout tritonclient writes and reads.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

_NUMERIC: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
BYTES = "BYTES"
BF16 = "BF16"  # bfloat16: numpy has no such type; ml_dtypes (a TensorFlow dependency) provides it
BFLOAT16 = "bfloat16"  # the numpy name of ml_dtypes' type
DATATYPES: tuple[str, ...] = (*_NUMERIC, BF16, BYTES)

# Which InferTensorContents field carries each datatype; FP16 and BF16 have none and must travel as raw bytes.
_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    BYTES: "bytes_contents",
}
_LEN = struct.Struct("<I")
# what a typed contents field holds on the wire: narrower integer types are cast from it, keeping the low bits of
# an out-of-range value as Triton does (numpy refuses such a value in the narrower type outright)
_WIRE_TYPE = {"int_contents": np.int32, "uint_contents": np.uint32}


class CodecError(ValueError):
    """The tensor cannot be encoded or decoded; the message says why, for the caller to prefix a name."""


def datatype_of(dtype: np.dtype[Any] | type) -> str:
    """The V2 datatype for a numpy dtype; strings and bytes (and object arrays of them) are BYTES."""
    dt = np.dtype(dtype)
    if dt.kind in ("O", "S", "U"):
        return BYTES
    if dt.kind == "V" and dt.name == BFLOAT16:  # kind first: numpy computes .name in Python, slowly
        return BF16
    for name, candidate in _NUMERIC.items():
        if dt.kind == candidate.kind and dt.itemsize == candidate.itemsize:
            return name
    raise CodecError(f"numpy dtype {dt} has no V2 datatype")


def dtype_of(datatype: str) -> np.dtype[Any]:
    """The numpy dtype a V2 datatype decodes to (BYTES -> object array of bytes)."""
    if datatype == BYTES:
        return np.dtype(object)
    if datatype == BF16:
        return bfloat16()
    try:
        return _NUMERIC[datatype]
    except KeyError:
        raise CodecError(f"unsupported datatype {datatype!r}; supported: {', '.join(DATATYPES)}") from None


def bfloat16() -> np.dtype[Any]:
    """numpy's dtype for BF16 tensors, from ml_dtypes: installed with TensorFlow (so always on a server), optional
    for a client that installs without it."""
    try:
        import ml_dtypes
    except ImportError:
        raise CodecError("BF16 tensors need the ml_dtypes package (pip install ml-dtypes)") from None
    return np.dtype(ml_dtypes.bfloat16)


def element_count(shape: Sequence[int]) -> int:
    count = 1
    for dim in shape:
        if dim < 0:
            raise CodecError(f"shape {list(shape)} has a negative dimension")
        count *= dim
    return count


def wire_array(value: Any) -> tuple[np.ndarray, str]:
    """`value` (an array, or anything numpy makes one of) as the array a request carries and its V2 datatype:
    numpy's fixed-width unicode strings become BYTES elements. Strings and bytes given as lists (or alone) become
    an object array of them as they are: numpy's fixed-width types would drop their trailing NUL bytes (a
    serialized protobuf ending in 0x00 would arrive one byte short)."""
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as exc:  # a ragged list: no array to send, the caller's input at fault
        raise CodecError(f"cannot be made into an array: {exc}") from None
    if array.dtype.kind in "SU" and not isinstance(value, np.ndarray):
        array = np.array(value, dtype=object)
    if array.dtype.kind == "U":
        array = array.astype(object)
    return array, datatype_of(array.dtype)


def write_raw(array: np.ndarray, target: memoryview) -> int:
    """Write the array's raw V2 bytes (what encode_raw returns) at the start of `target`, numeric ones straight
    from the array (one copy); return how many bytes they take. Nothing is written when they do not fit: the
    caller compares the result with len(target) and words its own error."""
    datatype = datatype_of(array.dtype)
    if datatype == BYTES:
        data = _encode_bytes_elements(array)
        if len(data) <= len(target):
            target[: len(data)] = data
        return len(data)
    dtype = bfloat16() if datatype == BF16 else _NUMERIC[datatype]
    if array.nbytes <= len(target):
        np.frombuffer(target, dtype=dtype, count=array.size)[...] = array.reshape(-1)
    return array.nbytes


def encode_raw(array: np.ndarray) -> bytes:
    """Raw V2 bytes for an array (little-endian, row-major; BYTES length-prefixed)."""
    datatype = datatype_of(array.dtype)
    if datatype == BYTES:
        return _encode_bytes_elements(array)
    target = bfloat16() if datatype == BF16 else _NUMERIC[datatype]
    return np.ascontiguousarray(array, dtype=target).tobytes()


def _encode_bytes_elements(array: np.ndarray) -> bytes:
    parts: list[bytes] = []
    for item in np.asarray(array, dtype=object).ravel(order="C"):
        if isinstance(item, str):
            item = item.encode("utf-8")
        elif isinstance(item, np.bytes_ | bytes | bytearray | memoryview):
            item = bytes(item)
        else:
            raise CodecError(f"BYTES element of type {type(item).__name__} is neither bytes nor str")
        parts.append(_LEN.pack(len(item)))
        parts.append(item)
    return b"".join(parts)


def decode_raw(raw: bytes, datatype: str, shape: Sequence[int]) -> np.ndarray:
    """An array viewing `raw` without a copy where the datatype allows (read-only for numeric types)."""
    count = element_count(shape)
    if datatype == BYTES:
        return _reshaped(_decode_bytes_elements(raw, count), shape)
    dtype = dtype_of(datatype)
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise CodecError(f"raw content has {len(raw)} bytes, expected {expected} for shape {list(shape)} of {datatype}")
    return _reshaped(np.frombuffer(raw, dtype=dtype), shape)


def _reshaped(array: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    # numpy refuses some shapes whose element count matches: more than 64 dimensions, or dimensions whose product
    # overflows beside a zero ("array is too big"); a bare ValueError would reach the client as UNKNOWN
    try:
        return array.reshape(tuple(shape))
    except ValueError as exc:
        raise CodecError(f"shape {list(shape)} cannot be made into an array: {exc}") from None


def _decode_bytes_elements(raw: bytes, count: int) -> np.ndarray:
    if 4 * count > len(raw):  # before allocating: every element has a 4-byte length prefix
        raise CodecError(f"raw BYTES content of {len(raw)} bytes cannot hold {count} elements (4 bytes each at least)")
    out = np.empty(count, dtype=object)
    view = memoryview(raw)
    offset = 0
    for i in range(count):
        if offset + 4 > len(view):
            raise CodecError(f"raw BYTES content ends after {i} of {count} elements")
        (length,) = _LEN.unpack_from(view, offset)
        offset += 4
        if offset + length > len(view):
            raise CodecError(f"raw BYTES element {i} claims {length} bytes, only {len(view) - offset} remain")
        out[i] = bytes(view[offset : offset + length])
        offset += length
    if offset != len(view):
        raise CodecError(f"raw BYTES content has {len(view) - offset} trailing bytes after {count} elements")
    return out


def contents_field(datatype: str) -> str:
    """Name of the InferTensorContents field for a datatype."""
    dtype_of(datatype)
    try:
        return _CONTENTS_FIELD[datatype]
    except KeyError:
        raise CodecError(f"{datatype} has no typed contents field; send it as raw contents") from None


def decode_contents(contents: Any, datatype: str, shape: Sequence[int]) -> np.ndarray:
    """An array from an InferTensorContents message, checked against shape."""
    field = contents_field(datatype)
    values = getattr(contents, field)
    count = element_count(shape)
    if len(values) != count:
        raise CodecError(f"{field} has {len(values)} elements, expected {count} for shape {list(shape)}")
    for other in set(_CONTENTS_FIELD.values()) - {field}:
        if len(getattr(contents, other)):
            raise CodecError(f"contents set {other} but datatype {datatype} uses {field}")
    if datatype == BYTES:
        out = np.empty(count, dtype=object)
        out[:] = list(values)
        return _reshaped(out, shape)
    dtype = dtype_of(datatype)
    wire = _WIRE_TYPE.get(field)
    array = (
        np.asarray(values, dtype=dtype) if wire is None else np.asarray(values, dtype=wire).astype(dtype, copy=False)
    )
    return _reshaped(array, shape)


def encode_contents(array: np.ndarray, contents: Any) -> str:
    """Fill an InferTensorContents message from an array; return the V2 datatype."""
    datatype = datatype_of(array.dtype)
    field = contents_field(datatype)
    flat = np.asarray(array).ravel(order="C")
    if datatype == BYTES:
        getattr(contents, field).extend(item.encode("utf-8") if isinstance(item, str) else bytes(item) for item in flat)
    else:
        getattr(contents, field).extend(flat.tolist())
    return datatype


_CONTENTS_FIELDS = tuple(sorted(set(_CONTENTS_FIELD.values())))


def has_contents(contents: Any) -> bool:
    return any(len(getattr(contents, f)) for f in _CONTENTS_FIELDS)
