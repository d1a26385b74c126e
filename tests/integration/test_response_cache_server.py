"""Triton's response cache against a real `kerve serve --response-cache-mb`: a model whose config.yaml opts in
answers a repeated request from the cache, whichever protocol asks (tritonclient, TF Serving's API, kerve.client),
counted in ModelStatistics as Triton counts it; its ModelConfig says so; another input still runs the model."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
import tritonclient.grpc as triton
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from helpers import copy_version, running_server
from kerve.client import Client

pytestmark = pytest.mark.integration


def test_repeated_requests_are_answered_from_the_cache(model_repo: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    copy_version(model_repo / "cnn" / "1", repo, "cnn", 1)
    (repo / "cnn" / "config.yaml").write_text("response_cache: true\n")
    image = np.linspace(0, 1, 64, dtype=np.float32).reshape(1, 8, 8, 1)
    other = image[:, ::-1].copy()

    with running_server(repo, tmp_path, "--response-cache-mb", "1") as (target, _proc):
        client = triton.InferenceServerClient(target)
        try:
            assert client.get_model_config("cnn", as_json=True)["config"]["response_cache"] == {"enable": True}
            tensor = triton.InferInput("image", [1, 8, 8, 1], "FP32")
            tensor.set_data_from_numpy(image)
            first = client.infer("cnn", [tensor]).as_numpy("output_0")
            again = client.infer("cnn", [tensor]).as_numpy("output_0")
            assert again.tolist() == first.tolist()

            with grpc.insecure_channel(target) as channel:  # another protocol, the same request: a hit
                request = predict_pb2.PredictRequest()
                request.model_spec.name = "cnn"
                request.inputs["image"].CopyFrom(tf.make_tensor_proto(image))
                outputs = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
            assert tf.make_ndarray(outputs.outputs["output_0"]).tolist() == first.tolist()

            with Client(target) as sdk:
                assert sdk.predict("cnn", {"image": image})["output_0"].tolist() == first.tolist()
                sdk.predict("cnn", {"image": other})  # another input: a miss, the model runs
                (stats,) = sdk.statistics("cnn")

            raw = client.get_inference_statistics("cnn", as_json=True)["model_stats"][0]
        finally:
            client.close()

    assert (stats.cache_hit.count, stats.cache_miss.count) == (3, 2)
    assert stats.success.count == stats.queue.count == 5 and stats.compute_infer.count == 2  # queue: hits too
    assert stats.inference_count == 2 and stats.execution_count == 2  # hits are no inferences (Triton's)
    assert stats.cache_hit.seconds > 0 and stats.cache_miss.seconds > 0
    inference_stats = raw["inference_stats"]  # tritonclient reads the same fields
    assert inference_stats["cache_hit"]["count"] == "3" and inference_stats["cache_miss"]["count"] == "2"
