"""A served version as Triton's ModelConfig (server/v2_codec.py): what tritonclient's get_model_config reads."""

from __future__ import annotations

import numpy as np
from google.protobuf import json_format

from server.batcher import BatchingConfig
from server.model_config import VersionPolicy
from server.types import TensorSpec
from server.v2_codec import model_config

IMAGE = {"image": TensorSpec("image", np.dtype(np.float32), (None, 28, 28, 1))}
PROBS = {"probs": TensorSpec("probs", np.dtype(np.float32), (None, 10))}
CPU = ["/job:localhost/replica:0/task:0/device:CPU:0"]


def as_dict(**kwargs) -> dict:  # noqa: ANN003 - model_config's arguments
    args = {
        "model": "m",
        "platform": "tensorflow_savedmodel",
        "inputs": IMAGE,
        "outputs": PROBS,
        "batching": BatchingConfig(),
        "policy": VersionPolicy(),
        "devices": CPU,
        **kwargs,
    }
    return json_format.MessageToDict(model_config(**args), preserving_proto_field_name=True)


def test_a_batched_model_leaves_the_batch_dimension_out_as_triton_does() -> None:
    config = as_dict(batching=BatchingConfig(max_batch_size=32, max_queue_delay_s=0.002))
    assert config == {
        "name": "m",
        "platform": "tensorflow_savedmodel",
        "backend": "tensorflow",
        "max_batch_size": 32,
        "version_policy": {"latest": {"num_versions": 1}},
        "input": [{"name": "image", "data_type": "TYPE_FP32", "dims": ["28", "28", "1"]}],
        "output": [{"name": "probs", "data_type": "TYPE_FP32", "dims": ["10"]}],
        "instance_group": [{"name": "m_cpu", "kind": "KIND_CPU", "count": 1}],
        "dynamic_batching": {"max_queue_delay_microseconds": "2000"},
    }


def test_without_a_batcher_the_shapes_are_the_signatures_own() -> None:
    config = as_dict(batching=None)
    assert "max_batch_size" not in config and "dynamic_batching" not in config  # 0 and unset: proto3 defaults
    assert config["input"][0]["dims"] == ["-1", "28", "28", "1"]
    assert config["output"][0]["dims"] == ["-1", "10"]


def test_padded_batch_sizes_are_the_preferred_ones() -> None:
    padded = BatchingConfig(max_batch_size=16, allowed_batch_sizes=(4, 8, 16))
    assert as_dict(batching=padded)["dynamic_batching"]["preferred_batch_size"] == [4, 8, 16]
    natural = BatchingConfig(max_batch_size=16, allowed_batch_sizes=(4, 8, 16), pad_to_allowed=False)
    assert "preferred_batch_size" not in as_dict(batching=natural)["dynamic_batching"]


def test_strings_and_integers_get_triton_type_names() -> None:
    inputs = {
        "text": TensorSpec("text", np.dtype(object), (None,)),
        "ids": TensorSpec("ids", np.dtype(np.int64), (None, 4)),
    }
    config = as_dict(inputs=inputs)
    assert [(i["name"], i["data_type"], i.get("dims", [])) for i in config["input"]] == [
        ("ids", "TYPE_INT64", ["4"]),
        ("text", "TYPE_STRING", []),
    ]


def test_version_policies() -> None:
    assert as_dict(policy=VersionPolicy(kind="latest", latest=3))["version_policy"] == {"latest": {"num_versions": 3}}
    assert as_dict(policy=VersionPolicy(kind="all"))["version_policy"] == {"all": {}}
    specific = VersionPolicy(kind="specific", versions=(1, 3))
    assert as_dict(policy=specific)["version_policy"] == {"specific": {"versions": ["1", "3"]}}


def test_instances_are_batches_at_once_grouped_by_device_kind() -> None:
    gpus = ["/job:localhost/replica:0/task:0/device:GPU:0", "/job:localhost/replica:0/task:0/device:GPU:2"]
    assert as_dict(devices=gpus)["instance_group"] == [
        {"name": "m_gpu", "kind": "KIND_GPU", "count": 1, "gpus": [0, 2]}
    ]
    two = as_dict(devices=gpus, batching=BatchingConfig(batches_per_replica=2))  # Triton's instances per GPU
    assert two["instance_group"] == [{"name": "m_gpu", "kind": "KIND_GPU", "count": 2, "gpus": [0, 2]}]
    assert as_dict(devices=gpus, batching=None)["instance_group"][0]["count"] == 1  # no batcher: 1, as before
    cpus = [f"/job:localhost/replica:0/task:0/device:CPU:{i}" for i in range(3)]
    assert as_dict(devices=cpus)["instance_group"] == [{"name": "m_cpu", "kind": "KIND_CPU", "count": 3}]
    two = as_dict(devices=cpus, batching=BatchingConfig(batches_per_replica=2))  # every batch at once on the CPU
    assert two["instance_group"] == [{"name": "m_cpu", "kind": "KIND_CPU", "count": 6}]
    mirrored = ["mirrored:/device:GPU:0,/device:GPU:1"]
    assert as_dict(devices=mirrored)["instance_group"] == [{"name": "m", "kind": "KIND_MODEL", "count": 1}]
    tpu = ["/job:worker/replica:0/task:0/device:TPU:0"]
    assert as_dict(devices=tpu)["instance_group"] == [{"name": "m", "kind": "KIND_MODEL", "count": 1}]


def test_an_output_with_class_names_reports_its_label_file() -> None:
    outputs = {**PROBS, "raw": TensorSpec("raw", np.dtype(np.float32), (None, 2))}
    config = as_dict(outputs=outputs, label_files={"probs": "probs.labels.txt"})
    assert [(o["name"], o.get("label_filename")) for o in config["output"]] == [
        ("probs", "probs.labels.txt"),
        ("raw", None),  # none: left out, as Triton's empty field is
    ]
