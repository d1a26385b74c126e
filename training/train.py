"""The `kerve train` pipeline: data -> search -> train the best -> evaluate -> publish version N+1."""

from __future__ import annotations

import dataclasses
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

import keras
import keras_tuner
import numpy as np
import tensorflow as tf

import kerve
from kerve import repository

from . import data as data_module
from . import evaluate, models, publish, summary, tune

DATASETS = ("digits",)
TUNERS = ("random",)
VALIDATION_FRACTION = 0.2
WARMUP_EXAMPLES = 8


@dataclass
class TrainConfig:
    repository: Path
    model_name: str = "digits"
    dataset: str = "digits"
    tuner: str = "random"
    max_trials: int = 2
    epochs: int = 5
    batch_size: int = 64
    seed: int = 0
    # Tuner checkpoints and TensorBoard logs. Never inside the repository: the server would scan them.
    # None: a fresh temporary directory, kept after the run so the logs can be inspected.
    work_dir: Path | None = None
    verbose: int = 1

    def validate(self) -> None:
        """Fail before any training when the run could not publish anyway."""
        repository.validate_model_name(self.model_name)
        if self.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}: choose from {list(DATASETS)}")
        if self.tuner not in TUNERS:
            raise ValueError(f"unknown tuner {self.tuner!r}: choose from {list(TUNERS)}")
        for name in ("max_trials", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.work_dir is not None:
            _check_outside(Path(self.work_dir), Path(self.repository))


def _check_outside(work_dir: Path, repo: Path) -> None:
    work, root = work_dir.resolve(), repo.resolve()
    if work == root or work.is_relative_to(root):
        raise ValueError(f"work dir {work} must be outside the model repository {root}: pass another --work-dir")


@dataclass
class TrainResult:
    version: int
    path: Path
    metrics: dict[str, Any]
    hyperparameters: dict[str, Any]
    trials: list[dict[str, Any]] = field(default_factory=list)
    work_dir: Path | None = None


def run_training(config: TrainConfig, out: TextIO | None = None) -> TrainResult:
    """Run the whole pipeline once and publish its model as the next version of config.model_name."""
    config.validate()
    out = out if out is not None else sys.stdout
    started = time.perf_counter()
    if config.work_dir is None:
        # Not inside the repository even when the repository itself lives under the temp root.
        _check_outside(Path(tempfile.gettempdir()) / "kerve-train-x", Path(config.repository))
        work_dir = Path(tempfile.mkdtemp(prefix="kerve-train-"))
    else:
        work_dir = Path(config.work_dir)
        work_dir.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(config.seed)

    t0 = time.perf_counter()
    dataset = data_module.load_digits_split(seed=config.seed)
    x_fit, y_fit, x_val, y_val = data_module.validation_split(
        dataset.x_train, dataset.y_train, VALIDATION_FRACTION, config.seed
    )
    data_seconds = time.perf_counter() - t0

    hypermodel = models.SeedCNN(dataset.input_shape, dataset.num_classes, dataset.input_name)
    tuner = tune.make_tuner(
        config.tuner, hypermodel, config.max_trials, config.seed, work_dir / "tuner", config.model_name
    )
    tuned = tune.search(
        tuner,
        x_fit,
        y_fit,
        x_val,
        y_val,
        epochs=config.epochs,
        batch_size=config.batch_size,
        log_dir=work_dir / "tensorboard",
        verbose=config.verbose,
    )

    # The search held out a validation split to rank trials; the published model is retrained on the
    # whole training split for as many epochs as the best trial needed.
    if config.verbose:
        print(f"Training the best trial's model on all {len(dataset.y_train)} training examples", file=out)
    t0 = time.perf_counter()
    keras.utils.set_random_seed(config.seed)
    model = hypermodel.build(tuned.best_hp)
    model.fit(
        dataset.x_train,
        dataset.y_train,
        epochs=tuned.best_epochs,
        batch_size=config.batch_size,
        callbacks=[keras.callbacks.TensorBoard(log_dir=str(work_dir / "tensorboard" / "final"))],
        verbose=config.verbose,
    )
    train_seconds = time.perf_counter() - t0

    t0 = time.perf_counter()
    metrics = evaluate.evaluate_model(model, dataset.x_test, dataset.y_test, dataset.num_classes)
    evaluate_seconds = time.perf_counter() - t0

    trials = [dataclasses.asdict(t) for t in tuned.trials]
    metadata = {
        "model_name": config.model_name,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "dataset": {
            "name": config.dataset,
            "fingerprint": data_module.fingerprint([dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test]),
            "num_train": int(len(dataset.y_train)),
            "num_test": int(len(dataset.y_test)),
            "class_names": list(dataset.class_names),
        },
        # The gate compares versions only on identical evaluation data; this says which data that was.
        "evaluation": {
            "split": "test",
            "fingerprint": data_module.fingerprint([dataset.x_test, dataset.y_test]),
        },
        "metrics": metrics,
        "hyperparameters": tuned.hyperparameters,
        "training": {
            "tuner": config.tuner,
            "objective": tune.OBJECTIVE,
            "max_trials": config.max_trials,
            "epochs": config.epochs,
            "final_epochs": tuned.best_epochs,
            "batch_size": config.batch_size,
            "seed": config.seed,
            "validation_fraction": VALIDATION_FRACTION,
            "trials": trials,
        },
        "durations": {
            "data_seconds": round(data_seconds, 3),
            "tuning_seconds": round(tuned.seconds, 3),
            "training_seconds": round(train_seconds, 3),
            "evaluation_seconds": round(evaluate_seconds, 3),
            "total_seconds_before_publish": round(time.perf_counter() - started, 3),
        },
        "versions": {
            "kerve": kerve.__version__,
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "keras_tuner": keras_tuner.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
    }
    version, path = publish.publish_model(
        config.repository, config.model_name, model, metadata, dataset.x_test[:WARMUP_EXAMPLES]
    )

    print("", file=out)
    print(summary.format_summary(trials, metrics, version, path, tune.OBJECTIVE), file=out)
    print(f"TensorBoard logs: {work_dir / 'tensorboard'}", file=out)
    return TrainResult(
        version=version,
        path=path,
        metrics=metrics,
        hyperparameters=tuned.hyperparameters,
        trials=trials,
        work_dir=work_dir,
    )
