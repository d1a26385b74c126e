"""The SDK's `priority` against a real `kerve serve` process: a model with priority levels serves each level, on
unary calls and streams, and a negative level is refused by the SDK before it reaches the server."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import numpy as np
import pytest

from helpers import running_server
from kerve.client import AsyncClient, Client, InvalidArgumentError, QueuePolicy

pytestmark = pytest.mark.integration

IMAGE = np.random.default_rng(5).random((1, 8, 8, 1), dtype=np.float32)


def test_a_model_with_priority_levels_serves_each_level(model_repo: Path, tmp_path: Path, in_process) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(model_repo / "cnn", repo / "ranked")
    (repo / "ranked" / "config.yaml").write_text(
        "batching:\n  priority_levels: 2\n  max_batch_size: 1\n"
        "  priority_queue_policy: {1: {allow_timeout_override: true, max_queue_size: 64}}\n"
    )
    expected = in_process("cnn", {"image": IMAGE})["output_0"]
    with running_server(repo, tmp_path) as (target, _), Client(target, retry=None) as client:
        # the levels are on (so the parameter is not simply ignored by a model without them)
        config = client.config("ranked")
        assert (config.max_batch_size, config.priority_levels, config.default_priority_level) == (1, 2, 2)
        assert config.queue_policy is None
        assert config.priority_queue_policies == ((1, QueuePolicy(0.0, "reject", True, 64)),)
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
