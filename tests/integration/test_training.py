"""`kerve train` end to end on digits: tune, train, evaluate, publish, and load the result like a server."""

from __future__ import annotations

import argparse
import io
import json
import tempfile
from pathlib import Path

import keras
import keras_tuner
import numpy as np
import pytest
import tensorflow as tf

from kerve import repository
from kerve.training import cli, data, tune
from kerve.training.train import TrainConfig, TrainResult, run_training

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("repo")


@pytest.fixture(scope="module")
def first_run(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[TrainResult, str]:
    out = io.StringIO()
    config = TrainConfig(repository=repo, max_trials=2, epochs=2, verbose=0, work_dir=tmp_path_factory.mktemp("work"))
    return run_training(config, out=out), out.getvalue()


def test_publishes_version_1_with_metadata(first_run: tuple[TrainResult, str], repo: Path) -> None:
    result, _ = first_run
    assert result.version == 1
    assert result.path == repo / "digits" / "1"
    assert (result.path / repository.SAVED_MODEL_FILE).is_file()

    meta = repository.read_metadata(result.path)
    assert meta["version"] == 1
    for key in ("accuracy", "precision", "recall", "f1"):
        assert 0.0 <= meta["metrics"][key] <= 1.0
        assert meta["metrics"][key] == result.metrics[key]
    assert meta["metrics"]["accuracy"] > 0.5
    assert len(meta["metrics"]["confusion_matrix"]) == 10
    regularization = {"dropout", "l1", "l2", "batch_norm", "learning_rate", "optimizer", "lr_schedule"}
    assert set(meta["hyperparameters"]) == {"filters1", "filters2"} | regularization
    assert meta["family"] == "cnn" and meta["task"] == "classification"
    assert meta["strategy"]["kind"] == "default" and meta["strategy"]["replicas"] == 1
    assert meta["gate"]["publish"] is True and meta["gate"]["baseline_version"] is None
    assert meta["durations"]["gate_seconds"] >= 0
    assert meta["hyperparameters"] == result.hyperparameters
    assert meta["dataset"]["name"] == "digits"
    d = data.load_digits_split(seed=0)
    assert meta["evaluation"]["fingerprint"] == data.fingerprint([d.x_test, d.y_test])
    assert meta["signature"]["inputs"] == {"image": {"dtype": "float32", "shape": [None, 8, 8, 1]}}
    assert meta["created_at"].endswith("+00:00")
    assert meta["versions"]["tensorflow"] == tf.__version__
    assert [t["status"] for t in meta["training"]["trials"]] == ["COMPLETED", "COMPLETED"]
    assert meta["durations"]["tuning_seconds"] > 0


def test_repository_holds_only_the_version(first_run: tuple[TrainResult, str], repo: Path) -> None:
    result, _ = first_run
    # Tuner checkpoints and TensorBoard logs go to the work dir, never into the served tree.
    assert [p.name for p in repo.iterdir()] == ["digits"]
    assert [p.name for p in (repo / "digits").iterdir()] == ["1"]
    assert result.work_dir is not None
    assert any((result.work_dir / "tensorboard").rglob("events.out.tfevents*"))


def test_saved_model_signature_serves(first_run: tuple[TrainResult, str]) -> None:
    result, _ = first_run
    serve = tf.saved_model.load(str(result.path)).signatures["serving_default"]
    _args, inputs = serve.structured_input_signature
    assert list(inputs) == ["image"]
    assert inputs["image"].shape.as_list() == [None, 8, 8, 1]
    assert inputs["image"].dtype == tf.float32

    d = data.load_digits_split(seed=0)
    outputs = serve(image=tf.constant(d.x_test))
    assert list(outputs) == repository.read_metadata(result.path)["signature"]["outputs"]
    probabilities = next(iter(outputs.values())).numpy()
    assert probabilities.shape == (len(d.y_test), 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    accuracy = float((probabilities.argmax(axis=1) == d.y_test).mean())
    assert accuracy == pytest.approx(result.metrics["accuracy"], abs=1e-6)


def test_warmup_requests_are_tf_serving_predict_logs(first_run: tuple[TrainResult, str]) -> None:
    prediction_log_pb2 = pytest.importorskip("tensorflow_serving.apis.prediction_log_pb2")
    result, _ = first_run
    path = result.path / repository.WARMUP_DIR / repository.WARMUP_FILE
    shapes = []
    for record in tf.data.TFRecordDataset(str(path)):
        log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        request = log.predict_log.request
        assert request.model_spec.name == "digits"
        assert request.model_spec.signature_name == "serving_default"
        shapes.append(tf.make_ndarray(request.inputs["image"]).shape)
    assert shapes == [(1, 8, 8, 1), (8, 8, 8, 1)]


def test_prints_summary(first_run: tuple[TrainResult, str]) -> None:
    result, printed = first_run
    assert "Tuning trials" in printed and "val_accuracy" in printed
    assert f"accuracy   {result.metrics['accuracy']:.4f}" in printed
    assert f"Published version 1 at {result.path}" in printed


class UntrainableHyperModel(keras_tuner.HyperModel):
    """Builds fine but fails inside every trial, the failure KerasTuner catches and only logs."""

    def build(self, hp: keras_tuner.HyperParameters) -> keras.Model:
        units = hp.Choice("units", [1, 2, 3, 4])
        return keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(units)])

    def fit(self, hp: keras_tuner.HyperParameters, model: keras.Model, *args: object, **kwargs: object) -> None:
        raise ValueError("this model cannot be trained")


