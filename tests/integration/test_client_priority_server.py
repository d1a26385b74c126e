"""The SDK's `priority` against a real `kerve serve` process: a model with priority levels serves each level, on
unary calls and streams, and a negative level is refused by the SDK before it reaches the server."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import grpc
import numpy as np
import pytest

from helpers import running_server
from kerve.client import AsyncClient, Client, InvalidArgumentError
from kerve.protos import grpc_service_pb2 as pb
from kerve.protos import grpc_service_pb2_grpc as pb_grpc

pytestmark = pytest.mark.integration

IMAGE = np.random.default_rng(5).random((1, 8, 8, 1), dtype=np.float32)


def test_a_model_with_priority_levels_serves_each_level(model_repo: Path, tmp_path: Path, in_process) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(model_repo / "cnn", repo / "ranked")
    (repo / "ranked" / "config.yaml").write_text("batching: {priority_levels: 2, max_batch_size: 1}\n")
    expected = in_process("cnn", {"image": IMAGE})["output_0"]
    with running_server(repo, tmp_path) as (target, _), Client(target, retry=None) as client:
        # the levels are on (so the parameter is not simply ignored by a model without them)
        with grpc.insecure_channel(target) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            config = stub.ModelConfig(pb.ModelConfigRequest(name="ranked"), timeout=30).config
        assert (config.max_batch_size, config.dynamic_batching.priority_levels) == (1, 2)
        for priority in (1, 2, 0):
            np.testing.assert_allclose(
                client.predict("ranked", {"image": IMAGE}, priority=priority)["output_0"], expected, rtol=1e-5
            )
        with client.stream("ranked") as stream:
            assert stream.infer({"image": IMAGE}, priority=1).model_version == "1"
            assert stream.predict({"image": IMAGE}, priority=2)["output_0"].shape == expected.shape
        with pytest.raises(InvalidArgumentError, match="priority must be an integer >= 0") as refused:
            client.infer("ranked", {"image": IMAGE}, priority=-1)
        # the SDK's own words, not the server's ("the priority parameter must be >= 0 ...")
        assert "parameter" not in refused.value.message

        async def main() -> np.ndarray:
            async with AsyncClient(target, retry=None) as aclient:
                with pytest.raises(InvalidArgumentError, match="priority must be an integer >= 0"):
                    await aclient.predict("ranked", {"image": IMAGE}, priority=-1)
                return (await aclient.infer("ranked", {"image": IMAGE}, priority=1)).outputs["output_0"]

        np.testing.assert_allclose(asyncio.run(main()), expected, rtol=1e-5)
