"""Model families, tuners, data sources and the retrain gate, on tiny data made here (epochs and trials tiny)."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import keras_tuner
import numpy as np
import pytest
import yaml

from kerve import repository
from kerve.cli import main as kerve_main
from kerve.training import config, data, models, publish, tune
from kerve.training.train import run_training

pytestmark = pytest.mark.integration

REGULARIZATION = {"dropout", "l1", "l2", "batch_norm", "learning_rate", "optimizer", "lr_schedule"}


def tiny(family: str) -> tuple[models._Family, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    if family in models.TEXT_FAMILIES:
        x = rng.integers(0, 20, size=(12, 6)).astype(np.int64)
        return models.make(family, (6,), 3, "tokens", kind="text", vocab_size=20), x, np.arange(12) % 3
    if family == "mlp":
        x = rng.random((12, 5), dtype=np.float32)
        return models.make(family, (5,), 3, "features", kind="tabular"), x, np.arange(12) % 3
    x = rng.random((12, 8, 8, 1), dtype=np.float32)
    return models.make(family, (8, 8, 1), 3, "image", augment=True), x, np.arange(12) % 3


@pytest.mark.parametrize("family", models.FAMILIES)
def test_family_space_and_training_with_every_regularizer_on(family: str) -> None:
    hypermodel, x, y = tiny(family)
    default_hp = keras_tuner.HyperParameters()
    hypermodel.build(default_hp)
    assert set(default_hp.values) >= REGULARIZATION, f"{family} lacks {REGULARIZATION - set(default_hp.values)}"

    hp = keras_tuner.HyperParameters()
    for name, value in {
        "l1": 1e-4,
        "l2": 1e-3,
        "batch_norm": True,
        "optimizer": "sgd",
        "lr_schedule": "cosine",
    }.items():
        hp.Fixed(name, value)
    model = hypermodel.build(hp)
    assert [t.name for t in model.inputs] == [hypermodel.input_name]
    assert isinstance(model.optimizer, keras.optimizers.SGD) and model.optimizer.momentum == 0.9
    assert isinstance(model.optimizer._learning_rate, keras.optimizers.schedules.CosineDecay)
    assert model.losses, "L1/L2 penalties are part of the loss"
    assert any(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers)
    # the family's own fit: for image families with augment=True it maps flip/rotation/zoom over the data
    history = hypermodel.fit(hp, model, tune.make_dataset(x, y, 4, shuffle_seed=0), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()


@pytest.mark.parametrize("family", ["lstm"])
def test_recurrent_families_export_and_serve_the_keras_predictions(family: str, tmp_path: Path) -> None:
    # cnn, resnet, transformer and mlp are exported by the end-to-end runs below and in test_training.py;
    # gru is the same class with another cell (trained in test_family_space_and_training_...)
    hypermodel, x, y = tiny(family)
    model = hypermodel.build(keras_tuner.HyperParameters())
    model.fit(x, y, epochs=1, batch_size=4, verbose=0)
    version, path = publish.publish_model(tmp_path, family, model, {"family": family}, x[:4])
    assert version == 1
    assert repository.read_metadata(path)["signature"]["inputs"] == {"tokens": {"dtype": "int64", "shape": [None, 6]}}


def test_mlp_regression_has_one_linear_output() -> None:
    hypermodel = models.make("mlp", (3,), 1, "features", kind="tabular", task="regression")
    model = hypermodel.build(keras_tuner.HyperParameters())
    assert model.output_shape == (None, 1) and model.loss == "mse"


def test_family_and_data_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="needs image data"):
        models.make("resnet", (5,), 2, "features", kind="tabular")
    with pytest.raises(ValueError, match="needs text data"):
        models.make("transformer", (8, 8, 1), 2, "image", kind="image")
    with pytest.raises(ValueError, match="regression is supported by the mlp family only"):
        models.make("cnn", (8, 8, 1), 1, "image", kind="image", task="regression")
    with pytest.raises(config.ConfigError, match="augment: true flips, rotates and zooms images; the data is text"):
        models.make("lstm", (8,), 2, "tokens", kind="text", augment=True, vocab_size=50)


@pytest.mark.parametrize("kind", [k for k in tune.TUNERS if k != "random"])  # random: test_training.py
def test_every_tuner_completes_a_tiny_search(kind: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.random((40, 4), dtype=np.float32)
    y = (x[:, 0] > 0.5).astype(np.int64)
    hypermodel = models.make("mlp", (4,), 2, "features", kind="tabular")
    tuner = tune.make_tuner(kind, hypermodel, 2, 0, tmp_path / "t", kind, max_epochs=2)
    result = tune.search(tuner, x, y, x, y, epochs=1, batch_size=16, log_dir=tmp_path / "tb", verbose=0)
    assert result.trials and all(t.status == "COMPLETED" for t in result.trials)
    assert set(result.hyperparameters) >= REGULARIZATION
    assert any((tmp_path / "tb").rglob("events.out.tfevents*"))


def write_images(root: Path, count: int = 6) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for label, base in (("dark", 30), ("light", 220)):
        (root / label).mkdir(parents=True)
        for i in range(count):
            pixels = np.clip(base + rng.integers(-20, 20, size=(10, 10, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / label / f"{i}.png")


def test_image_folder_source(tmp_path: Path) -> None:
    write_images(tmp_path / "imgs")
    d = data.load(config.DataConfig(source="image_folder", path=tmp_path / "imgs", image_size=(8, 8)))
    assert d.kind == "image" and d.class_names == ("dark", "light") and d.input_shape == (8, 8, 3)
    assert d.x_train.dtype == np.float32 and d.x_train.min() >= 0.0 and d.x_train.max() <= 1.0
    assert len(d.y_train) + len(d.y_test) == 12 and set(d.y_test.tolist()) == {0, 1}
    gray = data.load(
        config.DataConfig(source="image_folder", path=tmp_path / "imgs", image_size=(4, 4), color_mode="grayscale")
    )
    assert gray.input_shape == (4, 4, 1)
    (tmp_path / "imgs" / "light" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(data.DataError, match="cannot read images"):
        data.load(config.DataConfig(source="image_folder", path=tmp_path / "imgs", image_size=(8, 8)))


def make_config(tmp_path: Path, **changes: object) -> config.TrainConfig:
    body = {
        "repository": str(tmp_path / "repo"),
        "model_name": "m",
        "max_trials": 1,
        "epochs": 1,
        "batch_size": 8,
        "verbose": 0,
        "work_dir": str(tmp_path / "work"),
        **changes,
    }
    return config.from_mapping(body)


def test_text_folder_with_transformer_end_to_end(tmp_path: Path) -> None:
    for label, words in (("neg", "bad awful poor"), ("pos", "good great fine")):
        (tmp_path / "text" / label).mkdir(parents=True)
        for i in range(10):
            (tmp_path / "text" / label / f"{i}.txt").write_text(f"{words} {i}")
    cfg = make_config(
        tmp_path,
        data={"source": "text_folder", "path": str(tmp_path / "text"), "sequence_length": 6},
        family="transformer",
    )
    result = run_training(cfg, out=io.StringIO())
    meta = repository.read_metadata(result.path)
    assert meta["family"] == "transformer" and meta["dataset"]["kind"] == "text"
    assert meta["signature"]["inputs"] == {"tokens": {"dtype": "int64", "shape": [None, 6]}}
    assert "good" in meta["dataset"]["vocabulary"]


def test_image_folder_with_resnet_and_augmentation_end_to_end(tmp_path: Path) -> None:
    write_images(tmp_path / "imgs")
    cfg = make_config(
        tmp_path, data={"source": "image_folder", "path": str(tmp_path / "imgs"), "image_size": [8, 8]},
        family="resnet", augment=True, tuner="grid",
    )  # fmt: skip
    result = run_training(cfg, out=io.StringIO())
    meta = repository.read_metadata(result.path)
    assert meta["family"] == "resnet" and meta["training"]["augment"] is True and meta["training"]["tuner"] == "grid"
    assert meta["signature"]["inputs"]["image"]["shape"] == [None, 8, 8, 3]


def write_yaml(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture
def regression(tmp_path: Path) -> dict:
    rng = np.random.default_rng(0)
    x = rng.random((60, 3))
    target = 3 * x[:, 0] - x[:, 1]
    lines = ["a,b,c,target"] + [f"{r[0]:.5f},{r[1]:.5f},{r[2]:.5f},{t:.5f}" for r, t in zip(x, target, strict=True)]
    (tmp_path / "houses.csv").write_text("\n".join(lines) + "\n")
    return {
        "repository": str(tmp_path / "repo"),
        "model_name": "houses",
        "data": {"source": "csv", "path": str(tmp_path / "houses.csv"), "label_column": "target", "task": "regression"},
        "tuner": "bayesian",
        "max_trials": 1,
        "epochs": 1,
        "batch_size": 16,
        "verbose": 0,
        "work_dir": str(tmp_path / "work"),
        "gate": {"metric": "mse", "tolerance": 100.0},
    }


def test_retrain_exit_codes_and_gate(tmp_path: Path, regression: dict, capsys: pytest.CaptureFixture) -> None:
    repo = Path(regression["repository"])
    path = write_yaml(tmp_path / "retrain.yaml", regression)
    assert kerve_main(["retrain", "--config", str(path)]) == 0
    first = repository.read_metadata(repo / "houses" / "1")
    assert first["task"] == "regression" and first["family"] == "mlp" and first["training"]["objective"] == "val_mse"
    assert set(first["metrics"]) >= {"mse", "mae"} and first["gate"]["baseline_version"] is None

    # A publish killed long ago left a dot-directory: removed. A young one may be in progress: kept.
    dead, young = repo / "houses" / ".tmp-1-dead", repo / "houses" / ".tmp-2-young"
    (dead / "variables").mkdir(parents=True)
    young.mkdir()
    os.utime(dead, (time.time() - 7200, time.time() - 7200))

    # Not worse by more than the tolerance: published, compared with version 1 served from its SavedModel.
    assert kerve_main(["retrain", "--config", str(path)]) == 0
    assert sorted(p.name for p in (repo / "houses").iterdir()) == [".tmp-2-young", "1", "2"]
    young.rmdir()
    second = repository.read_metadata(repo / "houses" / "2")["gate"]
    assert second["publish"] and second["enforced"] and second["baseline_version"] == 1
    assert second["baseline"] == pytest.approx(first["metrics"]["mse"], rel=1e-4)

    # A negative tolerance demands an improvement no model can make: rejected, nothing written.
    write_yaml(path, {**regression, "gate": {"metric": "mse", "tolerance": -1e9}})
    capsys.readouterr()
    assert kerve_main(["retrain", "--config", str(path)]) == 3
    assert "Rejected by the gate" in capsys.readouterr().out
    assert sorted(p.name for p in (repo / "houses").iterdir()) == ["1", "2"]


def export_regressor(path: Path, input_name: str = "features", features: int = 3) -> None:
    model = keras.Sequential([keras.Input((features,), name=input_name), keras.layers.Dense(1)])
    model.export(str(path), format="tf_saved_model", verbose=False)


def test_retrain_fails_with_1_when_the_current_version_is_not_comparable(
    tmp_path: Path, regression: dict, capsys: pytest.CaptureFixture
) -> None:
    repo = Path(regression["repository"])
    export_regressor(repo / "houses" / "1", "other", 2)
    assert kerve_main(["retrain", "--config", str(write_yaml(tmp_path / "r.yaml", regression))]) == 1
    assert "takes inputs ['other']" in capsys.readouterr().err
    assert repository.list_versions(repo, "houses") == [1]
    assert not [p for p in (repo / "houses").iterdir() if p.name.startswith(".")]


def test_retrain_failure_on_bad_data_exits_1(tmp_path: Path, regression: dict, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "houses.csv").write_text("a,b,c,target\n")
    assert kerve_main(["retrain", "--config", str(write_yaml(tmp_path / "r.yaml", regression))]) == 1
    assert "no rows" in capsys.readouterr().err
    assert not (Path(regression["repository"]) / "houses").exists()


def test_killed_mid_publish_leaves_nothing_visible_and_is_cleaned_later(tmp_path: Path, regression: dict) -> None:
    repo = Path(regression["repository"])
    path = write_yaml(tmp_path / "retrain.yaml", {**regression, "tuner": "random"})
    export_regressor(repo / "houses" / "1")  # the version being served
    marker = tmp_path / "publishing"
    env = {**os.environ, publish.PAUSE_ENV: str(marker)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "kerve", "retrain", "--config", str(path)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while not marker.exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:] if proc.stderr else ""
            assert time.monotonic() < deadline, "the publisher never reached the pause"
            time.sleep(0.1)
        tmp = Path(marker.read_text())
        assert tmp.parent == repo / "houses" and tmp.name.startswith(repository.TMP_PREFIX)
        assert (tmp / repository.SAVED_MODEL_FILE).is_file()  # the export is complete, the rename is not
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    # Only the dot-directory is new: readers ignore it, and the next run removes it once it is old enough.
    assert sorted(p.name for p in (repo / "houses").iterdir()) == sorted(["1", tmp.name])
    assert repository.list_versions(repo, "houses") == [1]
    assert repository.list_models(repo) == ["houses"]
