"""k-fold cross-validated tuning trials, on tiny data made here (k=3, one trial, one epoch)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import ClassVar

import keras
import numpy as np
import pytest

from kerve import repository
from kerve.cli import main as kerve_main
from kerve.training import config, crossval, models, tune
from kerve.training.train import run_training

pytestmark = pytest.mark.integration


class Recorder(keras.callbacks.Callback):
    """Records the objective of every epoch of every fit; the tuner deep-copies callbacks, the class list stays."""

    seen: ClassVar[list[float]] = []

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        Recorder.seen.append(float((logs or {})["val_accuracy"]))


def test_a_trial_scores_the_mean_of_its_stratified_folds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    x = rng.random((30, 4), dtype=np.float32)
    y = (np.arange(30) % 3).astype(np.int64)
    hypermodel = models.make("mlp", (4,), 3, "features", kind="tabular")
    tuner = tune.make_tuner("random", hypermodel, 1, 0, tmp_path / "t", "cv", cv_folds=3)
    assert isinstance(tuner, crossval.CrossValidation)
    Recorder.seen.clear()
    real_search = tuner.search
    monkeypatch.setattr(
        tuner, "search", lambda *a, **k: real_search(*a, **{**k, "callbacks": [*k["callbacks"], Recorder()]})
    )
    result = tune.search(tuner, x, y, None, None, epochs=1, batch_size=8, log_dir=tmp_path / "tb", verbose=0)

    (trial,) = result.trials
    assert trial.status == "COMPLETED" and len(trial.fold_scores) == 3
    assert list(trial.fold_scores) == pytest.approx(Recorder.seen)  # one epoch per fold: its score is that epoch
    assert trial.score == pytest.approx(np.mean(Recorder.seen))
    assert trial.score_std == pytest.approx(np.std(Recorder.seen))
    assert tuner.oracle.trials[trial.trial_id].score == pytest.approx(np.mean(trial.fold_scores))
    assert result.best_epochs == 1 and result.best_trial is trial
    # every fold validates on a third of the data with every class in it
    for fit_idx, val_idx in crossval.fold_indices(y, 3, 0):
        assert len(val_idx) == 10 and sorted(set(y[val_idx].tolist())) == [0, 1, 2]
        assert not set(fit_idx) & set(val_idx)
    assert len({p.parent for p in (tmp_path / "tb").rglob("events.out.tfevents*")}) >= 3  # one log dir per fold


def write_npz(path: Path, task: str, n: int = 36) -> Path:
    rng = np.random.default_rng(1)
    x = rng.random((n, 3), dtype=np.float32)
    y = (np.arange(n) % 2).astype(np.int64) if task == "classification" else (2 * x[:, 0] - x[:, 1])
    np.savez(path, x=x, y=y)
    return path


def test_regression_end_to_end_records_the_fold_scores(tmp_path: Path) -> None:
    cfg = config.from_mapping(
        {
            "repository": str(tmp_path / "repo"), "model_name": "reg", "max_trials": 1, "epochs": 1,
            "batch_size": 8, "verbose": 0, "work_dir": str(tmp_path / "work"), "cv_folds": 3,
            "data": {"source": "npz", "path": str(write_npz(tmp_path / "r.npz", "regression")), "task": "regression"},
            "gate": {"metric": "mse"},
        }
    )  # fmt: skip
    out = io.StringIO()
    result = run_training(cfg, out=out)
    meta = repository.read_metadata(result.path)
    cv = meta["training"]["cross_validation"]
    assert cv["folds"] == 3 and not cv["stratified"] and len(cv["fold_scores"]) == 3
    assert cv["mean"] == pytest.approx(np.mean(cv["fold_scores"])) and cv["std"] == pytest.approx(
        np.std(cv["fold_scores"])
    )
    assert meta["training"]["objective"] == "val_mse" and meta["training"]["validation_fraction"] is None
    assert meta["training"]["trials"][0]["fold_scores"] == cv["fold_scores"]
    assert "val_mse (cv mean ± std)" in out.getvalue()


def test_classification_cli_flag_and_too_many_folds(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = write_npz(tmp_path / "c.npz", "classification")
    repo = tmp_path / "repo"
    common = ["train", f"--model-repository={repo}", "--model-name=c", "--dataset=npz", f"--data-path={data}",
              "--max-trials=1", "--epochs=1", "--batch-size=8", "--verbose=0", f"--work-dir={tmp_path}/w"]  # fmt: skip
    # 36 examples, 20% test: 14 or 15 training examples per class
    assert kerve_main([*common, "--cv-folds=20"]) == 2
    assert "larger than the smallest class" in capsys.readouterr().err
    assert not (repo / "c" / "1").exists()

    assert kerve_main([*common, "--cv-folds=3"]) == 0
    cv = repository.read_metadata(repo / "c" / "1")["training"]["cross_validation"]
    assert cv["folds"] == 3 and cv["stratified"] and len(cv["fold_scores"]) == 3
    assert all(0.0 <= s <= 1.0 for s in cv["fold_scores"]) and cv["mean"] == pytest.approx(np.mean(cv["fold_scores"]))
    assert "val_accuracy (cv mean ± std)" in capsys.readouterr().out
