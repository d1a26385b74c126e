"""Hyperparameter search with KerasTuner, with the failures KerasTuner swallows turned into errors."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import keras_tuner
import numpy as np
import tensorflow as tf
from keras_tuner.engine.trial import Trial, TrialStatus

from . import crossval

OBJECTIVE = "val_accuracy"
TUNERS = ("random", "grid", "bayesian", "hyperband")


def objective_for(task: str) -> keras_tuner.Objective:
    """Classification ranks trials by validation accuracy, regression by validation MSE (`val_mse`, not
    `val_loss`, which adds the L1/L2 weight penalties and would favour unregularized trials)."""
    if task == "regression":
        return keras_tuner.Objective("val_mse", direction="min")
    return keras_tuner.Objective(OBJECTIVE, direction="max")


def make_dataset(x: np.ndarray, y: np.ndarray, batch_size: int, shuffle_seed: int | None = None) -> tf.data.Dataset:
    """An in-memory tf.data pipeline: cached, shuffled (training only), batched, prefetched."""
    ds = tf.data.Dataset.from_tensor_slices((x, y)).cache()
    if shuffle_seed is not None:
        ds = ds.shuffle(min(len(y), 10_000), seed=shuffle_seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


class TuningError(RuntimeError):
    """No trial of a search completed, so there is nothing to train or publish."""


@dataclass(frozen=True)
class TrialSummary:
    trial_id: str
    status: str
    score: float | None
    best_epoch: int | None
    hyperparameters: dict[str, Any]
    # Cross-validated trials only: the objective on each fold (score is their mean) and their std.
    fold_scores: tuple[float, ...] = ()
    score_std: float | None = None


@dataclass
class TuneResult:
    best_hp: keras_tuner.HyperParameters
    hyperparameters: dict[str, Any]
    best_epochs: int
    trials: list[TrialSummary] = field(default_factory=list)
    seconds: float = 0.0
    best_trial_id: str = ""

    @property
    def best_trial(self) -> TrialSummary | None:
        return next((t for t in self.trials if t.trial_id == self.best_trial_id), None)


def make_tuner(
    kind: str,
    hypermodel: keras_tuner.HyperModel,
    max_trials: int,
    seed: int,
    directory: Path,
    project: str,
    *,
    objective: keras_tuner.Objective | str = OBJECTIVE,
    max_epochs: int = 5,
    strategy: Any = None,
    cv_folds: int = 0,
) -> keras_tuner.Tuner:
    """random, grid (every combination of the space, in order, up to max_trials), bayesian (Gaussian process
    over the space) or hyperband (successive halving up to max_epochs; it sizes its own trial count).

    cv_folds >= 2: every trial is scored by k-fold cross-validation (not with hyperband, whose brackets resume
    one model across rounds); `search` then takes the whole training split and no validation split."""
    if cv_folds >= 2:
        bases = {"random": keras_tuner.RandomSearch, "grid": keras_tuner.GridSearch}
        bases["bayesian"] = keras_tuner.BayesianOptimization
        if kind not in bases:
            raise ValueError(f"cross-validation works with the {sorted(bases)} tuners, not {kind!r}")
        extra: dict[str, Any] = {"num_initial_points": min(2, max_trials)} if kind == "bayesian" else {}
        return crossval.cross_validated(bases[kind])(
            hypermodel, max_trials=max_trials, objective=objective, seed=seed, directory=str(directory),
            project_name=project, overwrite=True, distribution_strategy=strategy, cv_folds=cv_folds, cv_seed=seed,
            **extra,
        )  # fmt: skip
    common: dict[str, Any] = {
        "objective": objective,
        "seed": seed,
        "directory": str(directory),
        "project_name": project,
        "overwrite": True,
        "distribution_strategy": strategy,
    }
    if kind == "random":
        return keras_tuner.RandomSearch(hypermodel, max_trials=max_trials, **common)
    if kind == "grid":
        return keras_tuner.GridSearch(hypermodel, max_trials=max_trials, **common)
    if kind == "bayesian":
        return keras_tuner.BayesianOptimization(
            hypermodel, max_trials=max_trials, num_initial_points=min(2, max_trials), **common
        )
    if kind == "hyperband":
        if max_epochs < 2:  # TrainConfig.validate refuses it first (exit 2); never train more than asked
            raise ValueError(f"the hyperband tuner needs max_epochs >= 2, got {max_epochs}")
        return keras_tuner.Hyperband(hypermodel, max_epochs=max_epochs, factor=3, hyperband_iterations=1, **common)
    raise ValueError(f"unknown tuner {kind!r}: choose from {list(TUNERS)}")


def search(
    tuner: keras_tuner.Tuner,
    x_fit: np.ndarray,
    y_fit: np.ndarray,
    x_val: np.ndarray | None,
    y_val: np.ndarray | None,
    *,
    epochs: int,
    batch_size: int,
    log_dir: Path,
    verbose: int = 1,
    patience: int = 3,
    seed: int = 0,
) -> TuneResult:
    """Run the search and return the best hyperparameters and how many epochs they needed.

    KerasTuner catches every exception raised inside a trial, records it on the trial and moves on, so a
    broken model or pipeline looks like an empty but successful search. Each trial's status is checked
    here, and a search without a single completed, scored trial raises TuningError carrying the
    traceback of the last failure.

    A cross-validated tuner (`make_tuner(cv_folds=k)`) splits (x_fit, y_fit) into its folds itself; x_val and
    y_val are then ignored (pass None).
    """
    started = time.perf_counter()
    objective = tuner.oracle.objective
    callbacks = [
        keras.callbacks.EarlyStopping(monitor=objective.name, mode=objective.direction, patience=patience),
        # KerasTuner gives each trial its own subdirectory of log_dir.
        keras.callbacks.TensorBoard(log_dir=str(log_dir)),
    ]
    try:
        if isinstance(tuner, crossval.CrossValidation):
            tuner.search(x_fit, y_fit, batch_size=batch_size, epochs=epochs, callbacks=callbacks, verbose=verbose,
                         seed=seed)  # fmt: skip
        else:
            tuner.search(
                make_dataset(x_fit, y_fit, batch_size, shuffle_seed=seed),
                validation_data=make_dataset(x_val, y_val, batch_size),
                epochs=epochs,
                callbacks=callbacks,
                verbose=verbose,
            )
    except RuntimeError as exc:
        # Raised by the oracle after max_consecutive_failed_trials failures, with the last traceback.
        raise TuningError(f"KerasTuner stopped the search: {exc}") from exc
    trials = summarize_trials(tuner.oracle)
    completed = [t for t in trials if t.status == TrialStatus.COMPLETED and t.score is not None]
    if not completed:
        messages = [f"trial {t.trial_id} {t.status}:\n{tuner.oracle.trials[t.trial_id].message}" for t in trials]
        detail = "\n".join(messages) if messages else "the tuner ran no trials"
        raise TuningError(f"no tuning trial completed out of {len(trials)}; last failure:\n{detail[-4000:]}")

    best_trial = tuner.oracle.get_best_trials(1)[0]
    best_epochs = trial_best_epochs(best_trial)
    return TuneResult(
        best_hp=best_trial.hyperparameters,
        hyperparameters=dict(best_trial.hyperparameters.values),
        best_epochs=best_epochs if best_epochs is not None else epochs,
        trials=trials,
        seconds=time.perf_counter() - started,
        best_trial_id=best_trial.trial_id,
    )


def summarize_trials(oracle: keras_tuner.Oracle) -> list[TrialSummary]:
    summaries = []
    for trial_id, trial in sorted(oracle.trials.items(), key=lambda item: _trial_order(item[0])):
        cross_validated = trial.metrics.exists(crossval.BEST_EPOCH)
        summaries.append(
            TrialSummary(
                trial_id=trial_id,
                status=str(trial.status),
                score=None if trial.score is None else float(trial.score),
                best_epoch=trial_best_epochs(trial),
                hyperparameters=dict(trial.hyperparameters.values),
                fold_scores=tuple(crossval.fold_scores(trial.metrics)),
                score_std=float(trial.metrics.get_last_value(crossval.STD)) if cross_validated else None,
            )
        )
    return summaries


def trial_best_epochs(trial: Trial) -> int | None:
    """How many epochs from scratch the trial's model had trained at its best epoch; None when it never scored.

    `best_step` counts from where the trial's own fit started: a Hyperband trial resumes a model of the
    previous round at `tuner/initial_epoch` (its fit runs epochs k, k+1, ... but reports steps 0, 1, ...), so
    that many epochs come first. Cross-validated trials record the mean of the folds' best epochs instead."""
    if trial.metrics.exists(crossval.BEST_EPOCH):
        return max(1, round(trial.metrics.get_last_value(crossval.BEST_EPOCH)))
    if trial.best_step is None:
        return None
    return int(trial.hyperparameters.values.get("tuner/initial_epoch", 0)) + int(trial.best_step) + 1


def _trial_order(trial_id: str) -> tuple[int, str]:
    """Numeric trial ids ("0", "1", ..., "10") in creation order, not string order."""
    return (int(trial_id), "") if trial_id.isdigit() else (-1, trial_id)
