"""The Deployment's container command, run here as Kubernetes would run it, probed with the manifest's probe."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from unit.test_k8s_manifests import _container, _one, serve_command

from kerve.quickstart import free_port

pytestmark = pytest.mark.integration

# Only where the pod differs from a test: its paths, and binding every interface on fixed ports.
LOCAL = {"--host": "127.0.0.1"}


def rewrite(argv: list[str], overrides: dict[str, str]) -> list[str]:
    out = list(argv)
    for flag, value in overrides.items():
        assert flag in out, f"the Deployment's command has no {flag}"
        out[out.index(flag) + 1] = value
    return out


def probe(target: str, service: str) -> int:
    with grpc.insecure_channel(target) as channel:
        try:
            return (
                health_pb2_grpc.HealthStub(channel)
                .Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
                .status
            )
        except grpc.RpcError:
            return health_pb2.HealthCheckResponse.UNKNOWN


def test_deployment_command_serves_and_passes_its_probes(model_repo: Path, tmp_path: Path) -> None:
    argv = serve_command()
    assert argv[:2] == ["kerve", "serve"]
    port, metrics_port = free_port(), free_port()
    argv = rewrite(
        argv,
        {**LOCAL, "--model-repository": str(model_repo), "--port": str(port), "--metrics-port": str(metrics_port)},
    )
    container = _container(_one("Deployment", "kerve")["spec"]["template"]["spec"])
    kerve = str(Path(sys.executable).parent / "kerve")
    with open(tmp_path / "server.log", "wb") as log:
        proc = subprocess.Popen([kerve, *argv[1:]], stdout=log, stderr=subprocess.STDOUT)
    try:
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            grpc_probe = container[kind]["grpc"]
            assert grpc_probe["port"] == 8500  # the container port the command binds
            deadline = time.monotonic() + 120
            while probe(f"127.0.0.1:{port}", grpc_probe.get("service", "")) != health_pb2.HealthCheckResponse.SERVING:
                assert proc.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
                assert time.monotonic() < deadline, f"{kind} never passed"
                time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)  # what the kubelet sends after preStop
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
