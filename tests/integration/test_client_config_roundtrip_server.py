"""`load_model(model, config=client.config(model))` against a real `kerve serve --model-control explicit`: a config
read with the SDK and sent back (edited or not) loads, for a model with class names (its outputs carry
label_filename) and for one served with `version_policy: all` (the load keeps every version)."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from helpers import CLASS_NAMES, copy_version, running_server
from kerve.client import AsyncClient, Client, TensorConfig, VersionPolicy
from kerve.protos import grpc_service_pb2 as pb
from kerve.protos import grpc_service_pb2_grpc as pb_grpc

pytestmark = pytest.mark.integration

IMAGES = np.random.default_rng(5).random((2, 8, 8, 1), dtype=np.float32)


@pytest.fixture(scope="module")
def explicit(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A repository of `labeled` (cnn with a labels.txt) and `multi` (cnn as versions 1 and 2), served with
    explicit model control."""
    repo = tmp_path_factory.mktemp("roundtrip-repo")
    copy_version(model_repo / "cnn" / "1", repo, "labeled", 1)
    (repo / "labeled" / "1" / "labels.txt").write_text("\n".join(CLASS_NAMES) + "\n")
    for version in (1, 2):
        copy_version(model_repo / "cnn" / "1", repo, "multi", version)
    logs = tmp_path_factory.mktemp("roundtrip-logs")
    try:
        with running_server(repo, logs, "--model-control", "explicit") as (target, _):
            yield target
    finally:
        shutil.rmtree(repo, ignore_errors=True)


def states(client: Client, model: str) -> dict[str, str]:
    return {entry.version: entry.state for entry in client.models() if entry.name == model}


def test_a_labelled_models_config_loads_back(explicit: str) -> None:
    with Client(explicit, timeout=120) as client:
        client.load_model("labeled")
        config = client.config("labeled")
        assert config.outputs == (TensorConfig("output_0", "FP32", (10,), "labels.txt"),)
        client.load_model("labeled", config=config)  # refused before the fix
        assert client.config("labeled") == config
        edited = dataclasses.replace(config, max_batch_size=4)
        client.load_model("labeled", config=edited)
        assert client.config("labeled").max_batch_size == 4
        top = client.classify("labeled", {"image": IMAGES}, top_k=2)
        assert top.labels is not None and top.labels.tolist() == [[CLASS_NAMES[i] for i in r] for r in top.indices]


def test_a_config_sent_back_keeps_its_version_policy(explicit: str) -> None:
    with Client(explicit, timeout=120) as client:
        # From unloaded, so both versions are loaded here by the one `all` load.
        client.unload_model("multi")
        client.load_model("multi", config={"version_policy": {"all": {}}})
        assert states(client, "multi") == {"1": "READY", "2": "READY"}
        config = client.config("multi")
        assert config.version_policy == VersionPolicy.all()
        client.load_model("multi", config=dataclasses.replace(config, max_batch_size=4))
        assert states(client, "multi") == {"1": "READY", "2": "READY"}  # before the fix: version 1 unloaded
        assert client.config("multi", version=1).max_batch_size == 4

        # a policy can be changed (read again: dims follow max_batch_size, which the last load changed)
        latest = dataclasses.replace(client.config("multi"), version_policy=VersionPolicy.latest(1))
        client.load_model("multi", config=latest)
        assert states(client, "multi") == {"1": "UNLOADED", "2": "READY"}
        # version 2 stayed loaded with the `all` config; the model's policy is what a client reads back
        assert client.config("multi").version_policy == VersionPolicy.latest(1)

    async def main() -> dict[str, str]:
        async with AsyncClient(explicit, timeout=120) as aclient:
            await aclient.load_model("multi", config={"version_policy": {"specific": {"versions": [1]}}})
            config = await aclient.config("multi")
            assert config.version_policy == VersionPolicy.specific(1)
            await aclient.load_model("multi", config=config)
            return {e.version: e.state for e in await aclient.models() if e.name == "multi"}

    assert asyncio.run(main()) == {"1": "READY", "2": "UNLOADED"}


def test_metadata_of_one_version_lists_that_version(explicit: str) -> None:
    """As Triton: ModelMetadata naming a version lists only it; without one, every ready version."""
    with Client(explicit, timeout=120) as client:
        client.load_model("multi", config={"version_policy": {"all": {}}})
    with grpc.insecure_channel(explicit) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        one = stub.ModelMetadata(pb.ModelMetadataRequest(name="multi", version="1"), timeout=30)
        every = stub.ModelMetadata(pb.ModelMetadataRequest(name="multi"), timeout=30)
    assert list(one.versions) == ["1"] and list(every.versions) == ["1", "2"]
