"""A V2 request's parameters, checked as Triton checks them (SetInferenceRequestMetadata): reserved `triton_`
keys, the types of the keys Triton reads and of custom ones; and the `triton_final_response` flag a stream's
response carries when its request asked for it (tritonclient's `enable_empty_final_response`)."""

from __future__ import annotations

import numpy as np
import pytest

from kerve import codecs
from kerve.protos import grpc_service_pb2 as pb
from server.errors import ErrorCode, ServingError
from server.v2_codec import decode_request, wants_final_flag


def message(**params: pb.InferParameter) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 2])
    request.raw_input_contents.append(codecs.encode_raw(np.ones((1, 2), np.float32)))
    for key, value in params.items():
        request.parameters[key].CopyFrom(value)
    return request


def refusal(request: pb.ModelInferRequest) -> str:
    with pytest.raises(ServingError) as info:
        decode_request(request)
    assert info.value.code is ErrorCode.INVALID_ARGUMENT
    return info.value.message


def test_parameters_triton_accepts_pass() -> None:
    accepted = message(
        sequence_id=pb.InferParameter(string_param="s"),
        sequence_start=pb.InferParameter(bool_param=True),
        sequence_end=pb.InferParameter(bool_param=False),
        triton_enable_empty_final_response=pb.InferParameter(bool_param=True),
        mine=pb.InferParameter(int64_param=3),
        flag=pb.InferParameter(bool_param=True),
        note=pb.InferParameter(string_param="x"),
        priority=pb.InferParameter(uint64_param=1),
    )
    assert decode_request(accepted).priority == 1


def test_reserved_keys_and_wrong_types_are_refused_as_triton_refuses_them() -> None:
    assert refusal(message(triton_foo=pb.InferParameter(bool_param=True))) == (
        "parameter keys starting with 'triton_' are reserved for Triton usage. Only the following keys starting "
        "with 'triton_' are allowed: triton_enable_empty_final_response"
    )
    assert refusal(message(sequence_id=pb.InferParameter(double_param=1.0))) == (
        "invalid value type for 'sequence_id' parameter, expected int64_param or string_param."
    )
    assert refusal(message(sequence_end=pb.InferParameter(int64_param=1))) == (
        "invalid value type for 'sequence_end' parameter, expected bool_param."
    )
    assert refusal(message(mine=pb.InferParameter(double_param=0.5))) == (
        "invalid value type for 'mine' parameter, expected int64_param, bool_param, or string_param."
    )
    assert "expected bool_param" in refusal(
        message(triton_enable_empty_final_response=pb.InferParameter(string_param="yes"))
    )


def test_the_final_flag_follows_the_request() -> None:
    assert wants_final_flag(message(triton_enable_empty_final_response=pb.InferParameter(bool_param=True)))
    assert not wants_final_flag(message(triton_enable_empty_final_response=pb.InferParameter(bool_param=False)))
    assert not wants_final_flag(message())
