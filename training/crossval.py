"""k-fold cross-validation of tuning trials, for datasets too small for a single validation split to rank
trials reliably.

`cross_validated(base)` subclasses a KerasTuner tuner and overrides `run_trial`, the documented extension
point: each trial builds and fits a fresh model on every fold of the training split and returns a metrics
dict whose objective is the mean of the per-fold best objective values. The per-fold values, their standard
deviation and the mean best epoch ride along in the same dict, so they are recorded on the trial's metrics.
"""

from __future__ import annotations

from typing import Any

import keras_tuner
import numpy as np

FOLD_PREFIX = "cv_fold_"
STD = "cv_std"
BEST_EPOCH = "cv_best_epoch"


def fold_indices(y: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(fit indices, validation indices) per fold: stratified for integer class labels, plain for targets."""
    from sklearn.model_selection import KFold, StratifiedKFold

    if y.dtype.kind in "iu":
        splitter: Any = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    else:
        splitter = KFold(n_splits=folds, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(y)), y))


def fold_scores(metrics: keras_tuner.engine.metrics_tracking.MetricsTracker) -> list[float]:
    """The per-fold objective values a cross-validated trial recorded, in fold order ([] otherwise)."""
    scores = []
    while metrics.exists(f"{FOLD_PREFIX}{len(scores) + 1}"):
        scores.append(float(metrics.get_last_value(f"{FOLD_PREFIX}{len(scores) + 1}")))
    return scores


def best_epoch(values: Any, direction: str) -> tuple[int, float]:
    """(0-based index, value) of the best epoch of a fold's history, skipping NaN epochs (a diverged epoch must
    not win); (last index, NaN) only when every epoch is NaN."""
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0 or np.isnan(array).all():
        return max(0, array.size - 1), float("nan")
    best = int(np.nanargmin(array) if direction == "min" else np.nanargmax(array))
    return best, float(array[best])


class CrossValidation:
    """Mixin for a `keras_tuner.Tuner` subclass; `search(x, y, batch_size=, epochs=, callbacks=, verbose=,
    seed=)` takes the whole training split as numpy arrays instead of datasets."""

    def __init__(self, *args: Any, cv_folds: int, cv_seed: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cv_folds = cv_folds
        self.cv_seed = cv_seed

    def run_trial(  # type: ignore[override]
        self,
        trial: keras_tuner.engine.trial.Trial,
        x: np.ndarray,
        y: np.ndarray,
        *,
        batch_size: int,
        epochs: int,
        callbacks: list[Any] | None = None,
        verbose: int = 1,
        seed: int = 0,
    ) -> dict[str, float]:
        from .tune import make_dataset

        hp = trial.hyperparameters
        objective = self.oracle.objective  # type: ignore[attr-defined]
        scores, best_epochs = [], []
        for fold, (fit_idx, val_idx) in enumerate(fold_indices(y, self.cv_folds, self.cv_seed)):
            # Fresh callbacks per fold (early stopping state), TensorBoard logs under <trial>/execution<fold>.
            # The schedule (cosine decay) sized for this fold's examples, not for the whole training split.
            if hasattr(self.hypermodel, "size_schedule"):  # type: ignore[attr-defined]
                self.hypermodel.size_schedule(len(fit_idx), batch_size, epochs)  # type: ignore[attr-defined]
            fold_callbacks = self._deepcopy_callbacks(list(callbacks or []))  # type: ignore[attr-defined]
            self._configure_tensorboard_dir(fold_callbacks, trial, fold)  # type: ignore[attr-defined]
            strategy = self.distribution_strategy  # type: ignore[attr-defined]
            if strategy is not None:
                with strategy.scope():
                    model = self.hypermodel.build(hp)  # type: ignore[attr-defined]
            else:
                model = self.hypermodel.build(hp)  # type: ignore[attr-defined]
            history = self.hypermodel.fit(  # type: ignore[attr-defined]
                hp,
                model,
                make_dataset(x[fit_idx], y[fit_idx], batch_size, shuffle_seed=seed + fold),
                validation_data=make_dataset(x[val_idx], y[val_idx], batch_size),
                epochs=epochs,
                callbacks=fold_callbacks,
                verbose=verbose,
            )
            best, score = best_epoch(history.history[objective.name], objective.direction)
            scores.append(score)
            best_epochs.append(best + 1)
        results = {objective.name: float(np.mean(scores)), STD: float(np.std(scores))}
        results[BEST_EPOCH] = float(np.mean(best_epochs))
        results.update({f"{FOLD_PREFIX}{i}": score for i, score in enumerate(scores, start=1)})
        return results


def cross_validated(base: type[keras_tuner.Tuner]) -> type[keras_tuner.Tuner]:
    """`base` (RandomSearch, GridSearch, BayesianOptimization) with cross-validated trials."""
    return type(f"CrossValidated{base.__name__}", (CrossValidation, base), {})
