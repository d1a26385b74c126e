"""The SDK's model control, statistics and server metadata against one real `kerve serve --model-control
explicit`: loads and unloads flip readiness, a load config applies and a later plain load drops it, statistics count
each request as Triton does."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import kerve
from helpers import running_server
from kerve.client import (
    AsyncClient,
    Client,
    InvalidArgumentError,
    ModelStatistics,
    NotFoundError,
    ServerMetadata,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def explicit(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    logs = tmp_path_factory.mktemp("explicit-logs")
    with running_server(model_repo, logs, "--model-control", "explicit") as (target, _):
        yield target


def images(n: int) -> dict[str, np.ndarray]:
    return {"image": np.random.default_rng(n).random((n, 8, 8, 1), dtype=np.float32)}


def test_server_metadata_names_the_extensions(explicit: str) -> None:
    with Client(explicit) as client:
        metadata = client.server_metadata()
    assert (metadata.name, metadata.version) == ("kerve", kerve.__version__)
    assert {"statistics", "model_repository", "model_configuration"} <= set(metadata.extensions)


def test_statistics_count_each_request(explicit: str) -> None:
    rows = [1, 3, 2]
    with Client(explicit) as client:
        assert {s.name for s in client.statistics()} >= {"cnn", "pair"}
        (before,) = client.statistics("cnn")
        for n in rows:
            client.predict("cnn", images(n))
        (after,) = client.statistics("cnn", version=1)
        with pytest.raises(InvalidArgumentError, match="requested model 'nope' is not available"):  # as Triton
            client.statistics("nope")
        with pytest.raises(InvalidArgumentError, match="requested model version is not available for model 'cnn'"):
            client.statistics("cnn", version=99)

    assert (after.name, after.version) == ("cnn", "1")
    assert after.success.count - before.success.count == len(rows)  # requests, not rows nor batches
    assert after.queue.count == after.compute_infer.count == after.success.count
    assert after.compute_input.count == after.compute_output.count == after.success.count
    assert after.compute_input.seconds > 0 and after.compute_output.seconds > 0
    assert after.success.seconds > before.success.seconds and after.fail == before.fail
    assert after.inference_count - before.inference_count == sum(rows)
    assert after.execution_count > before.execution_count
    assert sum(d.count for _, d in after.batch_stats) == after.execution_count  # model calls, by batch size
    assert [size for size, _ in after.batch_stats] == sorted({size for size, _ in after.batch_stats})
    assert [(b.batch_size, b.compute_infer) for b in after.batches] == list(after.batch_stats)  # every phase too
    assert all(b.compute_input.count == b.compute_output.count == b.compute_infer.count for b in after.batches)
    assert all(b.compute_input.seconds > 0 and b.compute_output.seconds > 0 for b in after.batches)
    assert abs(after.last_inference_ms / 1000 - time.time()) < 60


def test_load_and_unload_flip_readiness_and_apply_a_config(explicit: str) -> None:
    with Client(explicit) as client:
        plain = client.config("cnn").max_batch_size
        assert plain != 4
        client.unload_model("cnn")
        assert not client.ready("cnn") and client.ready("pair")
        with pytest.raises(InvalidArgumentError, match="not available"):  # as Triton: ready versions only
            client.statistics("cnn")
        assert "cnn" not in {s.name for s in client.statistics()}

        client.load_model("cnn", config={"max_batch_size": 4, "dynamic_batching": {}})
        assert client.ready("cnn")
        config = client.config("cnn")
        assert config.max_batch_size == 4 and config.dynamic_batching
        assert client.predict("cnn", images(4))["output_0"].shape == (4, 10)

        client.load_model("cnn", config=json.dumps({"max_batch_size": 2, "dynamic_batching": {}}))  # JSON text
        assert client.config("cnn").max_batch_size == 2

        # the SDK's own ModelConfig, read and edited: sent back as the Triton config it was read from
        edited = dataclasses.replace(client.config("cnn"), max_batch_size=3, priority_levels=2)
        client.load_model("cnn", config=edited)
        assert client.config("cnn") == dataclasses.replace(edited, default_priority_level=2)  # the server's default
        client.load_model("cnn", config=json.dumps({"max_batch_size": 2, "dynamic_batching": {}}))

        # Triton's instance count (no kind: KIND_AUTO, the CPU here): three batches at once on the one CPU replica
        client.load_model("cnn", config={"max_batch_size": 2, "dynamic_batching": {}, "instance_group": [{"count": 3}]})
        (group,) = client.config("cnn").instance_groups
        assert (group.kind, group.count) == ("CPU", 3)
        assert client.predict("cnn", images(2))["output_0"].shape == (2, 10)
        with pytest.raises(InvalidArgumentError, match="needs dynamic_batching"):
            client.load_model("cnn", config={"instance_group": [{"kind": "KIND_CPU", "count": 3}]})
        assert client.config("cnn").instance_groups == (group,)  # refused whole: nothing changed
        client.load_model("cnn", config=json.dumps({"max_batch_size": 2, "dynamic_batching": {}}))
        # the server's default again, `auto`: up to two batches at once
        assert client.config("cnn").instance_groups[0].count == 2

        # Triton's max_batch_size without dynamic_batching: no batcher, but no request over 3 rows; the config
        # read back loads again as it is
        client.load_model("cnn", config={"max_batch_size": 3})
        config = client.config("cnn")
        assert (config.max_batch_size, config.dynamic_batching, config.inputs[0].dims) == (3, False, (8, 8, 1))
        assert client.predict("cnn", images(3))["output_0"].shape == (3, 10)
        with pytest.raises(InvalidArgumentError, match="batch-size must be <= 3"):
            client.predict("cnn", images(4))
        client.load_model("cnn", config=config)
        assert client.config("cnn") == config
        client.load_model("cnn", config=json.dumps({"max_batch_size": 2, "dynamic_batching": {}}))

        with pytest.raises(InvalidArgumentError, match="sequence_batching"):  # the server's message
            client.load_model("cnn", config={"sequence_batching": {}})
        assert client.config("cnn").max_batch_size == 2  # refused whole: nothing changed

        client.load_model("cnn")  # no config: back to config.yaml
        assert client.ready("cnn") and client.config("cnn").max_batch_size == plain

        with pytest.raises(NotFoundError, match="nope"):
            client.load_model("nope")
        with pytest.raises(NotFoundError, match="nope"):
            client.unload_model("nope")


def test_async_twins(explicit: str) -> None:
    async def main() -> tuple[bool, bool, tuple[ModelStatistics, ...], ServerMetadata]:
        async with AsyncClient(explicit) as client:
            await client.unload_model("pair")
            unloaded = await client.ready("pair")
            await client.load_model("pair", config={"max_batch_size": 4, "dynamic_batching": {}})
            loaded = await client.ready("pair") and (await client.config("pair")).max_batch_size == 4
            await client.load_model("pair")
            with pytest.raises(NotFoundError):
                await client.load_model("nope")
            return unloaded, loaded, await client.statistics("pair"), await client.server_metadata()

    unloaded, loaded, stats, metadata = asyncio.run(main())
    assert not unloaded and loaded
    assert [(s.name, s.version, s.success.count) for s in stats] == [("pair", "1", 0)]  # a fresh load counts anew
    assert "statistics" in metadata.extensions
