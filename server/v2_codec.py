"""Open Inference Protocol (V2) messages <-> InferRequest / InferResponse.

Raw contents are decoded with np.frombuffer (no copy); typed contents are converted. Every malformed tensor
raises INVALID_ARGUMENT naming the input.
"""

from __future__ import annotations

import time

import numpy as np

from kerve import codecs
from kerve.protos import grpc_service_pb2 as pb

from .errors import invalid
from .manager import parse_version
from .types import InferRequest, InferResponse, TensorSpec


def decode_request(message: pb.ModelInferRequest, time_remaining: float | None = None) -> InferRequest:
    if not message.model_name:
        raise invalid("model_name is required")
    version = parse_version(message.model_name, message.model_version)
    raw = message.raw_input_contents
    if raw and len(raw) != len(message.inputs):
        raise invalid(
            f"raw_input_contents has {len(raw)} entries but the request has {len(message.inputs)} inputs; "
            "send one raw entry per input, in order"
        )
    inputs: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(message.inputs):
        name = tensor.name
        if not name:
            raise invalid(f"input #{i} has no name")
        if name in inputs:
            raise invalid(f"input {name!r} appears more than once")
        try:
            if raw:
                # HasField first: a client that never touched `contents` (the raw path) skips the field scan
                if tensor.HasField("contents") and codecs.has_contents(tensor.contents):
                    raise codecs.CodecError("set both contents and raw_input_contents; use one")
                inputs[name] = codecs.decode_raw(raw[i], tensor.datatype, tensor.shape)
            else:
                inputs[name] = codecs.decode_contents(tensor.contents, tensor.datatype, tensor.shape)
        except codecs.CodecError as exc:
            raise invalid(f"input {name!r}: {exc}") from None
    deadline = None if time_remaining is None else time.monotonic() + time_remaining
    return InferRequest(
        model=message.model_name,
        version=version,
        inputs=inputs,
        outputs=[o.name for o in message.outputs] or None,
        id=message.id,
        deadline=deadline,
        protocol="v2",
    )


def encode_response(response: InferResponse) -> pb.ModelInferResponse:
    message = pb.ModelInferResponse(model_name=response.model, model_version=str(response.version), id=response.id)
    for name, array in response.outputs.items():
        message.outputs.add(name=name, datatype=codecs.datatype_of(array.dtype), shape=list(array.shape))
        message.raw_output_contents.append(codecs.encode_raw(array))
    return message


def tensor_metadata(spec: TensorSpec) -> pb.ModelMetadataResponse.TensorMetadata:
    return pb.ModelMetadataResponse.TensorMetadata(
        name=spec.name, datatype=codecs.datatype_of(spec.dtype), shape=spec.wire_shape
    )
