"""The TensorFlow-free parts of kerve.training: data split, fingerprints, metrics, summary, CLI flags."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn import metrics as skm

from kerve.training import cli, data, evaluate, summary


def test_tf_free_modules_do_not_import_tensorflow() -> None:
    code = (
        "import sys\n"
        "import kerve.training.cli, kerve.training.data, kerve.training.evaluate, kerve.training.summary\n"
        "import kerve.training.config, kerve.training.gate, kerve.training.strategy, kerve.cli\n"
        "kerve.cli.build_parser()\n"
        "sys.exit('tensorflow' in sys.modules or 'keras' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


def test_digits_split_shapes_and_ranges() -> None:
    d = data.load_digits_split(seed=0)
    assert d.x_train.shape == (1437, 8, 8, 1) and d.x_test.shape == (360, 8, 8, 1)
    assert d.x_train.dtype == np.float32 and d.y_train.dtype == np.int64
    assert d.x_train.min() >= 0.0 and d.x_train.max() <= 1.0 and d.x_train.max() == 1.0
    assert d.num_classes == 10 and d.input_name == "image" and d.input_shape == (8, 8, 1)
    assert d.class_names == tuple(str(i) for i in range(10))
    # Stratified: every class appears in the test split in roughly the overall proportion.
    counts = np.bincount(d.y_test, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37


def test_digits_split_is_deterministic_per_seed() -> None:
    a, b, c = data.load_digits_split(seed=3), data.load_digits_split(seed=3), data.load_digits_split(seed=4)
    for name in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.y_test, c.y_test)
    assert data.fingerprint([a.x_test, a.y_test]) == data.fingerprint([b.x_test, b.y_test])
    assert data.fingerprint([a.x_test, a.y_test]) != data.fingerprint([c.x_test, c.y_test])


def test_digits_split_rejects_bad_fraction() -> None:
    with pytest.raises(ValueError):
        data.load_digits_split(test_fraction=1.0)


def test_validation_split_is_stratified_and_disjoint() -> None:
    d = data.load_digits_split(seed=0)
    x_fit, y_fit, x_val, y_val = data.validation_split(d.x_train, d.y_train, 0.2, seed=0)
    assert len(y_fit) + len(y_val) == len(d.y_train)
    assert set(np.unique(y_val)) == set(range(10))


def test_fingerprint_covers_dtype_and_shape() -> None:
    a = np.arange(6, dtype=np.int32)
    assert data.fingerprint([a]).startswith("sha256:")
    assert data.fingerprint([a]) == data.fingerprint([a.copy()])
    assert data.fingerprint([a]) != data.fingerprint([a.reshape(2, 3)])
    assert data.fingerprint([a]) != data.fingerprint([a.view(np.float32)])
    assert data.fingerprint([a, a]) != data.fingerprint([a])


def test_classification_metrics_match_sklearn() -> None:
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 5, size=200)
    y_pred = np.where(rng.random(200) < 0.7, y_true, rng.integers(0, 5, size=200))
    y_pred[y_pred == 4] = 3  # class 4 is never predicted: precision must be 0, not NaN

    got = evaluate.classification_metrics(y_true, y_pred, num_classes=5)

    assert got["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
    for key in ("precision", "recall", "f1"):
        scorer = getattr(skm, f"{key}_score")
        expected = scorer(y_true, y_pred, average="macro", zero_division=0)  # over the classes that occur
        assert got[key] == pytest.approx(expected), key
    assert got["confusion_matrix"] == skm.confusion_matrix(y_true, y_pred, labels=range(5)).tolist()
    assert got["num_examples"] == 200


def test_classification_metrics_perfect_and_json_ready() -> None:
    y = np.array([0, 1, 2, 2])
    got = evaluate.classification_metrics(y, y, num_classes=4)  # class 3 absent from both: it does not count
    assert got["accuracy"] == got["recall"] == got["precision"] == got["f1"] == 1.0
    assert all(type(got[k]) is float for k in ("accuracy", "precision", "recall", "f1"))
    assert all(type(v) is int for row in got["confusion_matrix"] for v in row)


@pytest.mark.parametrize(
    ("y_true", "y_pred"),
    [([0, 1], [0]), ([], []), ([0, 10], [0, 1]), ([0, -1], [0, 1])],
)
def test_classification_metrics_rejects_bad_input(y_true: list[int], y_pred: list[int]) -> None:
    with pytest.raises(ValueError):
        evaluate.classification_metrics(np.array(y_true), np.array(y_pred), num_classes=10)


def test_evaluate_model_uses_argmax_of_predictions() -> None:
    class Fixed:
        def predict(self, x: np.ndarray, batch_size: int = 32, verbose: object = 0) -> np.ndarray:
            return np.eye(3, dtype=np.float32)[[0, 1, 1]]

    got = evaluate.evaluate_model(Fixed(), np.zeros((3, 2)), np.array([0, 1, 2]), num_classes=3)
    assert got["accuracy"] == pytest.approx(2 / 3)
    assert got["confusion_matrix"] == [[1, 0, 0], [0, 1, 0], [0, 1, 0]]


def test_format_summary_ranks_trials_and_names_version() -> None:
    trials = [
        {
            "trial_id": "0",
            "status": "COMPLETED",
            "score": 0.8,
            "best_epoch": 2,
            "hyperparameters": {"lr": 0.01},
        },
        {
            "trial_id": "1",
            "status": "FAILED",
            "score": None,
            "best_epoch": None,
            "hyperparameters": {"lr": 0.1},
        },
        {
            "trial_id": "2",
            "status": "COMPLETED",
            "score": 0.9,
            "best_epoch": 3,
            "hyperparameters": {"lr": 0.001},
        },
    ]
    metrics = {"accuracy": 0.95, "precision": 0.9, "recall": 0.85, "f1": 0.875, "confusion_matrix": [[1]]}
    text = summary.format_summary(trials, metrics, 7, Path("/repo/digits/7"))

    trial_lines = [line for line in text.splitlines() if line.split()[:1] in (["0"], ["1"], ["2"])]
    assert [line.split()[0] for line in trial_lines] == ["2", "0", "1"]
    assert "0.9000" in trial_lines[0] and "FAILED" in trial_lines[2]
    assert "f1         0.8750" in text
    assert text.endswith("Published version 7 at /repo/digits/7")


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_cli_defaults() -> None:
    config = cli.config_from_args(parse("--model-repository", "/tmp/repo"))
    assert config.repository == Path("/tmp/repo")
    assert (config.model_name, config.dataset, config.tuner, config.family) == ("digits", "digits", "random", "auto")
    assert (config.max_trials, config.epochs, config.batch_size, config.seed) == (2, 5, 64, 0)
    assert config.work_dir is None and config.strategy == "auto"


def test_cli_all_flags() -> None:
    args = parse(
        "--model-repository=r", "--model-name=m", "--dataset=digits", "--tuner=random", "--max-trials=3",
        "--epochs=4", "--batch-size=16", "--seed=9", "--work-dir=w", "--verbose=0",
    )  # fmt: skip
    assert (args.model_name, args.max_trials, args.epochs, args.batch_size, args.seed) == ("m", 3, 4, 16, 9)
    assert args.work_dir == Path("w") and args.verbose == 0
    config = cli.config_from_args(args)
    assert (config.model_name, config.max_trials, config.epochs, config.batch_size, config.seed) == ("m", 3, 4, 16, 9)


@pytest.mark.parametrize(
    "argv",
    [
        ["--config"],
        ["--model-repository=r", "--dataset=mnist"],
        ["--model-repository=r", "--tuner=evolution"],
        ["--model-repository=r", "--family=vgg"],
        ["--model-repository=r", "--strategy=horovod"],
        ["--model-repository=r", "--epochs=0"],
        ["--model-repository=r", "--max-trials=-1"],
        ["--model-repository=r", "--batch-size=x"],
    ],
)
def test_cli_rejects_bad_flags(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        parse(*argv)


def test_cli_without_a_repository_is_a_config_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(parse()) == cli.EXIT_BAD_CONFIG
    assert "repository is required" in capsys.readouterr().err
