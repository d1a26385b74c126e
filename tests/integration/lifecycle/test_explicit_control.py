"""`kerve serve --model-control explicit`: models change only through the V2 repository RPCs (also as
tritonclient sends them) and TF Serving's HandleReloadConfigRequest; names cannot escape the repository."""

from __future__ import annotations

import json

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc
from tritonclient.utils import InferenceServerException

from helpers import copy_version
from kerve.client import Client, NotFoundError
from kerve.protos import grpc_service_pb2 as pb
from kerve.protos import grpc_service_pb2_grpc as pb_grpc

pytestmark = pytest.mark.integration

IMAGE = np.zeros((1, 8, 8, 1), np.float32)


@pytest.fixture(scope="module")
def channel(explicit):  # noqa: ANN201
    with grpc.insecure_channel(explicit.target) as channel:
        yield channel


@pytest.fixture(scope="module")
def v2(channel):  # noqa: ANN201
    return pb_grpc.GRPCInferenceServiceStub(channel)


def ready(v2, model: str, version: str = "") -> bool:  # noqa: ANN001
    return v2.ModelReady(pb.ModelReadyRequest(name=model, version=version), timeout=30).ready


def rows(v2) -> set[tuple[str, str, str]]:  # noqa: ANN001
    return {(m.name, m.version, m.state) for m in v2.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=30).models}


def assert_code(call, code: grpc.StatusCode, *fragments: str) -> None:  # noqa: ANN001
    with pytest.raises(grpc.RpcError) as info:
        call()
    assert info.value.code() == code, info.value.details()
    for fragment in fragments:
        assert fragment in info.value.details(), info.value.details()


def test_unload_and_load_through_the_v2_rpcs(explicit, v2) -> None:
    assert ready(v2, "a") and ready(v2, "b")  # what the repository held at start is loaded
    assert "model_repository" in v2.ServerMetadata(pb.ServerMetadataRequest()).extensions
    v2.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="b"), timeout=30)
    assert not ready(v2, "b")
    assert ("b", "", "UNLOADED") in rows(v2) and ("b", "1", "UNLOADED") in rows(v2)
    with Client(explicit.target, retry=None) as client, pytest.raises(NotFoundError, match="'b' is not loaded"):
        client.predict("b", {"features": np.zeros((1, 3), np.float32), "ids": np.zeros((1, 2), np.int64)})
    v2.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="b"), timeout=30)
    assert ready(v2, "b") and ("b", "1", "READY") in rows(v2)

    client = triton.InferenceServerClient(explicit.target)  # sends unload_dependents, as against Triton
    try:
        client.unload_model("b")
        assert not client.is_model_ready("b")
        client.load_model("b")
        assert client.is_model_ready("b")
    finally:
        client.close()


def test_tritonclient_load_model_with_a_config(explicit, v2) -> None:
    """Triton's load_model(config=JSON): the config read from ModelConfig, edited and sent back, applies its
    batching to the loaded version; what kerve cannot apply is refused; a load without a config restores
    config.yaml."""
    client = triton.InferenceServerClient(explicit.target)
    try:
        before = client.get_model_config("b", as_json=True)["config"]
        batching = {"max_queue_delay_microseconds": "300", "priority_levels": "2"}
        edited = {**before, "max_batch_size": 5, "dynamic_batching": batching}
        client.load_model("b", config=json.dumps(edited))
        after = client.get_model_config("b", as_json=True)["config"]
        assert after["max_batch_size"] == 5
        assert after["dynamic_batching"] == {**batching, "default_priority_level": "2"}  # default: the lowest
        with Client(explicit.target, retry=None) as kerve_client:
            out = kerve_client.predict("b", {"features": np.ones((2, 3), np.float32), "ids": np.ones((2, 2), np.int64)})
            assert all(len(array) == 2 for array in out.values())
        # Triton's schedule policy: priority 1 is the highest level; 0 or a level the model lacks is the default
        assert "schedule_policy" in client.get_server_metadata().extensions
        inputs = [triton.InferInput("features", [1, 3], "FP32"), triton.InferInput("ids", [1, 2], "INT64")]
        inputs[0].set_data_from_numpy(np.ones((1, 3), np.float32))
        inputs[1].set_data_from_numpy(np.ones((1, 2), np.int64))
        for priority in (1, 2, 9):
            assert client.infer("b", inputs, priority=priority).get_response().outputs
        negative = pb.ModelInferRequest(model_name="b")
        negative.parameters["priority"].int64_param = -1
        assert_code(lambda: v2.ModelInfer(negative, timeout=30), grpc.StatusCode.INVALID_ARGUMENT,
                    "priority parameter must be >= 0")  # fmt: skip
        wrong = {**edited, "input": [{**before["input"][0], "dims": ["7"]}, *before["input"][1:]]}
        with pytest.raises(InferenceServerException) as info:
            client.load_model("b", config=json.dumps(wrong))
        assert info.value.status() == "StatusCode.INVALID_ARGUMENT", info.value.message()
        assert "input comes from the SavedModel's signature" in info.value.message()
        with pytest.raises(InferenceServerException) as info:
            client.load_model("b", config=json.dumps({"sequence_batching": {}}))
        assert info.value.status() == "StatusCode.INVALID_ARGUMENT" and "sequence_batching" in info.value.message()
        with pytest.raises(InferenceServerException) as info:
            client.load_model("b", config=json.dumps(edited), files={"file:1/saved_model.pb": b"x"})
        assert info.value.status() == "StatusCode.INVALID_ARGUMENT" and "model files come from" in info.value.message()
        assert client.get_model_config("b", as_json=True)["config"]["max_batch_size"] == 5  # refused: unchanged
        # Triton's queue policies: reported as loaded; a request's `timeout` (microseconds) is its queue timeout
        # where the policy allows overrides, so one of 1 us times out in the queue and never runs
        policies = {
            "default_queue_policy": {"allow_timeout_override": True, "max_queue_size": 8},
            "priority_queue_policy": {"1": {"timeoutAction": "DELAY", "allowTimeoutOverride": True}},
        }
        client.load_model("b", config=json.dumps({**edited, "dynamic_batching": {**batching, **policies}}))
        after = client.get_model_config("b", as_json=True)["config"]["dynamic_batching"]
        assert after["default_queue_policy"] == policies["default_queue_policy"]
        assert after["priority_queue_policy"] == {"1": {"timeout_action": "DELAY", "allow_timeout_override": True}}
        with pytest.raises(InferenceServerException) as info:
            client.infer("b", inputs, priority=2, timeout=1)
        assert info.value.status() == "StatusCode.DEADLINE_EXCEEDED" and "in the queue" in info.value.message()
        assert client.infer("b", inputs, priority=1, timeout=1).get_response().outputs  # level 1 delays instead
        client.load_model("b")
        assert client.get_model_config("b", as_json=True)["config"]["max_batch_size"] == before["max_batch_size"]
    finally:
        client.close()


