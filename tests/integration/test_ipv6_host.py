"""`kerve serve --host` with an IPv6 address, bracketed or not: gRPC and the metrics endpoint both listen on it."""

from __future__ import annotations

import socket
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from helpers import stop_server
from kerve.client import Client
from kerve.quickstart import start_server, wait_until_ready

pytestmark = pytest.mark.integration


def _ipv6_port() -> int | None:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
            return int(sock.getsockname()[1])
    except OSError:
        return None


@pytest.mark.skipif(_ipv6_port() is None, reason="no IPv6 loopback here")
@pytest.mark.parametrize("host", ["::1", "[::1]"])
def test_an_ipv6_host_serves_grpc_and_metrics(model_repo: Path, tmp_path: Path, host: str) -> None:
    port, metrics_port = _ipv6_port(), _ipv6_port()
    assert port is not None and metrics_port is not None
    extra = ("--host", host, "--port", str(port), "--metrics-port", str(metrics_port))
    proc = start_server(model_repo, port, tmp_path / "server.log", extra_args=extra)
    try:
        with Client(f"[::1]:{port}") as client:
            wait_until_ready(client, proc, 120.0, "cnn")
            image = np.zeros((1, 8, 8, 1), np.float32)
            assert client.predict("cnn", {"image": image})["output_0"].shape == (1, 10)
        with urllib.request.urlopen(f"http://[::1]:{metrics_port}/metrics", timeout=10) as response:
            assert b"kerve_requests_total" in response.read()
    finally:
        stop_server(proc)
