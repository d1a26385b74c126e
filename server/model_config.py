"""Per-model settings from `<repo>/<model>/config.yaml`, parsed once into a typed, validated ModelConfig.

    version_policy: {latest: 2}          # default {latest: 1}; or `all`, or {specific: [1, 3]}
    labels: {stable: 3, canary: 4}       # version labels (TF Serving `version_label`); labelled versions are loaded
    batching: {max_batch_size: 32}       # kept as a mapping: the inference engine builds its BatchingConfig from it
    device_mode: replica                 # replica (one copy per device, default) | mirrored
    replicas: 1                          # replica mode: copies on that many devices (default: every device)
    response_cache: true                 # answer repeated requests from the server's response cache (default false)

A missing file means the defaults. Unknown keys, wrong types and impossible values raise ModelConfigError naming
the file and the key, so a typo fails that model's load loudly instead of silently serving with defaults.
No TensorFlow and no wire formats here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kerve import repository

from .batcher import BatchingConfig, positive_int

DEVICE_MODES = ("replica", "mirrored")
_LABEL = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
_KEYS = ("version_policy", "labels", "batching", "device_mode", "replicas", "response_cache")


class ModelConfigError(ValueError):
    """config.yaml is unreadable or invalid; the message names the file and the offending key."""


@dataclass(frozen=True)
class VersionPolicy:
    """Which of the versions on disk to serve: the newest `latest`, all of them, or a fixed list."""

    kind: str = "latest"  # latest | all | specific
    latest: int = 1
    versions: tuple[int, ...] = ()

    def select(self, available: Iterable[int]) -> set[int]:
        versions = sorted(set(available))
        if self.kind == "all":
            return set(versions)
        if self.kind == "specific":
            return set(versions) & set(self.versions)
        return set(versions[-self.latest :])

    def describe(self) -> str:
        if self.kind == "all":
            return "all"
        if self.kind == "specific":
            return f"specific {list(self.versions)}"
        return f"latest {self.latest}"


@dataclass(frozen=True)
class ModelConfig:
    version_policy: VersionPolicy = field(default_factory=VersionPolicy)
    labels: Mapping[str, int] = field(default_factory=dict)
    batching: Mapping[str, Any] = field(default_factory=dict)
    device_mode: str = "replica"
    replicas: int | None = None  # replica mode: how many devices get a copy; None = all of them
    response_cache: bool = False  # repeated requests answered from the server's cache (--response-cache-mb)

    def aspired(self, available: Iterable[int]) -> set[int]:
        """Versions to serve out of `available`: the policy's choice plus every labelled version present."""
        present = set(available)
        return self.version_policy.select(present) | (set(self.labels.values()) & present)


def _positive_int(where: str, value: object) -> int:
    """The batcher's check, worded for config.yaml (one message whatever is wrong) and raised as ModelConfigError."""
    try:
        return positive_int(where, value)
    except ValueError:
        raise ModelConfigError(f"{where} must be a positive integer, got {value!r}") from None


def _policy(where: str, value: object) -> VersionPolicy:
    if value is None:
        return VersionPolicy()
    if value == "all":
        return VersionPolicy(kind="all")
    if not isinstance(value, Mapping) or len(value) != 1:
        raise ModelConfigError(f"{where} must be one of {{latest: N}}, all, {{specific: [versions]}}; got {value!r}")
    ((kind, arg),) = value.items()
    if kind == "latest":
        return VersionPolicy(kind="latest", latest=_positive_int(f"{where}.latest", arg))
    if kind == "all" and arg in (None, {}, True):
        return VersionPolicy(kind="all")
    if kind == "specific":
        if not isinstance(arg, list) or not arg:
            raise ModelConfigError(f"{where}.specific must be a non-empty list of versions, got {arg!r}")
        versions = tuple(sorted({_positive_int(f"{where}.specific entry", v) for v in arg}))
        return VersionPolicy(kind="specific", versions=versions)
    raise ModelConfigError(f"{where} must be one of {{latest: N}}, all, {{specific: [versions]}}; got {value!r}")


