"""Model lifecycle on a polling server: hot reload under load, broken versions, deletion, version policies,
labels, config.yaml errors and warmup replay. Every wait polls with a deadline; every loop is bounded."""

from __future__ import annotations

import shutil
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc, predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc as tfs_grpc

from helpers import build_no_signature_model, copy_version, wait_for
from kerve import repository
from kerve.client import Client, KerveError, NotFoundError
from kerve.protos import grpc_service_pb2 as pb
from kerve.protos import grpc_service_pb2_grpc as pb_grpc

pytestmark = pytest.mark.integration

IMAGE = np.random.default_rng(5).random((1, 8, 8, 1), dtype=np.float32)


@pytest.fixture(scope="module")
def client(zoo):  # noqa: ANN201
    with Client(zoo.target, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def v2(zoo):  # noqa: ANN201
    with grpc.insecure_channel(zoo.target) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def index(client: Client, model: str) -> dict[str, tuple[str, str]]:
    """version -> (state, reason) for one model ("" is the model as a whole)."""
    return {e.version: (e.state, e.reason) for e in client.models() if e.name == model}


def state_of(client: Client, model: str, version: str) -> str | None:
    return index(client, model).get(version, (None, ""))[0]


def metric_lines(url: str, prefix: str) -> list[str]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return [line for line in response.read().decode().splitlines() if line.startswith(prefix)]


def test_new_version_under_load_switches_with_zero_failed_requests(zoo, client: Client) -> None:
    """4 threads send requests for ~3 s; v2 is published meanwhile: no request fails, each thread sees v1 then
    v2 (never back), and v1 unloads after its in-flight requests drain."""
    threads_n, duration_s, max_requests = 4, 3.0, 20_000
    seen: list[list[str]] = [[] for _ in range(threads_n)]
    errors: list[str] = []
    stop = threading.Event()

    def load(i: int) -> None:
        with Client(zoo.target, timeout=30, retry=None) as own:  # no client retries: they would hide failures
            for _ in range(max_requests):
                if stop.is_set():
                    return
                try:
                    seen[i].append(own.infer("live", {"image": IMAGE}).model_version)
                except KerveError as exc:  # anything at all is a failure
                    errors.append(f"{type(exc).__name__}: {exc}")

    workers = [threading.Thread(target=load, args=(i,), daemon=True) for i in range(threads_n)]
    started = time.monotonic()
    for worker in workers:
        worker.start()
    try:
        wait_for(lambda: all(len(s) >= 5 for s in seen) or errors, "load on v1", timeout_s=30)
        assert copy_version(zoo.repo / "live" / "1", zoo.repo, "live") == 2
        wait_for(lambda: all(s and s[-1] == "2" for s in seen) or errors, "every thread on v2", timeout_s=30)
        remaining = duration_s - (time.monotonic() - started)
        if remaining > 0:
            stop.wait(remaining)  # keep the load running on v2 for the rest of the window
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=60)
    assert not errors, errors[:5]
    assert not any(worker.is_alive() for worker in workers)
    for versions in seen:
        assert versions[0] == "1" and versions[-1] == "2"
        first_v2 = versions.index("2")
        assert set(versions[first_v2:]) == {"2"}, "a thread went back to v1 after being served by v2"
    wait_for(lambda: state_of(client, "live", "1") == "UNLOADED", "v1 unloaded")
    assert state_of(client, "live", "2") == "READY"
    assert sum(map(len, seen)) > 20


def _publish_broken(repo: Path, model: str, name: str, make) -> int:  # noqa: ANN001
    def write(tmp: Path) -> None:
        make(tmp)
        if not (tmp / repository.SAVED_MODEL_FILE).exists():
            raise AssertionError(f"{name}: no saved_model.pb")

    return repository.publish(repo, model, write, {"broken": name})


def test_broken_versions_are_reported_and_the_serving_version_keeps_serving(zoo, client: Client, v2) -> None:
    source = zoo.repo / "iso" / "1"

    def garbage(tmp: Path) -> None:
        tmp.mkdir()
        (tmp / "saved_model.pb").write_bytes(b"\x08\x96\x01 this is not a SavedModel")

    def no_variables(tmp: Path) -> None:
        shutil.copytree(source, tmp)
        shutil.rmtree(tmp / "variables")

    broken = {
        "garbage": _publish_broken(zoo.repo, "iso", "garbage", garbage),
        "no variables": _publish_broken(zoo.repo, "iso", "no variables", no_variables),
        "no signature": _publish_broken(zoo.repo, "iso", "no signature", build_no_signature_model),
    }
    assert sorted(broken.values()) == [2, 3, 4]
    wait_for(lambda: all(state_of(client, "iso", str(v)) == "FAILED" for v in broken.values()), "3 FAILED")
    rows = index(client, "iso")
    assert rows["1"] == ("READY", "")
    assert "no serving signatures" in rows[str(broken["no signature"])][1]
    assert all(rows[str(v)][1] for v in broken.values())  # each says why
    for v in broken.values():
        assert not v2.ModelReady(pb.ModelReadyRequest(name="iso", version=str(v))).ready
    assert v2.ModelReady(pb.ModelReadyRequest(name="iso")).ready
    assert client.infer("iso", {"image": IMAGE}).model_version == "1"

    state = metric_lines(zoo.metrics_url, 'kerve_model_state{model="iso"')
    for v in broken.values():
        assert f'kerve_model_state{{model="iso",state="FAILED",version="{v}"}} 1.0' in state
    assert 'kerve_model_state{model="iso",state="READY",version="1"} 1.0' in state

    with grpc.insecure_channel(zoo.target) as channel:
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = "iso"
        statuses = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=30)
    by_version = {s.version: s for s in statuses.model_version_status}
    assert by_version[1].state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
    garbage_status = by_version[broken["garbage"]]
    assert garbage_status.state == get_model_status_pb2.ModelVersionStatus.END
    assert garbage_status.status.error_code != 0 and garbage_status.status.error_message
    assert "failed to load iso version" in zoo.log.read_text(errors="replace")