@pytest.mark.parametrize("max_trials", [2, 3])
def test_search_where_every_trial_fails_raises(tmp_path: Path, max_trials: int) -> None:
    # 2: KerasTuner finishes "successfully" with only failed trials; 3: its own consecutive-failure limit.
    tuner = tune.make_tuner("random", UntrainableHyperModel(), max_trials, 0, tmp_path, "broken")
    x, y = np.zeros((4, 8, 8, 1), np.float32), np.zeros(4, np.int64)
    with pytest.raises(tune.TuningError, match="this model cannot be trained"):
        tune.search(tuner, x, y, x, y, epochs=1, batch_size=2, log_dir=tmp_path / "tb", verbose=0)


@pytest.mark.parametrize(
    "changes",
    [{"model_name": "../escape"}, {"epochs": 0}, {"data": "mnist"}, {"tuner": "evolution"}, {"work_dir": "INSIDE"}],
)
def test_invalid_config_fails_before_training(tmp_path: Path, changes: dict[str, object]) -> None:
    if changes.get("work_dir") == "INSIDE":
        changes = {"work_dir": tmp_path / "repo" / ".work"}
    config = TrainConfig(repository=tmp_path / "repo", verbose=0, **changes)  # type: ignore[arg-type]
    with pytest.raises((ValueError, repository.RepositoryError)):
        run_training(config)
    assert not (tmp_path / "repo").exists()


def test_default_work_dir_never_lands_in_a_repository_at_the_temp_root() -> None:
    with pytest.raises(ValueError, match="outside the model repository"):
        run_training(TrainConfig(repository=Path(tempfile.gettempdir()), verbose=0))


def test_cli_main_reports_errors_with_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(["--model-repository", str(tmp_path), "--model-name", "../x"])
    assert cli.main(args) == cli.EXIT_BAD_CONFIG == 2  # invalid configuration: nothing was attempted
    assert "invalid model name" in capsys.readouterr().err
    args = parser.parse_args(
        ["--model-repository", str(tmp_path / "r"), "--dataset=npz", f"--data-path={tmp_path}/x.npz"]
    )
    assert cli.main(args) == cli.EXIT_FAILED == 1  # the run failed
    assert "does not exist" in capsys.readouterr().err


def test_second_run_publishes_version_2(
    first_run: tuple[TrainResult, str], repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(
        [
            "--model-repository",
            str(repo),
            "--max-trials=1",
            "--epochs=1",
            "--verbose=0",
            "--work-dir",
            str(tmp_path),
        ]
    )
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "Published version 2" in printed
    assert repository.list_versions(repo, "digits") == [1, 2]
    # `kerve train` compares with the current version and records it, but does not enforce the gate.
    gate = repository.read_metadata(repo / "digits" / "2")["gate"]
    assert gate["baseline_version"] == 1 and gate["enforced"] is False and gate["publish"] is True
    assert gate["baseline"] == pytest.approx(first_run[0].metrics["accuracy"])
    assert gate["baseline_metrics"]["accuracy"] == pytest.approx(first_run[0].metrics["accuracy"])
    assert json.loads((repo / "digits" / "2" / repository.METADATA_FILE).read_text())["version"] == 2
    assert repository.read_metadata(first_run[0].path)["version"] == 1
