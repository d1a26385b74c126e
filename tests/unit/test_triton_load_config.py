"""Triton's load_model(config=JSON) as config.yaml overrides (server/triton_config.py), without TensorFlow: what a
config may change, that one read from ModelConfig and sent back loads unchanged, and that everything kerve cannot
apply is refused with the field named."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from google.protobuf import json_format

from kerve.server import triton_config
from kerve.server.batcher import BatchingConfig
from kerve.server.errors import ErrorCode, ServingError
from kerve.server.manager import EXPLICIT, ModelManager
from kerve.server.metrics import Metrics
from kerve.server.model_config import ModelConfigError, VersionPolicy, load_model_config
from kerve.server.types import TensorSpec
from kerve.server.v2_codec import model_config

PLATFORM = "tensorflow_savedmodel"
SPEC = {"x": TensorSpec("x", np.dtype(np.float32), (None, 4))}


def current(
    batching: BatchingConfig | None = BatchingConfig(max_batch_size=8, max_queue_delay_s=0.002),
    devices: list[str] | None = None,
) -> Any:
    """What kerve's ModelConfig RPC reports for a served version."""
    return model_config("m", PLATFORM, SPEC, SPEC, batching, VersionPolicy(), devices or ["/device:CPU:0"])


def overrides(config: dict[str, Any] | str, now: Any = None, devices: int = 1) -> dict[str, Any]:
    text = config if isinstance(config, str) else json.dumps(config)
    return triton_config.overrides("m", text, PLATFORM, now, devices)


def refused(config: dict[str, Any] | str, now: Any = None, devices: int = 1) -> str:
    with pytest.raises(ServingError) as info:
        overrides(config, now, devices)
    assert info.value.code is ErrorCode.INVALID_ARGUMENT
    return info.value.message


def test_a_config_read_from_model_config_and_sent_back_keeps_the_settings() -> None:
    now = current()
    got = overrides(json_format.MessageToJson(now), now)
    assert got == {
        "batching": {
            "enabled": True,
            "max_batch_size": 8,
            "max_queue_delay_s": 0.002,
            "allowed_batch_sizes": [],
            "pad_to_allowed": True,
            "priority_levels": 0,
            "default_priority_level": 0,
            "queue_policy": {
                "timeout_s": 0.0,
                "timeout_action": "reject",
                "allow_timeout_override": False,
                "max_queue_size": 0,
            },
            "priority_queue_policy": {},
        },
        "version_policy": {"latest": 1},
    }
    # without a batcher kerve reports max_batch_size 0 and no dynamic_batching: it stays off
    unbatched = current(None)
    assert overrides(json_format.MessageToJson(unbatched), unbatched)["batching"] == {"enabled": False}


def test_response_cache_round_trips_and_changes() -> None:
    cached = model_config("m", PLATFORM, SPEC, SPEC, None, VersionPolicy(), ["/device:CPU:0"], response_cache=True)
    assert cached.response_cache.enable and not current().HasField("response_cache")
    assert overrides(json_format.MessageToJson(cached), cached)["response_cache"] is True
    assert overrides({"response_cache": {"enable": False}})["response_cache"] is False
    assert "response_cache" not in overrides({})  # left out: config.yaml's value stays


