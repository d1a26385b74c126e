"""The typed settings of `kerve train` / `kerve retrain`, loaded from flags or a YAML file and validated once.

No TensorFlow here: a bad config file fails in milliseconds, before any training, with a clear message.

YAML schema (every key optional except `repository`; unknown keys are errors, so typos never pass silently):

    repository: /models            # model repository root
    model_name: digits             # the new version is published as <repository>/<model_name>/<N+1>/
    data:
      source: digits               # digits | image_folder | text_folder | csv | npz
      path: /data/...              # all sources except digits
      test_fraction: 0.2           # held-out evaluation split (npz with x_test/y_test keys uses those)
      task: classification         # csv / npz: classification | regression
      label_column: label          # csv
      image_size: [32, 32]         # image_folder
      color_mode: rgb              # image_folder: rgb | grayscale
      max_tokens: 5000             # text_folder: vocabulary size
      sequence_length: 64          # text_folder: tokens per example (padded / truncated)
    family: auto                   # auto | cnn | resnet | mlp | lstm | gru | transformer
    augment: false                 # image families: random flip, rotation, zoom while training
    tuner: random                  # random | grid | bayesian | hyperband
    max_trials: 2                  # ignored by hyperband, which derives its trials from epochs
    cv_folds: 0                    # >= 2: score each trial by the mean over k (stratified) folds of the training
                                   # split instead of one validation split; 0 off. Not with hyperband; at most
                                   # the smallest class's count of training examples
    epochs: 5
    batch_size: 64
    early_stopping_patience: 3
    seed: 0                        # 0 <= seed < 2**32
    strategy: auto                 # auto | default | mirrored | multiworker | tpu
    cpu_devices: 0                 # > 1: split the CPU into that many logical devices (testing mirrored)
    work_dir: /tmp/kerve-train     # tuner checkpoints and TensorBoard logs; never inside the repository
    verbose: 1                     # Keras progress: 0 silent, 1 bar, 2 one line per epoch
    stale_tmp_seconds: 3600        # unfinished publishes (.tmp-*) older than this are removed first
    gate:
      metric: accuracy             # accuracy | precision | recall | f1 (higher is better) | mse | mae (lower)
      tolerance: 0.0               # publish unless the candidate is worse than the current version by more
                                   # (a finite number)

`repository` and `work_dir` must be directories this process can write, or creatable ones (checked by creating
and removing a dot-directory), so a run never fails at the end for want of a place to write.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

SOURCES = ("digits", "image_folder", "text_folder", "csv", "npz")
TASKS = ("classification", "regression")
FAMILIES = ("auto", "cnn", "resnet", "mlp", "lstm", "gru", "transformer")
TUNERS = ("random", "grid", "bayesian", "hyperband")
STRATEGIES = ("auto", "default", "mirrored", "multiworker", "tpu")
HIGHER_IS_BETTER = ("accuracy", "precision", "recall", "f1")
LOWER_IS_BETTER = ("mse", "mae")
GATE_METRICS = HIGHER_IS_BETTER + LOWER_IS_BETTER
SEED_LIMIT = 2**32  # numpy's and TensorFlow's seeds: 0 <= seed < 2**32


class ConfigError(ValueError):
    """The configuration file or flags are invalid; nothing was trained."""


@dataclass
class DataConfig:
    source: str = "digits"
    path: Path | None = None
    test_fraction: float = 0.2
    task: str = "classification"
    label_column: str = "label"
    image_size: tuple[int, int] = (32, 32)
    color_mode: str = "rgb"
    max_tokens: int = 5000
    sequence_length: int = 64

    def validate(self) -> None:
        if self.source not in SOURCES:
            raise ConfigError(f"unknown data source {self.source!r}: choose from {list(SOURCES)}")
        if self.source != "digits" and self.path is None:
            raise ConfigError(f"data source {self.source!r} needs data.path")
        if self.task not in TASKS:
            raise ConfigError(f"unknown task {self.task!r}: choose from {list(TASKS)}")
        if self.task == "regression" and self.source not in ("csv", "npz"):
            raise ConfigError(f"regression needs a csv or npz data source, not {self.source!r}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError(f"data.test_fraction must be in (0, 1), got {self.test_fraction}")
        if self.color_mode not in ("rgb", "grayscale"):
            raise ConfigError(f"data.color_mode must be rgb or grayscale, got {self.color_mode!r}")
        if len(self.image_size) != 2 or min(self.image_size) < 1:
            raise ConfigError(f"data.image_size must be [height, width], got {list(self.image_size)}")
        for name in ("max_tokens", "sequence_length"):
            if getattr(self, name) < 2:
                raise ConfigError(f"data.{name} must be >= 2, got {getattr(self, name)}")


@dataclass
class GateConfig:
    metric: str = ""  # "": the task's own (accuracy for classification, mse for regression), set by validate
    # Publish unless the candidate is worse than the current version by more than this. Negative values
    # demand an improvement of at least that much.
    tolerance: float = 0.0

    def validate(self, task: str) -> None:
        if not math.isfinite(self.tolerance):  # NaN compares false with everything: it would block every publish
            raise ConfigError(f"gate.tolerance must be a finite number, got {self.tolerance}")
        if not self.metric:  # a regression config without a gate section is valid: it gates on its own metric
            self.metric = "accuracy" if task == "classification" else "mse"
        if self.metric not in GATE_METRICS:
            raise ConfigError(f"unknown gate metric {self.metric!r}: choose from {list(GATE_METRICS)}")
        allowed = HIGHER_IS_BETTER if task == "classification" else LOWER_IS_BETTER
        if self.metric not in allowed:
            raise ConfigError(f"gate metric {self.metric!r} does not apply to {task}: choose from {list(allowed)}")

    @property
    def higher_is_better(self) -> bool:
        return self.metric in HIGHER_IS_BETTER


@dataclass
class TrainConfig:
    repository: Path
    model_name: str = "digits"
    data: DataConfig = field(default_factory=DataConfig)
    family: str = "auto"
    augment: bool = False
    tuner: str = "random"
    max_trials: int = 2
    # k-fold cross-validation of every tuning trial (small datasets); 0 (or absent): one validation split.
    cv_folds: int = 0
    epochs: int = 5
    batch_size: int = 64
    early_stopping_patience: int = 3
    seed: int = 0
    strategy: str = "auto"
    cpu_devices: int = 0
    # Tuner checkpoints and TensorBoard logs. Never inside the repository: the server would scan them.
    # None: a fresh temporary directory, kept after the run so the logs can be inspected.
    work_dir: Path | None = None
    verbose: int = 1
    stale_tmp_seconds: float = 3600.0
    gate: GateConfig = field(default_factory=GateConfig)

    def __post_init__(self) -> None:
        if isinstance(self.data, str):  # TrainConfig(dataset-like shorthand) from code and old flags
            self.data = DataConfig(source=self.data)

    @property
    def dataset(self) -> str:
        return self.data.source

    def validate(self, check_paths: bool = True) -> None:
        """Fail before any training when the run could not publish anyway.

        check_paths=False skips the checks that `repository` and `work_dir` are writable directories here: for a
        config meant for another machine (the CronJob's ConfigMap)."""
        from kerve import repository

        repository.validate_model_name(self.model_name)
        self.data.validate()
        if self.family not in FAMILIES:
            raise ConfigError(f"unknown family {self.family!r}: choose from {list(FAMILIES)}")
        if self.tuner not in TUNERS:
            raise ConfigError(f"unknown tuner {self.tuner!r}: choose from {list(TUNERS)}")
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"unknown strategy {self.strategy!r}: choose from {list(STRATEGIES)}")
        for name in ("max_trials", "epochs", "batch_size", "early_stopping_patience"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.tuner == "hyperband" and self.epochs < 2:  # its brackets resume models: it needs 2 epochs at least
            raise ConfigError(f"the hyperband tuner needs epochs >= 2, got {self.epochs}: raise epochs or use random")
        if not 0 <= self.seed < SEED_LIMIT:
            raise ConfigError(f"seed must be in [0, 2**32), got {self.seed}")
        if self.cv_folds < 0 or self.cv_folds == 1:
            raise ConfigError(f"cv_folds must be 0 (off) or >= 2, got {self.cv_folds}")
        if self.cv_folds and self.tuner == "hyperband":
            raise ConfigError("cv_folds does not work with the hyperband tuner: choose random, grid or bayesian")
        if self.cpu_devices < 0:
            raise ConfigError(f"cpu_devices must be >= 0, got {self.cpu_devices}")
        if not self.stale_tmp_seconds > 0:  # 0 or less would remove another run's publish while it is written
            raise ConfigError(f"stale_tmp_seconds must be > 0, got {self.stale_tmp_seconds}")
        if self.verbose not in (0, 1, 2):
            raise ConfigError(f"verbose must be 0, 1 or 2, got {self.verbose}")
        self.gate.validate(self.data.task)
        if self.work_dir is not None:
            check_outside(Path(self.work_dir), Path(self.repository))
        if check_paths:
            if _touches_repository():
                check_writable_dir(Path(self.repository), "repository")
                model = Path(self.repository) / self.model_name
                if model.exists() and not model.is_dir():
                    raise ConfigError(f"{model} is not a directory: the model's versions go there")
            if self.work_dir is not None:
                check_writable_dir(Path(self.work_dir), "work dir")


def _touches_repository() -> bool:
    """Only the chief of a multi-worker cluster (TF_CONFIG) writes the repository; a bad TF_CONFIG is reported
    where the strategy is made."""
    from .strategy import ClusterError, is_chief

    try:
        return is_chief(os.environ.get("TF_CONFIG"))
    except ClusterError:
        return True


def check_writable_dir(path: Path, what: str) -> None:
    """`path` is a directory this process can write, or one it can create: its nearest existing ancestor is a
    writable directory. Checked by creating (and removing) a dot-directory, which is what counts even for root
    (permission bits say yes to root, but a read-only mount or /proc still refuse)."""
    existing = path
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        if existing == path:
            raise ConfigError(f"{what} {path} is not a directory")
        raise ConfigError(f"{what} {path} cannot be created: {existing} is not a directory")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".kerve-write-check-", dir=existing))
    except OSError as exc:
        where = "is not writable" if existing == path else f"cannot be created in {existing}"
        raise ConfigError(f"{what} {path} {where}: {exc.strerror or exc}") from exc


