"""`load_model(model, config=client.config(model))`, without TensorFlow: the SDK's ModelConfig, read from what
kerve's ModelConfig RPC reports and sent back (edited or not), must be the config it was read from. Two fields
used to be lost on the way: an output's `label_filename` (so the server refused the outputs of any model with
class names) and `version_policy` (so a model served with `all` silently went back to latest 1)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf import json_format

from helpers import in_process_v2_server
from kerve.client import AsyncClient, Client, InvalidArgumentError, ModelConfig, TensorConfig, VersionPolicy
from kerve.client.wire import config_message, load_model_request, parse_config
from kerve.protos import grpc_service_pb2 as pb
from kerve.protos import grpc_service_pb2_grpc as pb_grpc
from kerve.server import model_config as server_config
from kerve.server import triton_config
from kerve.server.batcher import BatchingConfig
from kerve.server.errors import ServingError
from kerve.server.types import TensorSpec
from kerve.server.v2_codec import model_config

PLATFORM = "tensorflow_savedmodel"
INPUTS = {"x": TensorSpec("x", np.dtype(np.float32), (None, 3))}
OUTPUTS = {"output_0": TensorSpec("output_0", np.dtype(np.float32), (None, 2))}
POLICIES = [  # the server's policy, the SDK's, and the config.yaml override a load with it must produce
    (server_config.VersionPolicy(), VersionPolicy.latest(1), {"latest": 1}),
    (server_config.VersionPolicy(kind="latest", latest=2), VersionPolicy.latest(2), {"latest": 2}),
    (server_config.VersionPolicy(kind="all"), VersionPolicy.all(), "all"),
    (server_config.VersionPolicy(kind="specific", versions=(1, 3)), VersionPolicy.specific(1, 3), {"specific": [1, 3]}),
]


def reported(policy: server_config.VersionPolicy, labels: dict[str, str] | None = None) -> pb.ModelConfig:
    """What kerve's ModelConfig RPC reports for a batched version served with `policy` (and `labels` files)."""
    batching = BatchingConfig(max_batch_size=8, max_queue_delay_s=0.002)
    return model_config("m", PLATFORM, INPUTS, OUTPUTS, batching, policy, ["/device:CPU:0"], label_files=labels)


def sent_back(config: ModelConfig) -> str:
    """The load config JSON `load_model("m", config=config)` sends."""
    return load_model_request("m", config).parameters["config"].string_param


def test_a_labelled_output_is_sent_back_as_reported() -> None:
    now = reported(server_config.VersionPolicy(), labels={"output_0": "labels.txt"})
    read = parse_config(pb.ModelConfigResponse(config=now))
    assert read.outputs == (TensorConfig("output_0", "FP32", (2,), "labels.txt"),)
    assert list(config_message(read).output) == list(now.output)
    # The server's own check: before the fix it refused these outputs ("comes from the SavedModel's signature").
    for config in (read, dataclasses.replace(read, max_batch_size=4)):
        got = triton_config.overrides("m", sent_back(config), PLATFORM, now)
        assert got["batching"]["max_batch_size"] == config.max_batch_size


@pytest.mark.parametrize(("policy", "sdk_policy", "override"), POLICIES)
def test_a_config_read_and_sent_back_keeps_its_version_policy(
    policy: server_config.VersionPolicy, sdk_policy: VersionPolicy, override: Any
) -> None:
    now = reported(policy, labels={"output_0": "labels.txt"})
    read = parse_config(pb.ModelConfigResponse(config=now))
    assert read.version_policy == sdk_policy
    assert config_message(read) == now  # every field the server reported
    # Before the fix the load had no "version_policy" key: config.yaml's (default latest 1), unloading versions.
    for config in (read, dataclasses.replace(read, max_batch_size=4)):
        assert triton_config.overrides("m", sent_back(config), PLATFORM, now)["version_policy"] == override


def test_the_policy_can_be_changed_and_an_unset_one_is_left_out() -> None:
    now = reported(server_config.VersionPolicy(kind="all"))
    read = parse_config(pb.ModelConfigResponse(config=now))
    latest = dataclasses.replace(read, version_policy=VersionPolicy.latest(2))
    assert triton_config.overrides("m", sent_back(latest), PLATFORM, now)["version_policy"] == {"latest": 2}

    unset = dataclasses.replace(read, version_policy=None)  # not set: the server applies config.yaml's
    assert not config_message(unset).HasField("version_policy")
    assert "version_policy" not in json.loads(sent_back(unset))
    assert "version_policy" not in triton_config.overrides("m", sent_back(unset), PLATFORM, now)
    bare = parse_config(pb.ModelConfigResponse(config=pb.ModelConfig(name="m")))  # a server that reports none
    assert bare.version_policy is None and config_message(bare) == pb.ModelConfig(name="m")


