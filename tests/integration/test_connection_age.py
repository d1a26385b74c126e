"""--max-connection-age-s: the server recycles connections (so clients re-resolve DNS) without failing calls."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from helpers import running_server
from kerve.client import Client
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


STREAM_SPAN_S = 7.5  # past age + the 5 s grace the server used to give


def test_a_stream_outlives_the_connection_age(model_repo: Path, tmp_path: Path) -> None:
    """An old connection takes no new calls, but a stream open on it is never cut: a bounded grace closed the
    connection under long-lived streams, failing their pending calls with UNAVAILABLE."""
    image = np.zeros((1, 8, 8, 1), np.float32)
    with (
        running_server(model_repo, tmp_path, "--max-connection-age-s", "1") as (target, _),
        Client(target, timeout=30) as client,
        client.stream("cnn") as stream,
    ):
        began = time.monotonic()
        calls = 0
        while time.monotonic() - began < STREAM_SPAN_S and calls < 200:  # bounded in time and count
            assert stream.infer({"image": image}, timeout=30).outputs["output_0"].shape == (1, 10)
            calls += 1
            time.sleep(0.25)  # spacing the calls over the span, not waiting for anything
        assert calls >= 10
        assert client.predict("cnn", {"image": image})["output_0"].shape == (1, 10)  # unary: a new connection