def test_names_cannot_escape_the_repository(v2) -> None:
    for name in ("../a", "../../etc/passwd", "/tmp", "a/../b", ".."):
        assert_code(lambda n=name: v2.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name=n)),
                    grpc.StatusCode.INVALID_ARGUMENT, "invalid model name")  # fmt: skip
        assert_code(lambda n=name: v2.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name=n)),
                    grpc.StatusCode.INVALID_ARGUMENT, "invalid model name")  # fmt: skip
    assert_code(lambda: v2.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="nope")),
                grpc.StatusCode.NOT_FOUND, "'nope' is not in the model repository")  # fmt: skip
    assert_code(lambda: v2.RepositoryModelLoad(pb.RepositoryModelLoadRequest()), grpc.StatusCode.INVALID_ARGUMENT)
    assert ready(v2, "a")


def test_new_versions_wait_for_an_explicit_load(explicit, v2) -> None:
    assert copy_version(explicit.repo / "a" / "1", explicit.repo, "a") == 2
    assert not ready(v2, "a", "2") and ready(v2, "a", "1")  # no polling in explicit mode
    v2.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="a"), timeout=30)
    assert ready(v2, "a", "2") and not ready(v2, "a", "1")  # latest 1: the reload switched versions
    with Client(explicit.target) as client:
        assert client.infer("a", {"image": IMAGE}).model_version == "2"


def test_handle_reload_config_request_sets_the_served_models(explicit, channel, v2) -> None:
    models = model_service_pb2_grpc.ModelServiceStub(channel)

    def reload(*configs: dict) -> model_management_pb2.ReloadConfigResponse:
        request = model_management_pb2.ReloadConfigRequest()
        for config in configs:
            model = request.config.model_config_list.config.add(name=config["name"])
            model.base_path = config.get("base_path", "")
            model.model_platform = "tensorflow"
            for label, version in config.get("labels", {}).items():
                model.version_labels[label] = version
            if "all" in config:
                model.model_version_policy.all.SetInParent()
        return models.HandleReloadConfigRequest(request, timeout=60)

    assert reload({"name": "a"}).status.error_code == 0
    assert ready(v2, "a") and not ready(v2, "b")  # the list is the whole set of served models
    reload({"name": "a", "all": True}, {"name": "b", "base_path": str(explicit.repo / "b"), "labels": {"stable": 1}})
    assert ready(v2, "a", "1") and ready(v2, "a", "2") and ready(v2, "b")
    assert_code(lambda: reload({"name": "../b"}), grpc.StatusCode.INVALID_ARGUMENT, "invalid model name")
    assert_code(lambda: reload({"name": "b", "base_path": "/etc"}), grpc.StatusCode.INVALID_ARGUMENT, "base_path")
    assert_code(lambda: reload({"name": "nope"}), grpc.StatusCode.NOT_FOUND)
    assert ready(v2, "a") and ready(v2, "b")  # rejected requests changed nothing


def test_load_model_picks_what_loads_at_start(explicit, tmp_path) -> None:
    """--load-model (Triton's): only the named models load at start; the rest wait for RepositoryModelLoad, and a
    name the repository lacks stops the server at once with one line saying so."""
    import subprocess
    import sys

    from helpers import running_server

    with running_server(explicit.repo, tmp_path, "--model-control", "explicit", "--load-model", "a") as (target, _):
        client = triton.InferenceServerClient(target)
        try:
            assert client.is_model_ready("a") and not client.is_model_ready("b")
            index = {
                (m["name"], m.get("state"), m.get("reason"))
                for m in client.get_model_repository_index(as_json=True)["models"]
            }
            assert ("b", "UNLOADED", "not loaded") in index
            client.load_model("b")
            assert client.is_model_ready("b")
        finally:
            client.close()
    cmd = [sys.executable, "-m", "kerve", "serve", "--model-repository", str(explicit.repo), "--port", "0",
           "--metrics-port", "0", "--model-control", "explicit", "--load-model", "nope"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "--load-model nope: not in model repository" in proc.stderr and "Traceback" not in proc.stderr