def test_batching_and_version_policy_change() -> None:
    config = {
        "max_batch_size": 32,
        "dynamic_batching": {"max_queue_delay_microseconds": 500, "preferred_batch_size": [16, 4]},
        "version_policy": {"specific": {"versions": [1, 3]}},
    }
    got = overrides(config)
    assert got["batching"]["max_batch_size"] == 32 and got["batching"]["max_queue_delay_s"] == 0.0005
    assert got["batching"]["allowed_batch_sizes"] == [4, 16, 32]  # padded to: a full batch must be one of them
    assert got["version_policy"] == {"specific": [1, 3]}
    levels = overrides({"max_batch_size": 4, "dynamic_batching": {"priority_levels": 3, "default_priority_level": 2}})
    assert levels["batching"]["priority_levels"] == 3 and levels["batching"]["default_priority_level"] == 2
    assert overrides({"version_policy": {"all": {}}})["version_policy"] == "all"
    # Triton: no dynamic batcher, but max_batch_size still bounds each request's rows
    assert overrides({"max_batch_size": 16}) == {"batching": {"enabled": False, "max_batch_size": 16}}
    assert overrides({"maxBatchSize": 4, "dynamicBatching": {}})["batching"]["max_batch_size"] == 4  # camelCase JSON


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ({"name": "other"}, "name must be 'm'"),
        ({"platform": "onnxruntime_onnx"}, "platform must be 'tensorflow_savedmodel'"),
        ({"backend": "python"}, "backend must be 'tensorflow'"),
        ({"dynamic_batching": {}}, "dynamic_batching needs max_batch_size > 0"),
        ({"max_batch_size": 4, "dynamic_batching": {"preferred_batch_size": [8]}}, "preferred_batch_size 8"),
        ({"optimization": {"priority": 1}}, "optimization"),  # outside kerve's ModelConfig: the parser names it
        ({"max_batch_size": 4, "dynamic_batching": {"preserve_ordering": True}}, "preserve_ordering"),
        ("{not json", "load config for model 'm'"),
    ],
)
def test_what_kerve_cannot_apply_is_refused_by_name(config: dict[str, Any] | str, words: str) -> None:
    assert words in refused(config, current())


def test_queue_policies_round_trip_through_model_config(tmp_path: Path) -> None:
    """Triton's default_queue_policy / priority_queue_policy: reported by ModelConfig, and a config read, edited
    and sent back gives the batcher the same policies."""
    batching = BatchingConfig(
        max_batch_size=8,
        priority_levels=2,
        queue_policy={"timeout_s": 0.25, "max_queue_size": 100},
        priority_queue_policy={1: {"timeout_s": 0.005, "timeout_action": "delay", "allow_timeout_override": True}},
    )
    now = current(batching)
    reported = json.loads(json_format.MessageToJson(now))["dynamicBatching"]
    assert reported["defaultQueuePolicy"] == {"defaultTimeoutMicroseconds": "250000", "maxQueueSize": 100}
    assert reported["priorityQueuePolicy"] == {
        "1": {"timeoutAction": "DELAY", "defaultTimeoutMicroseconds": "5000", "allowTimeoutOverride": True}
    }
    options = dict(overrides(json_format.MessageToJson(now), now)["batching"])
    assert options.pop("enabled") is True
    assert BatchingConfig.from_mapping(options) == batching
    assert "defaultQueuePolicy" not in json_format.MessageToJson(current())  # the default policy: left out
    (tmp_path / "m").mkdir()
    bad = {"max_batch_size": 4, "dynamic_batching": {"priority_levels": 2, "priority_queue_policy": {"3": {}}}}
    with pytest.raises(ModelConfigError, match="level 3 is not one of the model's priority levels"):
        load_model_config(tmp_path / "m", overrides(bad))  # checked as config.yaml's are (the load is refused)


def test_inputs_and_outputs_may_only_repeat_what_is_reported_instance_groups_a_count(tmp_path: Path) -> None:
    now = current()
    reported = json.loads(json_format.MessageToJson(now))
    assert overrides({"input": reported["input"], "output": reported["output"]}, now)  # the same: fine
    changed = [{**reported["input"][0], "dims": ["8"]}]
    assert "input comes from the SavedModel's signature" in refused({"input": changed}, now)
    assert "no version of the model is loaded" in refused({"output": reported["output"]}, None)

    # instance groups: a CPU count up to the CPU devices becomes replicas; on GPUs, only "every GPU" (kerve picks
    # devices itself); counts beyond that are batches at once (the next test)
    cpu = [{"count": 3, "kind": "KIND_CPU"}]
    expected = {**overrides({}), "replicas": 3, "device_mode": "replica"}
    assert overrides({"instance_group": cpu}, now, devices=3) == expected
    assert "no version of the model is loaded" in refused({"instance_group": cpu}, None, devices=3)
    (tmp_path / "m").mkdir()
    assert load_model_config(tmp_path / "m", overrides({"instance_group": cpu}, now, devices=3)).replicas == 3
    gpus = current(devices=["/device:GPU:0", "/device:GPU:1"])
    every = overrides({"instance_group": [{"kind": "KIND_GPU", "count": 1}]}, gpus)
    assert (every["replicas"], every["device_mode"]) == (None, "replica")
    for group, now_ in (
        ({"kind": "KIND_GPU", "count": 1, "gpus": [1]}, gpus),  # pinning a GPU
        ({"kind": "KIND_CPU", "count": 2}, gpus),  # CPU replicas on a GPU server
        ({"kind": "KIND_GPU", "count": 1}, now),  # GPU replicas on a CPU server
        ({"kind": "KIND_MODEL", "count": 1}, now),
    ):
        message = refused({"instance_group": [group]}, now_)
        assert "instance_group is kerve's placement" in message and "KIND_CPU group's count" in message, group
    assert "instance_group" in refused({"instance_group": cpu * 2}, now, devices=3)  # two groups


