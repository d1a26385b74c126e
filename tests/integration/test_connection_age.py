"""--max-connection-age-s: the server recycles connections (so clients re-resolve DNS) without failing calls."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from helpers import running_server
from kerve.protos import grpc_service_pb2 as pb
from kerve.protos import grpc_service_pb2_grpc as pb_grpc

pytestmark = pytest.mark.integration


def test_connections_are_recycled_and_calls_keep_working(model_repo: Path, tmp_path: Path) -> None:
    states: list[grpc.ChannelConnectivity] = []
    with (
        running_server(model_repo, tmp_path, "--max-connection-age-s", "1") as (target, _),
        grpc.insecure_channel(target) as channel,
    ):
        channel.subscribe(states.append, try_to_connect=True)
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        request = pb.ModelInferRequest(model_name="cnn")
        request.inputs.add(name="image", datatype="FP32", shape=[1, 8, 8, 1])
        request.raw_input_contents.append(np.zeros((1, 8, 8, 1), np.float32).tobytes())
        stub.ModelInfer(request, timeout=10)
        deadline = time.monotonic() + 30
        while grpc.ChannelConnectivity.IDLE not in states:  # the server's GOAWAY after ~1 s idles the channel
            assert time.monotonic() < deadline, f"connection never recycled: {states}"
            time.sleep(0.05)
        assert stub.ModelInfer(request, timeout=10).model_version == "1"  # reconnects transparently