def test_deleting_a_version_unloads_it(zoo, client: Client) -> None:
    assert client.ready("gone", 2)
    shutil.rmtree(zoo.repo / "gone" / "2")
    wait_for(lambda: "2" not in index(client, "gone"), "version 2 forgotten")
    assert not client.ready("gone", 2)
    with pytest.raises(NotFoundError, match="no version 2"):
        client.infer("gone", {"image": IMAGE}, version=2)
    assert client.infer("gone", {"image": IMAGE}).model_version == "1"
    # TF Serving's GetModelStatus keeps a version it served, once deleted, as END (its state monitor forgets none)
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "gone"
    with grpc.insecure_channel(zoo.target) as channel:
        statuses = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=30)
    end, available = get_model_status_pb2.ModelVersionStatus.END, get_model_status_pb2.ModelVersionStatus.AVAILABLE
    assert [(s.version, s.state) for s in statuses.model_version_status] == [(2, end), (1, available)]


def test_version_policies(zoo, client: Client) -> None:
    def ready(model: str) -> set[str]:
        return {v for v, (state, _) in index(client, model).items() if state == "READY"}

    assert ready("latest2") == {"2", "3"}
    assert ready("every") == {"1", "2", "3"}
    assert ready("some") == {"1", "3"}
    assert client.infer("some", {"image": IMAGE}, version=1).model_version == "1"
    (zoo.repo / "some" / "config.yaml").write_text("version_policy: {specific: [2]}\n")
    wait_for(lambda: ready("some") == {"2"}, "specific [2] applied")
    assert index(client, "some")["3"][0] == "UNLOADED"


def test_labels_follow_config_yaml(zoo) -> None:
    def served(label: str) -> int:
        request = predict_pb2.PredictRequest()
        request.model_spec.name, request.model_spec.version_label = "labeled", label
        request.inputs["image"].CopyFrom(tf.make_tensor_proto(IMAGE))
        return stub.Predict(request, timeout=30).model_spec.version.value

    with grpc.insecure_channel(zoo.target) as channel:
        stub = tfs_grpc.PredictionServiceStub(channel)
        assert (served("stable"), served("canary")) == (1, 2)  # the labelled v1 is loaded beside latest v2
        (zoo.repo / "labeled" / "config.yaml").write_text("labels: {stable: 2}\n")  # promote the canary
        wait_for(lambda: served("stable") == 2, "stable -> 2")
        with pytest.raises(grpc.RpcError) as info:
            served("canary")
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_invalid_config_fails_only_that_model(zoo, client: Client, v2) -> None:
    state, reason = index(client, "badcfg")[""]
    assert state == "FAILED" and reason == "badcfg/config.yaml: version_policy.latest must be a positive integer, got 0"
    assert not v2.ModelReady(pb.ModelReadyRequest(name="badcfg")).ready
    assert 'kerve_model_state{model="badcfg",state="FAILED",version=""} 1.0' in metric_lines(
        zoo.metrics_url, "kerve_model_state"
    )
    (zoo.repo / "badcfg" / "config.yaml").write_text("version_policy: {latest: 1}\n")
    wait_for(lambda: client.ready("badcfg"), "badcfg loads once fixed")
    assert "" not in index(client, "badcfg")


def test_warmup_requests_are_replayed_before_serving(zoo, client: Client) -> None:
    # kerve train's warmup file (2 Predict requests) ran before the version went READY
    assert state_of(client, "warm", "1") == "READY"
    assert "loaded warm version 1" in zoo.log.read_text(errors="replace")
    assert "2 warmup requests" in zoo.log.read_text(errors="replace")
    # TF Serving's MultiInference warmup records replay too (each task as its Classify or Regress request)
    assert state_of(client, "warmmulti", "1") == "READY"
    assert "loaded warmmulti version 1" in zoo.log.read_text(errors="replace")
    # a warmup request the model rejects fails the version, as it would fail clients
    state, reason = index(client, "warmbad")["1"]
    assert state == "FAILED"
    assert "warmup request 1 of 1 failed" in reason and "'pixels'" in reason
