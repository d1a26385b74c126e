"""SIGTERM while a version loads: the server drains within its grace period instead of finishing a warmup of
minutes first (before, an initial load or an explicit RepositoryModelLoad held the exit, and health stayed SERVING
with new calls served, for the whole load)."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from helpers import copy_version, stop_server, wait_for, write_warmup
from kerve.client import Client, KerveError
from kerve.quickstart import free_port, start_server, wait_until_ready

pytestmark = pytest.mark.integration

WARMUP_RECORDS = 400  # about 0.3 s each: two minutes of warmup, far past any bound below
EXIT_BOUND_S = 60.0  # a SIGTERM'd server must be gone well within this (grace 2 s + one warmup request + exit)


@pytest.fixture(scope="module")
def slow_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model whose every call takes ~0.3 s (a while loop), with WARMUP_RECORDS warmup requests."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    class Slow(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32, name="x")])
        def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            _, y = tf.while_loop(lambda i, v: i < 20000, lambda i, v: (i + 1, v * 1.0000001), [tf.constant(0), x])
            return {"y": y}

    path = tmp_path_factory.mktemp("slow") / "model"
    module = Slow()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "slow"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.ones((1, 1), np.float32)))
    write_warmup(path, [request] * WARMUP_RECORDS)
    return path


def exits_within(proc: subprocess.Popen[bytes], bound_s: float) -> int:
    try:
        return proc.wait(timeout=bound_s)
    finally:
        stop_server(proc)  # only acts if it is still running (the assertion below then fails)


def test_sigterm_during_the_initial_load_stops_it(slow_model: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    copy_version(slow_model, repo, "slow", 1)
    log = tmp_path / "server.log"
    proc = start_server(repo, free_port(), log, ["--grace-period", "2"])
    try:
        wait_for(lambda: proc.poll() is not None or "loading models" in log.read_text(), "the server listens", 120)
        assert proc.poll() is None, log.read_text()
    except BaseException:
        stop_server(proc)
        raise
    began = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = exits_within(proc, EXIT_BOUND_S)
    assert code == 0 and time.monotonic() - began < EXIT_BOUND_S, log.read_text()
    assert "stopping the initial load" in log.read_text()


def test_sigterm_during_an_explicit_load_refuses_new_calls_at_once(
    slow_model: Path, model_repo: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    copy_version(slow_model, repo, "slow", 1)
    copy_version(model_repo / "cnn" / "1", repo, "cnn", 1)
    port = free_port()
    log = tmp_path / "server.log"
    args = ["--grace-period", "2", "--model-control", "explicit", "--load-model", "cnn"]
    proc = start_server(repo, port, log, args)
    target = f"127.0.0.1:{port}"
    loader_errors: list[BaseException] = []
    try:
        with Client(target, timeout=300) as client:
            wait_until_ready(client, proc, 120.0, "cnn")

            def load() -> None:
                try:
                    client.load_model("slow", timeout=300)
                except BaseException as exc:  # noqa: BLE001  # the server stops under it: any error is expected
                    loader_errors.append(exc)

            loading = threading.Thread(target=load, daemon=True)
            loading.start()
            wait_for(lambda: any(m.name == "slow" and m.state == "LOADING" for m in client.models()), "loading", 60)
    except BaseException:
        stop_server(proc)
        raise
    began = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    with grpc.insecure_channel(target) as channel:  # health says so at once, not after the load
        health = health_pb2_grpc.HealthStub(channel)

        def not_serving() -> bool:
            try:
                status = health.Check(health_pb2.HealthCheckRequest(), timeout=2).status
            except grpc.RpcError:  # already gone: not serving either
                return True
            return status != health_pb2.HealthCheckResponse.SERVING

        wait_for(not_serving, "health NOT_SERVING", 10)
    code = exits_within(proc, EXIT_BOUND_S)
    assert code == 0 and time.monotonic() - began < EXIT_BOUND_S, log.read_text()
    loading.join(30)
    assert not loading.is_alive() and loader_errors and isinstance(loader_errors[0], KerveError)