def _labels(where: str, value: object) -> dict[str, int]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ModelConfigError(f"{where} must map label names to versions, got {value!r}")
    labels = {}
    for name, version in value.items():
        if not isinstance(name, str) or not _LABEL.match(name):
            raise ModelConfigError(f"{where}: invalid label {name!r}; use a letter then up to 63 of [A-Za-z0-9_.-]")
        labels[name] = _positive_int(f"{where}.{name}", version)
    return labels


def _batching(where: str, value: object) -> dict[str, Any]:
    """Check the options now, so a typo fails the model at load rather than its first request.

    The engine later merges them over the server's --max-batch-size etc.; here missing keys take the
    batcher's defaults, except that allowed sizes alone imply their largest as max_batch_size.
    """
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise ModelConfigError(f"{where} must be a mapping of batching options, got {value!r}")
    options = dict(value)
    enabled = options.pop("enabled", True)
    if not isinstance(enabled, bool):
        raise ModelConfigError(f"{where}.enabled must be true or false, got {enabled!r}")
    sizes = options.get("allowed_batch_sizes")
    if sizes and "max_batch_size" not in options and isinstance(sizes, list | tuple):
        options["max_batch_size"] = max(sizes)
    try:
        BatchingConfig.from_mapping(options)
    except (TypeError, ValueError) as exc:
        raise ModelConfigError(f"{where}: {exc}") from None
    return dict(value)


def parse_model_config(data: object, source: str = "config.yaml") -> ModelConfig:
    """Validate a parsed config mapping (from YAML, or built from an RPC) into a ModelConfig."""
    if data is None:
        return ModelConfig()
    if not isinstance(data, Mapping):
        raise ModelConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    unknown = sorted(str(k) for k in data if k not in _KEYS)
    if unknown:
        raise ModelConfigError(f"{source}: unknown key {unknown[0]!r}; expected some of {', '.join(_KEYS)}")
    device_mode = data.get("device_mode", "replica")
    if device_mode not in DEVICE_MODES:
        raise ModelConfigError(f"{source}: device_mode must be one of {', '.join(DEVICE_MODES)}, got {device_mode!r}")
    replicas = data.get("replicas")
    if replicas is not None:
        replicas = _positive_int(f"{source}: replicas", replicas)
        if device_mode == "mirrored":
            raise ModelConfigError(f"{source}: replicas applies to device_mode replica; mirrored uses every device")
    response_cache = data.get("response_cache", False)
    if not isinstance(response_cache, bool):
        raise ModelConfigError(f"{source}: response_cache must be true or false, got {response_cache!r}")
    return ModelConfig(
        response_cache=response_cache,
        version_policy=_policy(f"{source}: version_policy", data.get("version_policy")),
        labels=_labels(f"{source}: labels", data.get("labels")),
        batching=_batching(f"{source}: batching", data.get("batching")),
        device_mode=device_mode,
        replicas=replicas,
    )


def read_config_mapping(model_dir: Path) -> dict[str, Any]:
    """The raw mapping in `<model_dir>/config.yaml` ({} when there is none)."""
    path = model_dir / repository.CONFIG_FILE
    shown = f"{model_dir.name}/{repository.CONFIG_FILE}"  # clients see this; the server's paths stay private
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ModelConfigError(f"{shown}: unreadable: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ModelConfigError(f"{shown}: invalid YAML: {' '.join(str(exc).split())}") from exc
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ModelConfigError(f"{shown}: expected a mapping at the top level, got {type(data).__name__}")
    return dict(data)


def load_model_config(model_dir: Path, overrides: Mapping[str, Any] | None = None) -> ModelConfig:
    """Read and validate `<model_dir>/config.yaml`; `overrides` (keys of the same schema) replace its keys, and
    `batching` options one by one (an override need not repeat the file's other batching options)."""
    data = read_config_mapping(model_dir)
    replacing = dict(overrides or {})
    if isinstance(data.get("batching"), Mapping) and isinstance(replacing.get("batching"), Mapping):
        replacing["batching"] = {**data["batching"], **replacing["batching"]}
    data.update(replacing)
    return parse_model_config(data, f"{model_dir.name}/{repository.CONFIG_FILE}")