def check_cv_folds(cv_folds: int, y: Any, task: str) -> None:
    """Once the data is loaded: every fold needs a validation example (of every class, for classification)."""
    if cv_folds < 2:
        return
    if task == "classification":
        import numpy as np

        counts = np.bincount(np.asarray(y, dtype=np.int64))
        smallest = int(counts[counts > 0].min())
        if cv_folds > smallest:
            raise ConfigError(
                f"cv_folds {cv_folds} is larger than the smallest class ({smallest} training examples): "
                f"use cv_folds <= {smallest}"
            )
    elif cv_folds > len(y):
        raise ConfigError(f"cv_folds {cv_folds} is larger than the {len(y)} training examples")


def check_outside(work_dir: Path, repo: Path) -> None:
    work, root = work_dir.resolve(), repo.resolve()
    if work == root or work.is_relative_to(root):
        raise ConfigError(f"work dir {work} must be outside the model repository {root}: pass another --work-dir")


_PATHS = {"repository", "work_dir", "path"}
_TYPES: dict[str, type] = {"int": int, "float": float, "bool": bool, "str": str}


def _coerce(section: str, name: str, value: Any, annotation: str) -> Any:
    if name in _PATHS:
        if value is None and "None" in annotation:
            return None
        if not isinstance(value, (str, os.PathLike)):
            raise ConfigError(f"{section}{name} must be a path, got {value!r}")
        return Path(value)
    if name == "image_size":
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) for v in value):
            raise ConfigError(f"{section}{name} must be a list of two integers, got {value!r}")
        return tuple(value)
    expected = _TYPES.get(annotation)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is not None and (not isinstance(value, expected) or (expected is int and isinstance(value, bool))):
        raise ConfigError(f"{section}{name} must be {annotation}, got {value!r}")
    return value


