"""The `kerve train` pipeline: data -> search -> train the best -> evaluate -> publish version N+1."""

from __future__ import annotations

import dataclasses
import math
import os
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
from . import evaluate, models, multiworker, publish, summary, tune
from . import gate as gate_module
from . import strategy as strategy_module
from .config import ConfigError, TrainConfig, check_cv_folds, check_outside

VALIDATION_FRACTION = 0.2
WARMUP_EXAMPLES = 8
PUBLISH_ATTEMPTS = 5  # gate + publish rounds when other runs keep publishing versions in between

__all__ = ["ConfigError", "TrainConfig", "TrainResult", "run_training"]


@dataclass
class TrainResult:
    version: int | None  # None: rejected by the gate, nothing published
    path: Path | None
    metrics: dict[str, Any]
    hyperparameters: dict[str, Any]
    trials: list[dict[str, Any]] = field(default_factory=list)
    work_dir: Path | None = None
    decision: gate_module.Decision | None = None
    strategy: dict[str, Any] = field(default_factory=dict)
    chief: bool = True  # False: a non-chief worker of a multi-worker cluster, which never publishes

    @property
    def published(self) -> bool:
        return self.version is not None


def run_training(config: TrainConfig, out: TextIO | None = None, enforce_gate: bool = False) -> TrainResult:
    """Run the whole pipeline once; publish the model as the next version of config.model_name unless the
    gate rejects it (only when `enforce_gate`: `kerve retrain`). `kerve train` records the comparison with the
    current version in kerve.json but publishes regardless."""
    config.validate()
    out = out if out is not None else sys.stdout
    started = time.perf_counter()
    if config.work_dir is None:
        # Not inside the repository even when the repository itself lives under the temp root.
        check_outside(Path(tempfile.gettempdir()) / "kerve-train-x", Path(config.repository))
    # Before anything else touches TensorFlow: logical CPU devices must be configured first.
    strategy, strategy_info = strategy_module.create(config.strategy, config.cpu_devices)
    if config.work_dir is None:
        work_dir = Path(tempfile.mkdtemp(prefix="kerve-train-"))
    else:
        work_dir = Path(config.work_dir)
        work_dir.mkdir(parents=True, exist_ok=True)
    # Every worker of a multi-worker cluster trains; only the chief touches the repository.
    chief = strategy_info.get("chief", True)
    if chief:
        removed = repository.clean_stale_tmp(config.repository, config.model_name, config.stale_tmp_seconds)
        for path in removed:
            print(f"Removed an unfinished publish left behind by a dead process: {path}", file=out)
    # One line even with verbose 0: which strategy ran belongs in every CronJob log.
    task = f", {strategy_info['task']}{' (chief)' if chief else ''}" if "task" in strategy_info else ""
    print(f"Strategy: {strategy_info['name']} ({strategy_info['reason']}), "
          f"{strategy_info['replicas']} replica(s){task}", file=out)  # fmt: skip
    keras.utils.set_random_seed(config.seed)

    t0 = time.perf_counter()
    dataset = data_module.load(config.data, seed=config.seed)
    check_cv_folds(config.cv_folds, dataset.y_train, dataset.task)
    x_val: np.ndarray | None
    y_val: np.ndarray | None
    if config.cv_folds:
        # Cross-validation: the tuner splits the whole training split into its folds itself.
        x_fit, y_fit, x_val, y_val = dataset.x_train, dataset.y_train, None, None
    else:
        x_fit, y_fit, x_val, y_val = data_module.validation_split(
            dataset.x_train, dataset.y_train, VALIDATION_FRACTION, config.seed
        )
    data_seconds = time.perf_counter() - t0

    task = dataset.task
    family = models.default_family(dataset.kind) if config.family == "auto" else config.family
    hypermodel = models.make(
        family, dataset.input_shape, dataset.num_classes, dataset.input_name, kind=dataset.kind, task=task,
        decay_steps=math.ceil(len(y_fit) / config.batch_size) * config.epochs, augment=config.augment,
        vocab_size=len(dataset.vocabulary), seed=config.seed,
    )  # fmt: skip
    objective = tune.objective_for(task)
    # Each run's TensorBoard logs in their own directory, so runs sharing a work_dir never mix their curves.
    tensorboard_dir = work_dir / "tensorboard" / tensorboard_run_id()
    print(f"TensorBoard logs: {tensorboard_dir}", file=out)
    tuner = tune.make_tuner(
        config.tuner, hypermodel, config.max_trials, config.seed, work_dir / "tuner", config.model_name,
        objective=objective, max_epochs=config.epochs, strategy=strategy, cv_folds=config.cv_folds,
    )  # fmt: skip
    tuned = tune.search(
        tuner,
        x_fit,
        y_fit,
        x_val,
        y_val,
        epochs=config.epochs,
        batch_size=config.batch_size,
        log_dir=tensorboard_dir,
        verbose=config.verbose,
        patience=config.early_stopping_patience,
        seed=config.seed,
    )

    # The search held out a validation split to rank trials; the published model is retrained on the
    # whole training split for as many epochs as the best trial needed.
    if config.verbose:
        print(f"Training the best trial's model on all {len(dataset.y_train)} training examples", file=out)
    t0 = time.perf_counter()
    keras.utils.set_random_seed(config.seed)
    # The cosine schedule sized for the whole training split (the search sized it for the tuning split or a
    # fold): as many steps per epoch as this fit runs, over the epochs the trials' schedules spanned.
    hypermodel.size_schedule(len(dataset.y_train), config.batch_size, config.epochs)
    with strategy.scope():
        model = hypermodel.build(tuned.best_hp)
    hypermodel.fit(
        tuned.best_hp,
        model,
        tune.make_dataset(dataset.x_train, dataset.y_train, config.batch_size, shuffle_seed=config.seed),
        epochs=tuned.best_epochs,
        callbacks=[keras.callbacks.TensorBoard(log_dir=str(tensorboard_dir / "final"))],
        verbose=config.verbose,
    )
    train_seconds = time.perf_counter() - t0

    t0 = time.perf_counter()
    metrics = evaluate.evaluate_model(
        multiworker.Predictor(model), dataset.x_test, dataset.y_test, dataset.num_classes,
        batch_size=config.batch_size, task=task,
    )  # fmt: skip
    evaluate_seconds = time.perf_counter() - t0
    if not chief:
        print(f"{strategy_info['task']} trained its share; the chief gates and publishes", file=out)
        return TrainResult(
            version=None, path=None, metrics=metrics, hyperparameters=tuned.hyperparameters,
            trials=[dataclasses.asdict(t) for t in tuned.trials], work_dir=work_dir, strategy=strategy_info,
            chief=False,
        )  # fmt: skip

    # The gate: the version in the repository now, scored like the server would run it, on the same data.
    t0 = time.perf_counter()
    decision, current, compared = _gate(config, dataset, metrics, enforce_gate)
    gate_seconds = time.perf_counter() - t0

    trials = [dataclasses.asdict(t) for t in tuned.trials]
    best = tuned.best_trial
    cross_validation = (
        {
            "folds": config.cv_folds,
            "stratified": task == "classification",
            "best_trial": best.trial_id,
            "fold_scores": list(best.fold_scores),
            "mean": best.score,
            "std": best.score_std,
        }
        if config.cv_folds and best is not None
        else None
    )
    lower_is_better = objective.direction == "min"

    def rejected(decision: gate_module.Decision) -> TrainResult:
        print("", file=out)
        print(summary.format_summary(trials, metrics, None, None, objective.name, decision.reason, lower_is_better),
              file=out)  # fmt: skip
        print(f"Rejected by the gate: {decision.reason}", file=out)
        return TrainResult(
            version=None, path=None, metrics=metrics, hyperparameters=tuned.hyperparameters, trials=trials,
            work_dir=work_dir, decision=decision, strategy=strategy_info,
        )  # fmt: skip

    if not decision.publish:
        return rejected(decision)

    metadata = {
        "model_name": config.model_name,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "task": task,
        "family": family,
        "dataset": {
            "name": dataset.name,
            "source": config.data.source,
            "kind": dataset.kind,
            "fingerprint": data_module.fingerprint([dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test]),
            "num_train": int(len(dataset.y_train)),
            "num_test": int(len(dataset.y_test)),
            "class_names": list(dataset.class_names),
            **({"vocabulary": list(dataset.vocabulary)} if dataset.vocabulary else {}),
            **dataset.details,
        },
        # The gate compares versions only on identical evaluation data; this says which data that was.
        "evaluation": {
            "split": "test",
            "fingerprint": data_module.fingerprint([dataset.x_test, dataset.y_test]),
        },
        # How the examples were scaled before training (images: pixel values * scale, at image_size): clients
        # must send inputs preprocessed the same way; the exported model takes them as they are.
        "preprocessing": dataset.preprocessing or None,
        "metrics": metrics,
        "gate": {**decision.to_json(), "baseline_metrics": current[1] if current else None},
        "hyperparameters": tuned.hyperparameters,
        "strategy": strategy_info,
        "training": {
            "tuner": config.tuner,
            "objective": objective.name,
            "max_trials": config.max_trials,
            "epochs": config.epochs,
            "final_epochs": tuned.best_epochs,
            "batch_size": config.batch_size,
            "early_stopping_patience": config.early_stopping_patience,
            "augment": config.augment,
            "seed": config.seed,
            "validation_fraction": None if config.cv_folds else VALIDATION_FRACTION,
            "cross_validation": cross_validation,
            "tensorboard_dir": str(tensorboard_dir),
            "trials": trials,
        },
        "durations": {
            "data_seconds": round(data_seconds, 3),
            "tuning_seconds": round(tuned.seconds, 3),
            "training_seconds": round(train_seconds, 3),
            "evaluation_seconds": round(evaluate_seconds, 3),
            "gate_seconds": round(gate_seconds, 3),
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
    # The publish happens only while the version the gate compared with is still the latest: another run may
    # have published one meanwhile, and this candidate must not land above a version it was never compared with.
    # It is gated again against that one (for `kerve train` too, so kerve.json records the comparison truly).
    for attempt in range(1, PUBLISH_ATTEMPTS + 1):
        try:
            version, path = publish.publish_model(
                config.repository, config.model_name, model, metadata, dataset.x_test[:WARMUP_EXAMPLES],
                expected_latest=compared,
            )  # fmt: skip
            break
        except repository.LatestChangedError as exc:
            if attempt == PUBLISH_ATTEMPTS:
                raise repository.RepositoryError(
                    f"{exc}; gave up after {attempt} attempts: other runs keep publishing {config.model_name}"
                ) from exc
            print(f"Version {exc.latest} was published while this run was gating: gating again against it", file=out)
            t0 = time.perf_counter()
            decision, current, compared = _gate(config, dataset, metrics, enforce_gate)
            gate_seconds += time.perf_counter() - t0
            if not decision.publish:
                return rejected(decision)
            metadata["gate"] = {**decision.to_json(), "baseline_metrics": current[1] if current else None}
            metadata["durations"]["gate_seconds"] = round(gate_seconds, 3)
            metadata["durations"]["total_seconds_before_publish"] = round(time.perf_counter() - started, 3)

    print("", file=out)
    print(summary.format_summary(trials, metrics, version, path, objective.name, decision.reason, lower_is_better),
          file=out)  # fmt: skip
    print(f"TensorBoard logs: {tensorboard_dir}", file=out)
    return TrainResult(
        version=version,
        path=path,
        metrics=metrics,
        hyperparameters=tuned.hyperparameters,
        trials=trials,
        work_dir=work_dir,
        decision=decision,
        strategy=strategy_info,
    )


def tensorboard_run_id() -> str:
    """A run's TensorBoard subdirectory: its UTC start time (to the microsecond) and the process id."""
    return f"{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S.%fZ')}-{os.getpid()}"


def _gate(
    config: TrainConfig, dataset: data_module.Dataset, metrics: dict[str, Any], enforce_gate: bool
) -> tuple[gate_module.Decision, tuple[int, dict[str, Any]] | None, int | None]:
    """(decision, (version, metrics) of the current version or None, the latest version the gate looked at).

    A current version that cannot be compared (other inputs or outputs) fails `kerve retrain` (BaselineError);
    `kerve train` publishes regardless and records why in the decision's reason."""
    try:
        current = gate_module.evaluate_current(
            config.repository, config.model_name, dataset.input_name, dataset.x_test, dataset.y_test,
            dataset.num_classes, dataset.task, dataset.vocabulary, dataset.texts_test,
        )  # fmt: skip
    except gate_module.BaselineError as exc:
        if enforce_gate:
            raise
        decision = gate_module.decide(metrics, None, config.gate, None, enforced=False)
        return dataclasses.replace(decision, reason=f"current version not comparable: {exc}"), None, exc.version
    decision = gate_module.decide(
        metrics, current[1] if current else None, config.gate, current[0] if current else None, enforce_gate
    )
    return decision, current, current[0] if current else None
