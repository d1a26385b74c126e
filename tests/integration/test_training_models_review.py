"""Reviewed defects of the model families and the training run: the regression objective, NaN epochs in
cross-validation, mlp on text, TensorFlow errors at the CLI, the cosine schedule's length, seeded augmentation,
per-run TensorBoard directories and the image preprocessing recorded in kerve.json."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import keras
import keras_tuner
import numpy as np
import pytest
import tensorflow as tf

from kerve.training import cli, config, crossval, data, models, tune
from kerve.training import train as train_module
from kerve.training.config import ConfigError
from kerve.training.train import run_training

pytestmark = pytest.mark.integration


def _csv(path: Path, rows: int = 80) -> Path:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, 4)).astype(np.float32)
    y = x @ np.array([1.0, -2.0, 0.5, 3.0], np.float32)
    lines = ["a,b,c,d,label"] + [",".join(f"{v:.6f}" for v in (*r, t)) for r, t in zip(x, y, strict=True)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_regression_trials_are_ranked_by_val_mse_not_val_loss_with_penalties() -> None:
    objective = tune.objective_for("regression")
    assert (objective.name, objective.direction) == ("val_mse", "min")
    assert tune.objective_for("classification").name == "val_accuracy"
    keras.utils.set_random_seed(0)
    rng = np.random.RandomState(0)
    x = rng.rand(32, 5).astype("float32")
    y = x.sum(1).astype("float32")
    hm = models.make("mlp", (5,), 1, "features", kind="tabular", task="regression")
    hp = keras_tuner.HyperParameters()
    hp.Fixed("l1", 1e-4)
    hp.Fixed("l2", 1e-3)
    hp.Fixed("units", 128)
    hp.Fixed("layers", 3)
    model = hm.build(hp)
    history = model.fit(x, y, validation_data=(x, y), epochs=1, verbose=0)
    mse = float(((model.predict(x, verbose=0).reshape(-1) - y) ** 2).mean())
    assert history.history["val_mse"][-1] == pytest.approx(mse, rel=1e-3)
    assert history.history["val_loss"][-1] > history.history["val_mse"][-1]  # val_loss carries the penalties


def test_cross_validation_best_epoch_skips_nan_epochs() -> None:
    nan = float("nan")
    assert crossval.best_epoch([nan, 0.5, 0.3], "min") == (2, pytest.approx(0.3))
    assert crossval.best_epoch([nan, 0.9, 0.1], "max") == (1, pytest.approx(0.9))
    index, value = crossval.best_epoch([nan, nan], "min")
    assert index == 1 and math.isnan(value)


def _text_folder(root: Path) -> Path:
    for label, words in (("pos", "good great fine"), ("neg", "bad awful poor")):
        (root / label).mkdir(parents=True)
        for i in range(4):
            (root / label / f"{i}.txt").write_text(f"{words} {i}")
    return root


def test_mlp_on_text_is_invalid_configuration_before_training(tmp_path: Path, monkeypatch: Any) -> None:
    with pytest.raises(ConfigError, match="mlp"):
        models.check_family("mlp", "text", "classification")
    body = {
        "repository": str(tmp_path / "repo"),
        "work_dir": str(tmp_path / "work"),
        "model_name": "m",
        "family": "mlp",
        "max_trials": 1,
        "epochs": 1,
        "batch_size": 4,
        "verbose": 0,
        "data": {"source": "text_folder", "path": str(_text_folder(tmp_path / "txt")), "sequence_length": 4},
    }
    (tmp_path / "train.yaml").write_text(json.dumps(body))
    fits: list[object] = []
    monkeypatch.setattr(tune, "search", lambda *a, **k: fits.append(a))
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(["--config", str(tmp_path / "train.yaml")])
    assert cli.main(args) == cli.EXIT_BAD_CONFIG
    assert fits == []  # refused before any search
    assert not (tmp_path / "repo" / "m").exists()


def test_tensorflow_op_error_is_a_failed_run(tmp_path: Path, monkeypatch: Any, capsys: Any) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise tf.errors.InvalidArgumentError(None, None, "cannot compute MatMul as input #0 was int64")

    monkeypatch.setattr(train_module, "run_training", boom)
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(["--model-repository", str(tmp_path / "repo"), "--work-dir", str(tmp_path / "w")])
    assert cli.main(args) == cli.EXIT_FAILED
    err = capsys.readouterr().err
    assert "InvalidArgumentError" in err and "int64" in err and "Traceback" not in err


def _record_decay_steps(monkeypatch: Any) -> list[int]:
    seen: list[int] = []
    build = models.MLP.build

    def spy(self: models.MLP, hp: keras_tuner.HyperParameters) -> keras.Model:
        seen.append(self.decay_steps)
        return build(self, hp)

    monkeypatch.setattr(models.MLP, "build", spy)
    return seen


@pytest.mark.parametrize("cv_folds", [0, 2])
def test_cosine_schedule_is_sized_from_the_data_each_fit_trains_on(
    tmp_path: Path, monkeypatch: Any, cv_folds: int
) -> None:
    hm = models.make("mlp", (4,), 2, "features", kind="tabular")
    hm.size_schedule(100, 8, 3)
    assert hm.decay_steps == 13 * 3
    seen = _record_decay_steps(monkeypatch)
    cfg = config.from_mapping(
        {
            "repository": str(tmp_path / "repo"),
            "model_name": "reg",
            "data": {"source": "csv", "path": str(_csv(tmp_path / "r.csv")), "task": "regression"},
            "max_trials": 1,
            "epochs": 2,
            "batch_size": 8,
            "cv_folds": cv_folds,
            "verbose": 0,
            "work_dir": str(tmp_path / "work"),
        }
    )
    with open(tmp_path / "out.txt", "w") as out:
        result = run_training(cfg, out=out)
    n_train = json.loads((result.path / "kerve.json").read_text())["dataset"]["num_train"]
    assert seen[-1] == math.ceil(n_train / 8) * 2  # the final fit: the whole training split
    if cv_folds:
        # (KerasTuner builds once more first, to learn the search space, without fitting)
        assert seen[-3:-1] == [math.ceil(n_train / 2 / 8) * 2] * 2  # one per fold, sized for the fold
    else:
        fit = n_train - math.ceil(n_train * train_module.VALIDATION_FRACTION)
        assert seen[0] in {math.ceil(fit / 8) * 2, math.ceil((fit + 1) / 8) * 2}


class _CaptureModel:
    """Stands in for a Keras model: `fit` returns the (augmented) images of the dataset it was given."""

    distribute_strategy = tf.distribute.get_strategy()

    def fit(self, x: tf.data.Dataset, *args: object, **kwargs: object) -> np.ndarray:
        return np.concatenate([images.numpy() for images, _ in x])


def test_augmentation_is_reproducible_under_a_fixed_seed() -> None:
    x = np.random.RandomState(1).rand(64, 8, 8, 1).astype("float32")
    y = np.zeros(64, dtype="int64")

    def augmented() -> np.ndarray:
        keras.utils.set_random_seed(0)
        hm = models.make("cnn", (8, 8, 1), 2, "image", augment=True, seed=7)
        return hm.fit(keras_tuner.HyperParameters(), _CaptureModel(), tune.make_dataset(x, y, 4))

    first, second = augmented(), augmented()
    assert not np.allclose(first, x)  # it does augment
    np.testing.assert_array_equal(first, second)


def test_image_runs_record_preprocessing_and_their_own_tensorboard_dir(tmp_path: Path) -> None:
    digits = data.load_digits_split(0, 0.2)
    assert digits.preprocessing == {"scale": 1 / 16, "image_size": [8, 8], "color_mode": "grayscale"}
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (tmp_path / "imgs" / label).mkdir(parents=True)
        for i in range(3):
            png = tf.io.encode_png(rng.integers(0, 255, (5, 5, 3), dtype=np.uint8))
            (tmp_path / "imgs" / label / f"{i}.png").write_bytes(png.numpy())
    folder = data.load_image_folder(tmp_path / "imgs", (4, 4), "grayscale", 0.3, 0)
    assert folder.preprocessing["scale"] == 1 / 255 and folder.preprocessing["image_size"] == [4, 4]
    assert folder.preprocessing["color_mode"] == "grayscale" and float(folder.x_train.max()) <= 1.0
    np.savez(tmp_path / "img.npz", x=rng.random((24, 4, 4, 1)).astype(np.float32), y=np.arange(24) % 2)
    body = {
        "repository": str(tmp_path / "repo"),
        "model_name": "img",
        "data": {"source": "npz", "path": str(tmp_path / "img.npz")},
        "max_trials": 1,
        "epochs": 1,
        "batch_size": 8,
        "verbose": 0,
        "work_dir": str(tmp_path / "work"),
    }
    dirs = []
    for _ in range(2):
        with open(tmp_path / "out.txt", "w") as out:
            result = run_training(config.from_mapping(body), out=out)
        meta = json.loads((result.path / "kerve.json").read_text())
        assert meta["preprocessing"] == {"scale": 1.0, "image_size": [4, 4]}
        tb = Path(meta["training"]["tensorboard_dir"])
        assert tb.parent == tmp_path / "work" / "tensorboard"
        assert any(tb.rglob("events.out.tfevents*")) and any((tb / "final").rglob("events.out.tfevents*"))
        assert f"TensorBoard logs: {tb}" in (tmp_path / "out.txt").read_text()
        dirs.append(tb)
    assert dirs[0] != dirs[1]