def _build(cls: type, raw: dict[str, Any], section: str) -> Any:
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ConfigError(f"unknown {section.rstrip('.') or 'top-level'} keys {unknown}: allowed {sorted(known)}")
    values = {}
    for name, value in raw.items():
        if name == "data":
            if not isinstance(value, dict):
                raise ConfigError("data must be a mapping with at least `source`")
            values[name] = _build(DataConfig, value, "data.")
        elif name == "gate":
            if not isinstance(value, dict):
                raise ConfigError("gate must be a mapping (metric, tolerance)")
            values[name] = _build(GateConfig, value, "gate.")
        else:
            values[name] = _coerce(section, name, value, str(known[name].type))
    return cls(**values)


def from_mapping(raw: dict[str, Any], overrides: dict[str, Any] | None = None, check_paths: bool = True) -> TrainConfig:
    """A validated TrainConfig from parsed YAML, with flag values (already typed) taking precedence.

    check_paths=False: do not check the repository and work dir on this machine (`TrainConfig.validate`)."""
    if not isinstance(raw, dict):
        raise ConfigError("the configuration must be a YAML mapping")
    merged = dict(raw)
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key in ("dataset", "data_path"):
            field_name = "source" if key == "dataset" else "path"
            section = merged.get("data")
            if section is not None and not isinstance(section, dict):
                raise ConfigError("data must be a mapping with at least `source`")
            merged["data"] = {**(section or {}), field_name: str(value)}
        else:
            merged[key] = str(value) if isinstance(value, Path) else value
    if "repository" not in merged:
        raise ConfigError("repository is required (the model repository root)")
    config = _build(TrainConfig, merged, "")
    config.validate(check_paths)
    return config


def load(path: str | os.PathLike[str], overrides: dict[str, Any] | None = None) -> TrainConfig:
    import yaml

    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from exc
    try:
        return from_mapping(raw if raw is not None else {}, overrides)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
