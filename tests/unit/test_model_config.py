"""config.yaml parsing and version policies (no TensorFlow)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kerve.server.model_config import (
    ModelConfig,
    ModelConfigError,
    VersionPolicy,
    load_model_config,
    parse_model_config,
)


def write(tmp_path: Path, text: str) -> Path:
    model = tmp_path / "m"
    model.mkdir(exist_ok=True)
    (model / "config.yaml").write_text(text)
    return model


def test_missing_or_empty_file_means_defaults(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    assert load_model_config(tmp_path / "m") == ModelConfig()
    assert load_model_config(write(tmp_path, "# nothing yet\n")) == ModelConfig()
    config = ModelConfig()
    assert config.version_policy == VersionPolicy("latest", 1) and config.device_mode == "replica"
    assert not config.response_cache
    assert config.aspired([1, 3, 2]) == {3}


def test_full_config(tmp_path: Path) -> None:
    config = load_model_config(
        write(
            tmp_path,
            "version_policy: {specific: [4, 1, 1]}\n"
            "labels: {stable: 1, canary: 4}\n"
            "batching: {max_batch_size: 16, max_queue_delay_s: 0.002}\n"
            "device_mode: mirrored\n"
            "response_cache: true\n",
        )
    )
    assert config.replicas is None and config.response_cache
    assert config.version_policy == VersionPolicy("specific", versions=(1, 4))
    assert config.labels == {"stable": 1, "canary": 4}
    assert config.batching == {"max_batch_size": 16, "max_queue_delay_s": 0.002}
    assert config.device_mode == "mirrored"


@pytest.mark.parametrize(
    ("policy", "available", "expected"),
    [
        ({"latest": 2}, [1, 2, 3], {2, 3}),
        ({"latest": 5}, [1, 2], {1, 2}),
        ("all", [1, 2, 3], {1, 2, 3}),
        ({"all": {}}, [2], {2}),
        ({"specific": [1, 3, 9]}, [1, 2, 3], {1, 3}),
        (None, [], set()),
    ],
)
def test_version_policies(policy: object, available: list[int], expected: set[int]) -> None:
    config = parse_model_config({"version_policy": policy})
    assert config.aspired(available) == expected


def test_labelled_versions_are_aspired_when_present() -> None:
    config = parse_model_config({"labels": {"stable": 1, "canary": 7}})
    assert config.aspired([1, 2, 3]) == {1, 3}  # latest 1 plus the labelled 1; 7 is not on disk


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("version_policy: {latest: 0}\n", "version_policy.latest must be a positive integer, got 0"),
        ("version_policy: {latest: true}\n", "positive integer"),
        ("version_policy: newest\n", "version_policy must be one of"),
        ("version_policy: {specific: []}\n", "non-empty list"),
        ("version_policy: {specific: [1, -2]}\n", "specific entry must be a positive integer, got -2"),
        ("version_policy: {latest: 1, all: {}}\n", "must be one of"),
        ("labels: [stable]\n", "labels must map label names to versions"),
        ("labels: {'9lives': 1}\n", "invalid label '9lives'"),
        ("labels: {stable: two}\n", "labels.stable must be a positive integer"),
        ("batching: 32\n", "batching must be a mapping"),
        ("device_mode: gpu\n", "device_mode must be one of replica, mirrored, got 'gpu'"),
        ("replicas: 0\n", "replicas must be a positive integer, got 0"),
        ("replicas: two\n", "replicas must be a positive integer, got 'two'"),
        ("device_mode: mirrored\nreplicas: 1\n", "replicas applies to device_mode replica"),
        ("response_cache: yes please\n", "response_cache must be true or false, got 'yes please'"),
        ("response_cache: 1\n", "response_cache must be true or false, got 1"),
        ("versionpolicy: all\n", "unknown key 'versionpolicy'"),
        ("- a\n- b\n", "expected a mapping at the top level"),
        ("labels: {stable: [1\n", "invalid YAML"),
    ],
)
def test_invalid_configs_name_file_and_key(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(ModelConfigError) as info:
        load_model_config(write(tmp_path, text))
    assert fragment in str(info.value)
    assert str(info.value).startswith("m/config.yaml")  # the model's file, not the server's absolute path


def test_replicas_default_to_every_device_and_take_a_count(tmp_path: Path) -> None:
    assert ModelConfig().replicas is None
    assert load_model_config(write(tmp_path, "replicas: 1\n")).replicas == 1
    assert parse_model_config({"device_mode": "replica", "replicas": 3}).replicas == 3


def test_overrides_replace_file_keys(tmp_path: Path) -> None:
    model = write(tmp_path, "version_policy: all\nlabels: {stable: 1}\n")
    config = load_model_config(model, {"version_policy": {"latest": 2}})
    assert config.version_policy == VersionPolicy("latest", 2) and config.labels == {"stable": 1}
    with pytest.raises(ModelConfigError, match="latest must be a positive integer"):
        load_model_config(model, {"version_policy": {"latest": -1}})


def test_batching_options_are_checked_at_load() -> None:
    from kerve.server.model_config import ModelConfigError, parse_model_config

    ok = parse_model_config({"batching": {"allowed_batch_sizes": [4, 8], "max_queue_delay_s": "2e-3", "enabled": True}})
    assert ok.batching["allowed_batch_sizes"] == [4, 8]
    for bad, message in (
        ({"max_batch_sise": 8}, "unknown batching option 'max_batch_sise'"),
        ({"max_batch_size": 0}, "max_batch_size"),
        ({"allowed_batch_sizes": [8, 4]}, "allowed_batch_sizes"),
        ({"enabled": "no"}, "enabled must be true or false"),
    ):
        with pytest.raises(ModelConfigError, match=message):
            parse_model_config({"batching": bad})
