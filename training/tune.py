"""Hyperparameter search with KerasTuner, with the failures KerasTuner swallows turned into errors."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import keras_tuner
import numpy as np
from keras_tuner.engine.trial import TrialStatus

OBJECTIVE = "val_accuracy"


class TuningError(RuntimeError):
    """No trial of a search completed, so there is nothing to train or publish."""


@dataclass(frozen=True)
class TrialSummary:
    trial_id: str
    status: str
    score: float | None
    best_epoch: int | None
    hyperparameters: dict[str, Any]


@dataclass
class TuneResult:
    best_hp: keras_tuner.HyperParameters
    hyperparameters: dict[str, Any]
    best_epochs: int
    trials: list[TrialSummary] = field(default_factory=list)
    seconds: float = 0.0


def make_tuner(
    kind: str, hypermodel: keras_tuner.HyperModel, max_trials: int, seed: int, directory: Path, project: str
) -> keras_tuner.Tuner:
    if kind != "random":
        raise ValueError(f"unknown tuner {kind!r}: choose from ['random']")
    return keras_tuner.RandomSearch(
        hypermodel,
        objective=OBJECTIVE,
        max_trials=max_trials,
        seed=seed,
        directory=str(directory),
        project_name=project,
        overwrite=True,
    )


def search(
    tuner: keras_tuner.Tuner,
    x_fit: np.ndarray,
    y_fit: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    log_dir: Path,
    verbose: int = 1,
) -> TuneResult:
    """Run the search and return the best hyperparameters and how many epochs they needed.

    KerasTuner catches every exception raised inside a trial, records it on the trial and moves on, so a
    broken model or pipeline looks like an empty but successful search. Each trial's status is checked
    here, and a search without a single completed, scored trial raises TuningError carrying the
    traceback of the last failure.
    """
    started = time.perf_counter()
    callbacks = [
        keras.callbacks.EarlyStopping(monitor=OBJECTIVE, mode="max", patience=3),
        # KerasTuner gives each trial its own subdirectory of log_dir.
        keras.callbacks.TensorBoard(log_dir=str(log_dir)),
    ]
    try:
        tuner.search(
            x_fit,
            y_fit,
            validation_data=(x_val, y_val),
            epochs=epochs,
            batch_size=batch_size,
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
    best_epoch = best_trial.best_step if best_trial.best_step is not None else epochs - 1
    return TuneResult(
        best_hp=best_trial.hyperparameters,
        hyperparameters=dict(best_trial.hyperparameters.values),
        best_epochs=int(best_epoch) + 1,
        trials=trials,
        seconds=time.perf_counter() - started,
    )


def summarize_trials(oracle: keras_tuner.Oracle) -> list[TrialSummary]:
    summaries = []
    for trial_id, trial in sorted(oracle.trials.items(), key=lambda item: _trial_order(item[0])):
        summaries.append(
            TrialSummary(
                trial_id=trial_id,
                status=str(trial.status),
                score=None if trial.score is None else float(trial.score),
                best_epoch=None if trial.best_step is None else int(trial.best_step) + 1,
                hyperparameters=dict(trial.hyperparameters.values),
            )
        )
    return summaries


def _trial_order(trial_id: str) -> tuple[int, str]:
    """Numeric trial ids ("0", "1", ..., "10") in creation order, not string order."""
    return (int(trial_id), "") if trial_id.isdigit() else (-1, trial_id)
