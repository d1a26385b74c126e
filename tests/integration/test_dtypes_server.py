"""Tensors beyond float32 in a real server: bfloat16 in and out over both protocols, and a dtype V2 cannot carry."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import tensorflow as tf
import tritonclient.grpc as triton
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
from tritonclient.utils import InferenceServerException

from helpers import running_server

pytestmark = pytest.mark.integration

BF16 = tf.bfloat16.as_numpy_dtype
X = np.array([[1.5, -2.25, 3.0], [0.1, 7.0, -0.5]], dtype=np.float32)


class Halve(tf.Module):
    """bfloat16 in and out, as a mixed-precision (TPU-trained) model can be."""

    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.bfloat16, name="x")])
    def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"half": x / 2, "wide": tf.cast(x, tf.float32)}


class Complex(tf.Module):
    """One output V2 has no datatype for, beside one it has."""

    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x")])
    def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"c": tf.complex(x, x), "real": x + 1}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> str:
    repo = tmp_path_factory.mktemp("dtypes")
    for name, module in (("halve", Halve()), ("complex", Complex())):
        tf.saved_model.save(module, str(repo / name / "1"), signatures={"serving_default": module.serve})
    with running_server(repo, tmp_path_factory.mktemp("logs")) as (target, _):
        yield target


def test_bfloat16_over_v2(server: str) -> None:
    client = triton.InferenceServerClient(server)
    meta = client.get_model_metadata("halve", as_json=True)
    assert meta["inputs"] == [{"name": "x", "datatype": "BF16", "shape": ["-1", "3"]}]
    config = client.get_model_config("halve", as_json=True)["config"]
    assert [o["data_type"] for o in config["output"]] == ["TYPE_BF16", "TYPE_FP32"]

    inp = triton.InferInput("x", list(X.shape), "BF16")
    inp.set_data_from_numpy(X.astype(BF16))
    result = client.infer("halve", [inp])
    expected = X.astype(BF16) / BF16(2)
    got = result.as_numpy("half")
    assert result.get_output("half").datatype == "BF16"
    assert np.asarray(got, dtype=np.float32).tolist() == expected.astype(np.float32).tolist()
    assert result.as_numpy("wide").tolist() == X.astype(BF16).astype(np.float32).tolist()
    client.close()


def test_bfloat16_over_tf_serving(server: str) -> None:
    with grpc.insecure_channel(server) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "halve"
        request.inputs["x"].CopyFrom(tf.make_tensor_proto(X.astype(BF16)))
        outputs = stub.Predict(request, timeout=30).outputs
    half = tf.make_ndarray(outputs["half"])
    assert half.dtype == BF16 and half.tobytes() == (X.astype(BF16) / BF16(2)).tobytes()


def test_a_dtype_v2_cannot_carry_is_a_precise_error_not_a_crash(server: str) -> None:
    client = triton.InferenceServerClient(server)
    message = "model 'complex' output 'c' has dtype complex64, which the V2 protocol cannot carry"
    inp = triton.InferInput("x", list(X.shape), "FP32")
    inp.set_data_from_numpy(X)
    for call in (
        lambda: client.get_model_metadata("complex"),
        lambda: client.get_model_config("complex"),
        lambda: client.infer("complex", [inp]),
    ):
        with pytest.raises(InferenceServerException) as info:
            call()
        assert info.value.status() == "StatusCode.FAILED_PRECONDITION" and message in info.value.message()
    # the outputs it can carry are still served
    real = client.infer("complex", [inp], outputs=[triton.InferRequestedOutput("real")]).as_numpy("real")
    assert real.tolist() == (X + 1).tolist()

    answers: list = []
    client.start_stream(callback=lambda result, error: answers.append((result, error)))
    client.async_stream_infer("complex", [inp], request_id="a")
    client.async_stream_infer("complex", [inp], outputs=[triton.InferRequestedOutput("real")], request_id="b")
    client.stop_stream()  # waits for the answers; the stream survives the first one's error
    client.close()
    (first, first_error), (second, second_error) = answers
    assert first is None and message in str(first_error)
    assert second_error is None and second.as_numpy("real").tolist() == (X + 1).tolist()
