"""Reviewed training defects that need TensorFlow: Hyperband's resumed trials, a current version of another task,
and a version published by another run between this run's gate and its publish."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
import yaml

from kerve import repository
from kerve.training import cli, config, data, gate, models, publish, tune
from kerve.training.train import run_training

pytestmark = pytest.mark.integration

WEIGHTS = np.array([1.0, -2.0, 0.5, 3.0], np.float32)


def _csv(path: Path, task: str, rows: int = 80) -> Path:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, 4)).astype(np.float32)
    y = x @ WEIGHTS if task == "regression" else (x[:, 0] > 0).astype(int)
    lines = ["a,b,c,d,label"] + [",".join(f"{v:.6f}" for v in (*r, t)) for r, t in zip(x, y, strict=True)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _config(tmp_path: Path, model: str, task: str, **extra: Any) -> config.TrainConfig:
    body = {
        "repository": str(tmp_path / "repo"),
        "model_name": model,
        "data": {"source": "csv", "path": str(_csv(tmp_path / f"{task}.csv", task)), "task": task},
        "max_trials": 1,
        "epochs": 1,
        "verbose": 0,
        "work_dir": str(tmp_path / "work"),
        **extra,
    }
    return config.from_mapping(body)


def _version(repo: Path, model: str, version: int, predict: Any, task: str) -> None:
    """A SavedModel version taking `features` [None, 4] float32, as training would publish it."""
    import tensorflow as tf

    class Model(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="features")])
        def serve(self, features: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"output_0": predict(features)}

    path = repo / model / str(version)
    module = Model()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    (path / repository.METADATA_FILE).write_text(json.dumps({"task": task, "version": version}))


def _constant_regressor(value: float) -> Any:
    import tensorflow as tf

    return lambda features: tf.fill([tf.shape(features)[0], 1], tf.constant(value, tf.float32))


def _exact_regressor(features: Any) -> Any:
    import tensorflow as tf

    return tf.linalg.matvec(features, tf.constant(WEIGHTS))[:, None]  # the csv's targets: mse ~0


def _three_class_classifier(features: Any) -> Any:
    import tensorflow as tf

    return tf.nn.softmax(features[:, :3])


# ------------------------------------------------------------------------------------------ Hyperband (#2)


def test_hyperband_best_epochs_count_the_epochs_a_resumed_trial_started_from(tmp_path: Path) -> None:
    d = data.load_digits_split(seed=0)
    x_fit, y_fit, x_val, y_val = data.validation_split(d.x_train[:300], d.y_train[:300], 0.2, 0)
    keras.utils.set_random_seed(0)
    hypermodel = models.make("mlp", d.input_shape, 10, "image", kind="image")
    tuner = tune.make_tuner("hyperband", hypermodel, 2, 0, tmp_path / "tuner", "hb", max_epochs=3)
    result = tune.search(
        tuner, x_fit, y_fit, x_val, y_val, epochs=3, batch_size=64, log_dir=tmp_path / "tb", verbose=0, patience=3
    )
    trials = tuner.oracle.trials

    def epochs_from_scratch(trial: Any) -> int:
        # best_step counts from the resumed fit's first epoch; the model had `tuner/initial_epoch` epochs before
        return trial.hyperparameters.values.get("tuner/initial_epoch", 0) + trial.best_step + 1

    resumed = [t for t in trials.values() if t.hyperparameters.values.get("tuner/initial_epoch", 0) > 0]
    assert resumed, "a factor-3 bracket over 3 epochs resumes a model at epoch 1"
    summary = {t.trial_id: t.best_epoch for t in result.trials}
    for trial in resumed:
        assert summary[trial.trial_id] == epochs_from_scratch(trial)  # the trial table (and kerve.json's)
        assert trial.hyperparameters.values["tuner/initial_epoch"] < summary[trial.trial_id] <= 3
    assert all(summary[tid] == epochs_from_scratch(trials[tid]) for tid in summary)
    assert all(tune.trial_best_epochs(trials[tid]) == summary[tid] for tid in summary)
    best = tuner.oracle.get_best_trials(1)[0]
    assert result.best_epochs == epochs_from_scratch(best)  # what the published model trains for
    with pytest.raises(ValueError, match="needs max_epochs >= 2"):
        tune.make_tuner("hyperband", hypermodel, 2, 0, tmp_path / "t1", "hb1", max_epochs=1)


# ------------------------------------------------------------------------------------------ other task (#3)


def test_a_current_classifier_is_no_baseline_for_a_regressor(tmp_path: Path) -> None:
    """`kerve train` publishes and records why; `kerve retrain` fails (exit 1) as for other inputs."""
    repo = tmp_path / "repo"
    _version(repo, "mixed", 1, _three_class_classifier, "classification")
    x, y = np.zeros((5, 4), np.float32), np.zeros(5, np.float32)
    with pytest.raises(gate.BaselineError, match=r"version 1 predicts shape \[5, 3\], a regressor's is \[n, 1\]"):
        gate.evaluate_current(repo, "mixed", "features", x, y, 1, "regression")

    out = io.StringIO()
    result = run_training(_config(tmp_path, "mixed", "regression"), out=out)
    assert result.version == 2
    meta = repository.read_metadata(repo / "mixed" / "2")
    assert meta["gate"]["reason"].startswith("current version not comparable: version 1 predicts shape [")
    assert meta["gate"]["baseline_version"] is None and meta["gate"]["enforced"] is False

    # retrain: the version in the repository is now the regressor, so a classifier is the candidate here
    (tmp_path / "retrain.yaml").write_text(
        yaml.safe_dump(
            {
                "repository": str(repo),
                "model_name": "mixed",
                "data": {"source": "csv", "path": str(tmp_path / "classification.csv")},
                "max_trials": 1,
                "epochs": 1,
                "verbose": 0,
                "work_dir": str(tmp_path / "work2"),
            }
        )
    )
    _csv(tmp_path / "classification.csv", "classification")
    parser = argparse.ArgumentParser()
    cli.add_retrain_arguments(parser)
    assert cli.retrain_main(parser.parse_args(["--config", str(tmp_path / "retrain.yaml")])) == cli.EXIT_FAILED
    assert sorted(p.name for p in (repo / "mixed").iterdir()) == ["1", "2"]


# ------------------------------------------------------------------------------------------ publish race (#1)


def _race(monkeypatch: pytest.MonkeyPatch, repo: Path, model: str, predict: Any) -> list[int]:
    """On the first publish attempt, another run publishes version 2 (after this run's gate looked at 1)."""
    real = publish.publish_model
    expected: list[int] = []

    def racing(*args: Any, **kwargs: Any) -> Any:
        expected.append(kwargs.get("expected_latest"))
        if len(expected) == 1:
            _version(repo, f".tmp-{model}", 2, predict, "regression")  # written aside, renamed in whole
            (repo / f".tmp-{model}" / "2").rename(repo / model / "2")
        return real(*args, **kwargs)

    monkeypatch.setattr(publish, "publish_model", racing)
    return expected


def test_a_version_published_during_the_gate_is_gated_against_before_publishing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kerve train (not enforced) too: the candidate lands as 3 with kerve.json naming version 2 as compared."""
    repo = tmp_path / "repo"
    _version(repo, "race", 1, _constant_regressor(1000.0), "regression")
    expected = _race(monkeypatch, repo, "race", _constant_regressor(500.0))
    out = io.StringIO()
    result = run_training(_config(tmp_path, "race", "regression"), out=out)
    assert expected == [1, 2] and result.version == 3
    assert "Version 2 was published while this run was gating: gating again against it" in out.getvalue()
    meta = repository.read_metadata(repo / "race" / "3")
    assert meta["gate"]["baseline_version"] == 2 and result.decision and result.decision.baseline_version == 2
    assert meta["gate"]["baseline"] == pytest.approx(meta["gate"]["baseline_metrics"]["mse"])
    assert meta["gate"]["baseline_metrics"]["mse"] < 500.0**2 * 1.1  # version 2's error, not version 1's (~1e6)


def test_retrain_rejects_a_candidate_worse_than_the_version_published_during_its_gate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = tmp_path / "repo"
    _version(repo, "race", 1, _constant_regressor(1000.0), "regression")  # the candidate beats this one
    expected = _race(monkeypatch, repo, "race", _exact_regressor)  # but not this one
    out = io.StringIO()
    result = run_training(_config(tmp_path, "race", "regression"), out=out, enforce_gate=True)
    assert expected == [1] and result.version is None
    assert result.decision is not None and result.decision.baseline_version == 2
    assert "Rejected by the gate: mse" in out.getvalue() and "of version 2" in out.getvalue()
    assert sorted(p.name for p in (repo / "race").iterdir()) == ["1", "2"]
