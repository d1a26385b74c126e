"""Request building and response parsing shared by Client and AsyncClient (no I/O here)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from kerve import codecs
from kerve.protos import grpc_service_pb2 as pb

from .errors import InvalidArgumentError, ServerError


@dataclass(frozen=True)
class TensorInfo:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1 marks a variable dimension


@dataclass(frozen=True)
class ModelMetadata:
    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]


@dataclass(frozen=True)
class InferResult:
    model_name: str
    model_version: str
    id: str
    outputs: dict[str, np.ndarray]


@dataclass(frozen=True)
class ModelIndexEntry:
    name: str
    version: str
    state: str
    reason: str


def build_infer_request(
    model: str,
    inputs: Mapping[str, Any],
    version: int | str | None = None,
    outputs: Sequence[str] | None = None,
    request_id: str = "",
) -> pb.ModelInferRequest:
    """A ModelInferRequest carrying every input as raw contents (the zero-copy path on the server)."""
    if not inputs:
        raise InvalidArgumentError("inputs is empty: pass {input_name: array}")
    request = pb.ModelInferRequest(
        model_name=model, model_version="" if version is None else str(version), id=request_id
    )
    for name, value in inputs.items():
        array = np.asarray(value)
        if array.dtype.kind == "U":
            array = array.astype(object)
        try:
            datatype = codecs.datatype_of(array.dtype)
            raw = codecs.encode_raw(array)
        except codecs.CodecError as exc:
            raise InvalidArgumentError(f"input {name!r}: {exc}") from None
        request.inputs.add(name=name, datatype=datatype, shape=list(array.shape))
        request.raw_input_contents.append(raw)
    for name in outputs or ():
        request.outputs.add(name=name)
    return request


def parse_infer_response(response: pb.ModelInferResponse) -> InferResult:
    """Outputs as arrays; raw contents are decoded without a copy, typed contents are converted."""
    raw = response.raw_output_contents
    if raw and len(raw) != len(response.outputs):
        raise ServerError(f"response has {len(response.outputs)} outputs but {len(raw)} raw contents")
    arrays: dict[str, np.ndarray] = {}
    for i, out in enumerate(response.outputs):
        try:
            if raw:
                arrays[out.name] = codecs.decode_raw(raw[i], out.datatype, out.shape)
            else:
                arrays[out.name] = codecs.decode_contents(out.contents, out.datatype, out.shape)
        except codecs.CodecError as exc:
            raise ServerError(f"output {out.name!r}: {exc}") from None
    return InferResult(response.model_name, response.model_version, response.id, arrays)


def _tensors(items: Any) -> tuple[TensorInfo, ...]:
    return tuple(TensorInfo(t.name, t.datatype, tuple(t.shape)) for t in items)


def parse_metadata(response: pb.ModelMetadataResponse) -> ModelMetadata:
    return ModelMetadata(
        name=response.name,
        versions=tuple(response.versions),
        platform=response.platform,
        inputs=_tensors(response.inputs),
        outputs=_tensors(response.outputs),
    )


def parse_index(response: pb.RepositoryIndexResponse) -> list[ModelIndexEntry]:
    return [ModelIndexEntry(m.name, m.version, m.state, m.reason) for m in response.models]