def test_batching_overrides_keep_the_files_other_batching_options(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.yaml").write_text("batching: {max_queued: 7, max_batch_size: 4}\nreplicas: 1\n")
    config = load_model_config(tmp_path / "m", overrides({"max_batch_size": 16, "dynamic_batching": {}}))
    assert config.batching["max_queued"] == 7 and config.batching["max_batch_size"] == 16
    assert config.replicas == 1


class Batcher:
    def __init__(self) -> None:
        self.closed_with: bool | None = None

    async def close(self, drain: bool = True) -> None:
        self.closed_with = drain


def test_a_load_that_changes_batching_applies_it_to_loaded_versions(tmp_path: Path) -> None:
    """Without reloading the version: its batchers drain and the engine makes new ones with the new knobs."""
    path = tmp_path / "m" / "1"
    path.mkdir(parents=True)
    (path / "saved_model.pb").write_text("fake: the loader below reads nothing")
    loads: list[Path] = []

    def loader(version_dir: Path, config: Any) -> object:
        loads.append(version_dir)
        return object()

    async def main() -> None:
        with ThreadPoolExecutor(1) as executor:
            manager = ModelManager(tmp_path, loader, executor, Metrics(), control=EXPLICIT)
            await manager.load_all()
            (entry,) = manager.entries("m")
            old = entry.batchers["serving_default"] = Batcher()
            await manager.load_model("m", overrides({"max_batch_size": 16, "dynamic_batching": {}}))
            assert manager.entries("m") == [entry] and len(loads) == 1  # the same version object, not reloaded
            assert entry.config.batching["max_batch_size"] == 16
            assert old.closed_with is True and entry.batchers == {}
            again = entry.batchers["serving_default"] = Batcher()
            await manager.load_model("m", overrides({"max_batch_size": 16, "dynamic_batching": {}}))
            assert again.closed_with is None  # nothing changed: the batcher stays
            await manager.load_model("m")  # no config: back to config.yaml (none: the server's flags)
            assert entry.config.batching == {} and again.closed_with is True
            await manager.close()

    asyncio.run(asyncio.wait_for(main(), 30))


def test_instances_per_gpu_are_batches_at_once_on_each_gpu(tmp_path: Path) -> None:
    """Triton runs `count` instances of a KIND_GPU group side by side on each card: kerve's batches_per_replica."""
    gpus = current(devices=["/device:GPU:0", "/device:GPU:1"])
    group = {"instance_group": [{"kind": "KIND_GPU", "count": 3}]}
    batched = {"max_batch_size": 8, "dynamic_batching": {}, **group}
    got = overrides(batched, gpus)
    assert (got["replicas"], got["device_mode"], got["batching"]["batches_per_replica"]) == (None, "replica", 3)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.yaml").write_text("batching: {batches_per_replica: 2, max_queued: 7}\n")
    config = load_model_config(tmp_path / "m", got)
    assert (config.batching["batches_per_replica"], config.batching["max_queued"]) == (3, 7)
    options = dict(got["batching"])
    assert options.pop("enabled") is True and BatchingConfig.from_mapping(options).batches_per_replica == 3

    # what ModelConfig reports for two batches per GPU, sent back, changes nothing (no placement key at all)
    two = current(BatchingConfig(max_batch_size=8, batches_per_replica=2), ["/device:GPU:0", "/device:GPU:1"])
    assert json.loads(json_format.MessageToJson(two))["instanceGroup"][0]["count"] == 2
    back = overrides(json_format.MessageToJson(two), two)
    assert "replicas" not in back and "batches_per_replica" not in back["batching"]
    # a config without the group keeps config.yaml's count
    assert "batches_per_replica" not in overrides({"max_batch_size": 8, "dynamic_batching": {}}, two)["batching"]
    # and one with count 1 takes it back to one batch at a time
    one = overrides({"max_batch_size": 8, "dynamic_batching": {}, "instance_group": [{"kind": "KIND_GPU"}]}, two)
    assert one["batching"]["batches_per_replica"] == 1

    assert "needs dynamic_batching" in refused({"max_batch_size": 8, **group}, gpus)  # no batcher, no batches
    assert overrides({"instance_group": [{"kind": "KIND_GPU", "count": 1}]}, gpus)["batching"] == {"enabled": False}
    too_many = {**batched, "instance_group": [{"kind": "KIND_GPU", "count": 17}]}
    assert "17 batches at once on each device, above the 16" in refused(too_many, gpus)
    assert "instance_group is kerve's placement" in refused(group, current())  # GPU instances on a CPU server


def test_a_cpu_count_is_replicas_on_the_cpu_devices_then_batches_at_once_on_each(tmp_path: Path) -> None:
    """Triton runs a KIND_CPU group's `count` instances side by side on the CPU: kerve spreads them over its CPU
    devices (--cpu-replicas), one replica on each, and runs the rest as batches at once on each replica."""
    now = current()
    batched = {"max_batch_size": 8, "dynamic_batching": {}}

    def placed(count: int, devices: int) -> tuple[int, str, int]:
        got = overrides({**batched, "instance_group": [{"kind": "KIND_CPU", "count": count}]}, now, devices)
        return got["replicas"], got["device_mode"], got["batching"]["batches_per_replica"]

    assert placed(2, devices=1) == (1, "replica", 2)  # the default CPU server: two batches at once
    assert placed(2, devices=2) == (2, "replica", 1)  # --cpu-replicas 2: one on each
    assert placed(4, devices=2) == (2, "replica", 2)
    assert placed(1, devices=2) == (1, "replica", 1)
    three = {**batched, "instance_group": [{"kind": "KIND_CPU", "count": 3}]}
    assert "count 3 on 2 CPU devices" in refused(three, now, devices=2)  # 2 + 1 is not one count per replica
    assert "at most 2 or a multiple of it" in refused(three, now, devices=2)
    assert "needs dynamic_batching" in refused({"instance_group": [{"kind": "KIND_CPU", "count": 2}]}, now)
    too_many = {**batched, "instance_group": [{"kind": "KIND_CPU", "count": 34}]}
    assert "17 batches at once on each device, above the 16" in refused(too_many, now, devices=2)

    # reported: every batch at once on the CPU (replicas x batches_per_replica); sent back, nothing changes
    cpus = ["/device:CPU:0", "/device:CPU:1"]
    four = current(BatchingConfig(max_batch_size=8, batches_per_replica=2), cpus)
    assert json.loads(json_format.MessageToJson(four))["instanceGroup"][0]["count"] == 4
    back = overrides(json_format.MessageToJson(four), four, devices=2)
    assert "replicas" not in back and "batches_per_replica" not in back["batching"]
    (tmp_path / "m").mkdir()
    config = load_model_config(tmp_path / "m", overrides(three | {"instance_group": [{"count": 4}]}, four, 2))
    assert (config.replicas, config.batching["batches_per_replica"]) == (2, 2)  # KIND_AUTO: the CPU here
    gpus = current(devices=["/device:GPU:0"])
    auto = overrides({**batched, "instance_group": [{"count": 3}]}, gpus)  # KIND_AUTO on a GPU server
    assert (auto["replicas"], auto["batching"]["batches_per_replica"]) == (None, 3)