def test_version_policy_values() -> None:
    assert VersionPolicy.latest() == VersionPolicy("latest", num_versions=1)
    assert VersionPolicy.all() == VersionPolicy("all")
    assert VersionPolicy.specific(3, 1) == VersionPolicy("specific", versions=(3, 1))
    with pytest.raises(InvalidArgumentError, match='must be "latest", "all" or "specific", got \'newest\''):
        VersionPolicy("newest")
    empty = pb.ModelConfig(name="m")
    empty.version_policy.SetInParent()  # present, no choice: Triton reads it as latest 1
    assert parse_config(pb.ModelConfigResponse(config=empty)).version_policy == VersionPolicy.latest(1)


def test_the_constructor_stays_backward_compatible() -> None:
    old = ModelConfig("m", PLATFORM, "tensorflow", 0, (), (), False, (), None, (), 0, 0, None, (), None)
    assert old.version_policy is None and not config_message(old).HasField("version_policy")
    assert TensorConfig("y", "FP32", (2,)).label_filename == ""  # unlabelled: nothing sent
    assert (
        not config_message(dataclasses.replace(old, outputs=(TensorConfig("y", "FP32", (2,)),)))
        .output[0]
        .label_filename
    )


class Reporting(pb_grpc.GRPCInferenceServiceServicer):
    """Reports one config (a labelled model served with `all`) and records what loads send."""

    def __init__(self) -> None:
        self.config = reported(server_config.VersionPolicy(kind="all"), labels={"output_0": "labels.txt"})
        self.loads: list[pb.ModelConfig] = []

    def ModelConfig(self, request: pb.ModelConfigRequest, context: Any) -> pb.ModelConfigResponse:
        return pb.ModelConfigResponse(config=self.config)

    def RepositoryModelLoad(self, request: pb.RepositoryModelLoadRequest, context: Any) -> Any:
        text = request.parameters["config"].string_param
        self.loads.append(json_format.Parse(text, pb.ModelConfig()))
        try:  # kerve's own check of a load config against what it reports
            triton_config.overrides(request.model_name, text, PLATFORM, self.config)
        except ServingError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, exc.message)
        return pb.RepositoryModelLoadResponse()


@pytest.fixture
def reporting() -> Iterator[tuple[str, Reporting]]:
    servicer = Reporting()
    with in_process_v2_server(servicer, workers=2) as target:
        yield target, servicer


def test_clients_send_back_what_they_read(reporting: tuple[str, Reporting]) -> None:
    target, servicer = reporting
    with Client(target) as client:
        config = client.config("m")
        client.load_model("m", config=config)  # type: ignore[arg-type]  # load_model takes the SDK's ModelConfig
        client.load_model("m", config=dataclasses.replace(config, max_batch_size=4))  # type: ignore[arg-type]

    async def main() -> None:
        async with AsyncClient(target) as aclient:
            await aclient.load_model("m", config=await aclient.config("m"))  # type: ignore[arg-type]

    asyncio.run(main())
    assert servicer.loads[0] == servicer.config and servicer.loads[2] == servicer.config
    assert servicer.loads[1].max_batch_size == 4
    assert all(load.version_policy == servicer.config.version_policy for load in servicer.loads)
    assert all(load.output == servicer.config.output for load in servicer.loads)


def test_an_edit_the_message_cannot_hold_is_invalid_argument_before_sending() -> None:
    read = parse_config(pb.ModelConfigResponse(config=reported(server_config.VersionPolicy())))
    group = read.instance_groups[0]
    edits = [
        dataclasses.replace(read, inputs=(TensorConfig("x", "FLOAT32", (3,)),)),  # no such Triton datatype
        dataclasses.replace(read, max_queue_delay_s=float("nan")),
        dataclasses.replace(read, max_batch_size=2**40),  # an int32 field
        dataclasses.replace(read, instance_groups=(dataclasses.replace(group, kind="cpu"),)),  # KIND_CPU is upper
    ]
    for edited in edits:
        with pytest.raises(InvalidArgumentError, match="load config for model 'm' cannot be sent"):
            load_model_request("m", edited)
