"""The V2 classification extension (server/v2_codec.py): top classes instead of a raw output tensor."""

from __future__ import annotations

import numpy as np
import pytest

from kerve import codecs
from kerve.protos import grpc_service_pb2 as pb
from server.errors import ErrorCode, ServingError
from server.types import InferResponse
from server.v2_codec import OutputRequests, classification_counts, encode_response, output_requests, top_classes


def request(**params: pb.InferParameter) -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name="m")
    message.inputs.add(name="x", datatype="FP32", shape=[1, 2], contents=pb.InferTensorContents(fp32_contents=[1, 2]))
    out = message.outputs.add(name="probs")
    for key, value in params.items():
        out.parameters[key].CopyFrom(value)
    message.outputs.add(name="other")
    return message


def test_top_classes_per_row_highest_first_ties_by_index() -> None:
    scores = np.array([[1, 5, 10, 4], [0.5, 0.5, 0.25, 0.75]], dtype=np.float32)
    got = top_classes("probs", scores, 2)
    assert got.shape == (2, 2) and got.dtype == object
    assert got.tolist() == [[b"10:2", b"5:1"], [b"0.75:3", b"0.5:0"]]


def test_top_classes_keeps_float32_digits_and_integer_scores() -> None:
    assert top_classes("p", np.array([[0.1, 0.7]], dtype=np.float32), 1).tolist() == [[b"0.7:1"]]
    assert top_classes("p", np.array([[3, -1, 7]], dtype=np.int64), 3).tolist() == [[b"7:2", b"3:0", b"-1:1"]]


def test_bfloat16_scores_rank_like_floats() -> None:
    ml_dtypes = pytest.importorskip("ml_dtypes")
    scores = np.array([[0.25, 0.5, 0.125]], dtype=ml_dtypes.bfloat16)
    assert top_classes("p", scores, 2).tolist() == [[b"0.5:1", b"0.25:0"]]


def test_an_unbatched_output_and_more_classes_asked_than_there_are() -> None:
    assert top_classes("p", np.array([0.2, 0.9], dtype=np.float32), 5).tolist() == [b"0.9:1", b"0.2:0"]


def test_a_batched_1d_output_has_one_class_per_row() -> None:
    # a batched model's [batch] output (a sigmoid score per row): each caller's row ranked alone, as Triton does
    scores = np.array([0.2, 0.9, 0.4], dtype=np.float32)
    assert top_classes("p", scores, 3, batched=True).tolist() == [[b"0.2:0"], [b"0.9:0"], [b"0.4:0"]]
    response = InferResponse(model="m", version=1, outputs={"probs": scores}, batched=True)
    message = encode_response(response, OutputRequests(classify={"probs": 2}, shared_memory={}))
    assert list(message.outputs[0].shape) == [3, 1]


def test_every_element_past_the_batch_dimension_is_a_class() -> None:
    scores = np.arange(8, dtype=np.float32).reshape(2, 2, 2)
    assert top_classes("p", scores, 1).tolist() == [[b"3:3"], [b"7:3"]]


def test_a_scalar_is_one_class_and_no_rows_are_no_classes() -> None:
    # as Triton answers: a 0-d output ranks as one class; an empty batch gets empty classes, not an error
    assert top_classes("p", np.asarray(np.float32(6.0)), 3).tolist() == [b"6:0"]
    empty = top_classes("p", np.zeros((0, 3), np.float32), 2)
    assert empty.shape == (0, 2) and empty.dtype == object
    assert top_classes("p", np.zeros((0,), np.float32), 2, batched=True).shape == (0, 1)


@pytest.mark.parametrize("scores", [np.array([b"a", b"b"], dtype=object), np.array(["x"])])
def test_scores_that_cannot_be_ranked_are_refused(scores: np.ndarray) -> None:
    with pytest.raises(ServingError) as info:
        top_classes("probs", np.asarray(scores), 1)
    assert info.value.code is ErrorCode.INVALID_ARGUMENT and "output 'probs'" in info.value.message


def test_counts_come_from_the_requested_outputs_classification_parameter() -> None:
    assert classification_counts(request(classification=pb.InferParameter(int64_param=3))) == {"probs": 3}
    assert classification_counts(request(classification=pb.InferParameter(uint64_param=2))) == {"probs": 2}
    assert classification_counts(request(binary_data=pb.InferParameter(bool_param=True))) == {}


@pytest.mark.parametrize(
    "param", [pb.InferParameter(int64_param=0), pb.InferParameter(int64_param=-2), pb.InferParameter(string_param="3")]
)
def test_a_bad_class_count_fails_before_the_model_runs(param: pb.InferParameter) -> None:
    with pytest.raises(ServingError) as info:
        output_requests(request(classification=param))
    assert info.value.code is ErrorCode.INVALID_ARGUMENT
    assert "output 'probs': the classification parameter must be a positive integer" in info.value.message


def test_encode_response_sends_classified_outputs_as_bytes_and_the_rest_raw() -> None:
    probs = np.array([[0.1, 0.6, 0.3]], dtype=np.float32)
    other = np.array([[1.5]], dtype=np.float32)
    response = InferResponse(model="m", version=1, outputs={"probs": probs, "other": other})
    outputs = output_requests(request(classification=pb.InferParameter(int64_param=2)))
    assert outputs == OutputRequests(classify={"probs": 2}, shared_memory={})
    message = encode_response(response, outputs)
    (a, b) = message.outputs
    assert (a.name, a.datatype, list(a.shape)) == ("probs", "BYTES", [1, 2])
    assert codecs.decode_raw(message.raw_output_contents[0], "BYTES", [1, 2]).tolist() == [[b"0.6:1", b"0.3:2"]]
    assert (b.name, b.datatype, list(b.shape)) == ("other", "FP32", [1, 1])
    assert encode_response(response).outputs[0].datatype == "FP32"


def test_labels_name_the_classes_that_have_one() -> None:
    scores = np.array([[0.1, 0.7, 0.2]], dtype=np.float32)
    assert top_classes("p", scores, 3, ("a", "b")).tolist() == [[b"0.7:1:b", b"0.2:2", b"0.1:0:a"]]
    response = InferResponse(model="m", version=1, outputs={"probs": scores}, class_labels={"probs": ("x", "y", "z")})
    message = encode_response(response, output_requests(request(classification=pb.InferParameter(int64_param=1))))
    assert codecs.decode_raw(message.raw_output_contents[0], "BYTES", [1, 1]).tolist() == [[b"0.7:1:y"]]


def test_each_classified_output_is_named_by_its_own_labels() -> None:
    message = pb.ModelInferRequest(model_name="m")
    for name in ("animal", "color", "raw"):
        message.outputs.add(name=name).parameters["classification"].int64_param = 1
    outputs = {
        "animal": np.array([[0.2, 0.5, 0.3]], dtype=np.float32),
        "color": np.array([[0.9, 0.1]], dtype=np.float32),
        "raw": np.array([[0.4, 0.6]], dtype=np.float32),
    }
    labels = {"animal": ("cat", "dog", "bird"), "color": ("red", "blue")}
    response = InferResponse(model="m", version=1, outputs=outputs, class_labels=labels)
    encoded = encode_response(response, output_requests(message))
    got = [codecs.decode_raw(raw, "BYTES", [1, 1]).tolist() for raw in encoded.raw_output_contents]
    assert got == [[[b"0.5:1:dog"]], [[b"0.9:0:red"]], [[b"0.6:1"]]]
