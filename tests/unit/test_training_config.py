"""TensorFlow-free parts of training and retraining: config files, data sources, strategy choice, the gate."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from kerve import repository
from kerve.cli import build_parser
from kerve.training import cli, config, data, evaluate, gate, strategy, summary

ROOT = Path(__file__).resolve().parents[2]


def write_yaml(path: Path, body: dict) -> Path:
    path.write_text(yaml.safe_dump(body))
    return path


# ------------------------------------------------------------------------------------------------ config


def test_full_config_file_parses(tmp_path: Path) -> None:
    cfg = config.load(
        write_yaml(
            tmp_path / "c.yaml",
            {
                "repository": str(tmp_path / "repo"),
                "model_name": "houses",
                "data": {"source": "csv", "path": "/data/h.csv", "task": "regression", "label_column": "price"},
                "family": "mlp",
                "tuner": "hyperband",
                "epochs": 3,
                "strategy": "mirrored",
                "cpu_devices": 2,
                "gate": {"metric": "mae", "tolerance": 0.5},
            },
        )
    )
    assert cfg.repository == tmp_path / "repo" and cfg.data.path == Path("/data/h.csv")
    assert (cfg.data.task, cfg.data.label_column, cfg.family, cfg.tuner) == ("regression", "price", "mlp", "hyperband")
    assert (cfg.strategy, cfg.cpu_devices, cfg.gate.metric, cfg.gate.tolerance) == ("mirrored", 2, "mae", 0.5)
    assert not cfg.gate.higher_is_better


def test_without_a_gate_section_the_gate_uses_the_tasks_own_metric(tmp_path: Path) -> None:
    """Every key but `repository` is optional: a regression config without `gate:` gates on mse (accuracy does
    not apply to it), a classification one on accuracy."""
    data = {"source": "csv", "path": "/data/h.csv", "task": "regression", "label_column": "price"}
    regression = config.from_mapping({"repository": str(tmp_path), "data": data})
    assert (regression.gate.metric, regression.gate.higher_is_better) == ("mse", False)
    assert config.from_mapping({"repository": str(tmp_path)}).gate.metric == "accuracy"


def test_configmap_retrain_yaml_is_a_valid_config() -> None:
    docs = list(yaml.safe_load_all((ROOT / "k8s" / "base" / "configmap.yaml").read_text()))
    retrain = next(d for d in docs if d["metadata"]["name"] == "kerve-retrain")
    # Paths are the pod's (/models), not this machine's: not checked here.
    cfg = config.from_mapping(yaml.safe_load(retrain["data"]["retrain.yaml"]), check_paths=False)
    assert cfg.repository == Path("/models") and cfg.data.source == "digits"
    assert cfg.gate.metric == "accuracy" and cfg.work_dir == Path("/tmp/kerve-retrain")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "repository is required"),
        ({"repository": "r", "tunr": "random"}, "unknown top-level keys"),
        ({"repository": "r", "data": {"source": "digits", "pth": "x"}}, "unknown data keys"),
        ({"repository": "r", "gate": {"metric": "accuracy", "min_improvement": 0}}, "unknown gate keys"),
        ({"repository": "r", "epochs": "ten"}, "epochs must be int"),
        ({"repository": "r", "epochs": True}, "epochs must be int"),
        ({"repository": "r", "epochs": 0}, "epochs must be >= 1"),
        ({"repository": "r", "data": {"source": "csv"}}, "needs data.path"),
        ({"repository": "r", "data": {"source": "parquet"}}, "unknown data source"),
        ({"repository": "r", "family": "vgg"}, "unknown family"),
        ({"repository": "r", "tuner": "evolution"}, "unknown tuner"),
        ({"repository": "r", "strategy": "horovod"}, "unknown strategy"),
        ({"repository": "r", "stale_tmp_seconds": 0}, "stale_tmp_seconds must be > 0"),
        ({"repository": "r", "gate": {"metric": "mse"}}, "does not apply to classification"),
        (
            {
                "repository": "r",
                "data": {"source": "csv", "path": "x", "task": "regression"},
                "gate": {"metric": "accuracy"},
            },
            "does not apply to regression",
        ),  # fmt: skip
        ({"repository": "r", "data": {"source": "digits", "task": "regression"}}, "needs a csv or npz"),
        ({"repository": "r", "model_name": "../x"}, "invalid model name"),
        ({"repository": "r", "work_dir": "r/work"}, "must be outside the model repository"),
        ([1, 2], "must be a YAML mapping"),
        ({"repository": "r", "cv_folds": 1}, "cv_folds must be 0 \\(off\\) or >= 2, got 1"),
        ({"repository": "r", "cv_folds": -2}, "cv_folds must be 0"),
        ({"repository": "r", "cv_folds": "3"}, "cv_folds must be int"),
        ({"repository": "r", "cv_folds": 3, "tuner": "hyperband"}, "does not work with the hyperband tuner"),
    ],
)
def test_invalid_configs_are_rejected_with_a_clear_message(body: object, message: str) -> None:
    with pytest.raises((config.ConfigError, repository.RepositoryError), match=message):
        config.from_mapping(body)  # type: ignore[arg-type]


def test_unreadable_and_invalid_yaml_files(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError, match="cannot read config"):
        config.load(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("repository: [unclosed\n")
    with pytest.raises(config.ConfigError, match="invalid YAML"):
        config.load(tmp_path / "bad.yaml")


def test_flags_override_the_config_file(tmp_path: Path) -> None:
    path = write_yaml(
        tmp_path / "c.yaml", {"repository": "r", "epochs": 7, "max_trials": 4, "data": {"source": "digits"}}
    )
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    cfg = cli.config_from_args(parser.parse_args(["--config", str(path), "--epochs", "2", "--tuner", "grid"]))
    assert (cfg.epochs, cfg.max_trials, cfg.tuner) == (2, 4, "grid")
    cfg = cli.config_from_args(parser.parse_args(["--model-repository=r", "--dataset=csv", "--data-path=/d.csv"]))
    assert (cfg.data.source, cfg.data.path) == ("csv", Path("/d.csv"))


def test_retrain_subcommand_requires_a_config() -> None:
    parser = build_parser()
    args = parser.parse_args(["retrain", "--config", "/etc/kerve/retrain.yaml"])
    assert args.config == Path("/etc/kerve/retrain.yaml") and args.func.__name__ == "_cmd_retrain"
    with pytest.raises(SystemExit):
        parser.parse_args(["retrain"])


def test_retrain_with_a_bad_config_exits_2_before_training(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = write_yaml(tmp_path / "c.yaml", {"repository": str(tmp_path / "repo"), "gate": {"metric": "auc"}})
    args = build_parser().parse_args(["retrain", "--config", str(path)])
    assert cli.retrain_main(args) == cli.EXIT_BAD_CONFIG
    assert "unknown gate metric 'auc'" in capsys.readouterr().err
    assert not (tmp_path / "repo").exists()


def test_cv_folds_from_file_and_flag(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "c.yaml", {"repository": "r", "cv_folds": 5, "tuner": "bayesian"})
    assert config.load(path).cv_folds == 5
    assert config.from_mapping({"repository": "r"}).cv_folds == 0
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    assert cli.config_from_args(parser.parse_args(["--config", str(path), "--cv-folds", "3"])).cv_folds == 3
    with pytest.raises(config.ConfigError, match="cv_folds must be 0"):
        cli.config_from_args(parser.parse_args(["--config", str(path), "--cv-folds", "1"]))


def test_cv_folds_must_fit_the_smallest_class_and_the_data() -> None:
    y = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
    config.check_cv_folds(3, y, "classification")
    config.check_cv_folds(0, y[:1], "classification")  # off: nothing to check
    with pytest.raises(config.ConfigError, match="larger than the smallest class \\(3 training examples\\)"):
        config.check_cv_folds(4, y, "classification")
    config.check_cv_folds(4, np.linspace(0, 1, 4, dtype=np.float32), "regression")
    with pytest.raises(config.ConfigError, match="larger than the 3 training examples"):
        config.check_cv_folds(4, np.zeros(3, dtype=np.float32), "regression")


def test_summary_shows_the_cross_validated_mean_and_std() -> None:
    trials = [{"trial_id": "0", "status": "COMPLETED", "score": 0.5, "score_std": 0.1, "fold_scores": [0.4, 0.6],
               "best_epoch": 1, "hyperparameters": {}}]  # fmt: skip
    text = summary.format_summary(trials, {"accuracy": 0.5}, 1, Path("/r/m/1"))
    assert "val_accuracy (cv mean ± std)" in text and "0.5000 ± 0.1000" in text


# ------------------------------------------------------------------------------------------------ strategy


@pytest.mark.parametrize(
    ("requested", "env", "tpu", "gpus", "cpus", "kind"),
    [
        ("auto", {}, None, 0, 0, "default"),
        ("auto", {}, None, 1, 0, "default"),
        ("auto", {}, None, 4, 0, "mirrored"),
        ("auto", {}, None, 0, 2, "mirrored"),
        ("auto", {}, "local", 4, 0, "tpu"),
        ("auto", {"TF_CONFIG": '{"cluster": {}}'}, "local", 4, 0, "multiworker"),
        ("default", {"TF_CONFIG": "{}"}, None, 4, 0, "default"),
        ("mirrored", {}, None, 0, 0, "mirrored"),
        ("multiworker", {}, None, 0, 0, "multiworker"),
        ("tpu", {}, None, 0, 0, "tpu"),
    ],
)
def test_strategy_choice(requested: str, env: dict, tpu: str | None, gpus: int, cpus: int, kind: str) -> None:
    assert strategy.choose(requested, env, tpu, gpus, cpus).kind == kind


@pytest.mark.parametrize(
    ("tf_config", "chief"),
    [
        (None, True),
        ("", True),
        ('{"cluster": {}}', True),  # no cluster: one local process
        ('{"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 0}}', True),
        ('{"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 1}}', False),
        ('{"cluster": {"chief": ["c:1"], "worker": ["a:1"]}, "task": {"type": "worker", "index": 0}}', False),
        ('{"cluster": {"chief": ["c:1"], "worker": ["a:1"]}, "task": {"type": "chief", "index": 0}}', True),
        ('{"cluster": {"worker": ["a:1"], "evaluator": ["e:1"]}, "task": {"type": "evaluator", "index": 0}}', False),
    ],
)
def test_the_chief_is_the_chief_task_else_worker_0(tf_config: str | None, chief: bool) -> None:
    assert strategy.is_chief(tf_config) is chief


@pytest.mark.parametrize(
    ("tf_config", "message"),
    [
        ("{not json", "not JSON"),
        ("[1]", "must be a JSON object"),
        ('{"cluster": {"worker": ["a:1"]}}', "no task"),
        ('{"cluster": {"worker": ["a:1"]}, "task": "worker"}', "task must be"),
        ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": -1}}', "non-negative"),
        ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": "0"}}', "non-negative"),
        ('{"cluster": ["a:1"], "task": {"type": "worker", "index": 0}}', "cluster must be"),
    ],
)
def test_a_tf_config_that_names_no_task_is_refused_before_tensorflow(tf_config: str, message: str) -> None:
    with pytest.raises(strategy.ClusterError, match=message):
        strategy.is_chief(tf_config)


def test_tpu_is_only_looked_for_when_there_is_a_sign_of_one(tmp_path: Path) -> None:
    absent = tmp_path / "accel0"
    assert strategy.tpu_hint({}, absent) is None
    assert strategy.tpu_hint({"TPU_NAME": "grpc://10.0.0.2:8470"}, absent) == "grpc://10.0.0.2:8470"
    absent.touch()
    assert strategy.tpu_hint({}, absent) == "local"


# ------------------------------------------------------------------------------------------------ gate


def test_gate_higher_is_better_with_tolerance() -> None:
    rule = config.GateConfig(metric="accuracy", tolerance=0.02)
    assert gate.decide({"accuracy": 0.90}, None, rule).publish
    assert gate.decide({"accuracy": 0.89}, {"accuracy": 0.90}, rule, 3).publish
    rejected = gate.decide({"accuracy": 0.87}, {"accuracy": 0.90}, rule, 3)
    assert not rejected.publish and rejected.baseline_version == 3 and "lower than 0.8800" in rejected.reason
    demanding = config.GateConfig(metric="accuracy", tolerance=-0.05)
    assert not gate.decide({"accuracy": 0.93}, {"accuracy": 0.90}, demanding).publish
    not_enforced = gate.decide({"accuracy": 0.5}, {"accuracy": 0.9}, rule, 1, enforced=False)
    assert not_enforced.publish and "not enforced" in not_enforced.reason


def test_gate_lower_is_better_for_errors() -> None:
    rule = config.GateConfig(metric="mse", tolerance=0.1)
    assert gate.decide({"mse": 1.05}, {"mse": 1.0}, rule).publish
    assert not gate.decide({"mse": 1.2}, {"mse": 1.0}, rule).publish
    assert gate.decide({"mse": 0.2}, {"mse": 1.0}, rule).to_json()["publish"] is True


def test_regression_metrics() -> None:
    got = evaluate.regression_metrics(np.array([1.0, 2.0, 3.0]), np.array([[1.5], [2.0], [2.0]]))
    assert got["mse"] == pytest.approx((0.25 + 0 + 1) / 3) and got["mae"] == pytest.approx(0.5)
    assert got["r2"] == pytest.approx(1 - 1.25 / 2.0) and got["num_examples"] == 3
    with pytest.raises(ValueError):
        evaluate.regression_metrics(np.array([]), np.array([]))


def test_summary_without_publish_says_so() -> None:
    text = summary.format_summary([], {"mse": 1.0}, None, None, "val_loss", "mse 1 is higher", lower_is_better=True)
    assert "Gate: mse 1 is higher" in text and text.endswith("Nothing published") and "mse     1.0000" in text


def test_stale_tmp_dirs_are_removed_only_when_old(tmp_path: Path) -> None:
    model = tmp_path / "m"
    old, young, version = model / ".tmp-1-aa", model / ".tmp-2-bb", model / "1"
    for d in (old, young, version):
        d.mkdir(parents=True)
    (old / "saved_model.pb").write_bytes(b"x")
    past = time.time() - 7200
    os.utime(old, (past, past))
    assert repository.clean_stale_tmp(tmp_path, "m", 3600) == [old]
    assert sorted(p.name for p in model.iterdir()) == [".tmp-2-bb", "1"]
    assert repository.clean_stale_tmp(tmp_path, "absent", 0) == []


# ------------------------------------------------------------------------------------------------ data


def test_csv_classification_with_string_labels(tmp_path: Path) -> None:
    rows = ["a,b,label"] + [f"{i},{i % 3},{'cat' if i % 2 else 'dog'}" for i in range(20)]
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n")
    d = data.load(config.DataConfig(source="csv", path=tmp_path / "d.csv", label_column="label"), seed=0)
    assert d.kind == "tabular" and d.input_name == "features" and d.class_names == ("cat", "dog")
    assert d.x_train.dtype == np.float32 and d.x_train.shape[1] == 2 and len(d.y_train) + len(d.y_test) == 20
    assert d.details["feature_names"] == ["a", "b"]


def test_csv_regression_targets_are_float(tmp_path: Path) -> None:
    (tmp_path / "r.csv").write_text("x,y\n" + "".join(f"{i},{2.5 * i}\n" for i in range(10)))
    d = data.load(config.DataConfig(source="csv", path=tmp_path / "r.csv", label_column="y", task="regression"))
    assert d.task == "regression" and d.y_train.dtype == np.float32 and d.num_classes == 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "is empty"),
        ("a,label\n", "no rows"),
        ("a,b\n1,2\n", "no label column 'label'"),
        ("a,label\n1,x\n2\n", "2 fields, the header has 2|1 fields"),
        ("a,label\nfoo,x\n2,y\n", "features must be numeric"),
        ("a,label\n1,x\n2,x\n", "at least two classes"),
    ],
)
def test_csv_errors(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "d.csv").write_text(text)
    with pytest.raises(data.DataError, match=message):
        data.load(config.DataConfig(source="csv", path=tmp_path / "d.csv"))


def test_text_folder_vocabulary_and_padding(tmp_path: Path) -> None:
    for label, word in (("neg", "bad awful"), ("pos", "good great")):
        (tmp_path / label).mkdir()
        for i in range(6):
            (tmp_path / label / f"{i}.txt").write_text(f"This is {word} number {i}!")
    d = data.load(config.DataConfig(source="text_folder", path=tmp_path, sequence_length=8, max_tokens=50))
    assert d.kind == "text" and d.input_name == "tokens" and d.class_names == ("neg", "pos")
    assert d.vocabulary[:2] == ("", "[UNK]") and "good" in d.vocabulary and "this" in d.vocabulary
    assert d.x_train.shape[1] == 8 and d.x_train.dtype == np.int64 and (d.x_train[:, -1] == data.PAD).all()
    assert data.vectorize(["zzz good"], d.vocabulary, 3).tolist() == [[data.OOV, d.vocabulary.index("good"), 0]]


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(data.DataError, match="does not exist"):
        data.load(config.DataConfig(source="text_folder", path=tmp_path / "nope"))
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "a.txt").write_text("x")
    with pytest.raises(data.DataError, match="at least two class subdirectories"):
        data.load(config.DataConfig(source="text_folder", path=tmp_path))
    (tmp_path / "empty").mkdir()
    with pytest.raises(data.DataError, match="has no .txt files"):
        data.load(config.DataConfig(source="text_folder", path=tmp_path))
    (tmp_path / "empty" / "b.txt").write_bytes(b"\xff\xfe\xfa")
    with pytest.raises(data.DataError, match="cannot read"):
        data.load(config.DataConfig(source="text_folder", path=tmp_path))


def test_npz_split_and_presplit(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "a.npz", x=rng.random((20, 4, 4, 1)), y=np.arange(20) % 2)
    d = data.load(config.DataConfig(source="npz", path=tmp_path / "a.npz"))
    assert d.kind == "image" and d.x_train.dtype == np.float32 and len(d.y_test) == 4
    np.savez(
        tmp_path / "b.npz", x_train=rng.random((6, 3)), y_train=[0, 1] * 3, x_test=rng.random((2, 3)), y_test=[0, 1]
    )
    d = data.load(config.DataConfig(source="npz", path=tmp_path / "b.npz"))
    assert d.kind == "tabular" and d.x_train.shape == (6, 3) and d.y_test.tolist() == [0, 1]


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": np.zeros((3, 2)), "y": np.zeros(2)}, "x has 3 rows but y has 2"),
        ({"features": np.zeros((3, 2))}, "must hold x and y"),
        ({"x": np.zeros((0, 2)), "y": np.zeros(0)}, "holds no examples"),
        ({"x": np.zeros((4, 2, 2)), "y": np.arange(4) % 2}, "must be \\(n, h, w, c\\)"),
        ({"x_train": np.zeros((2, 3)), "y_train": [0, 1], "x_test": np.zeros((2, 4)), "y_test": [0, 1]}, "differ"),
    ],
)
def test_npz_errors(tmp_path: Path, arrays: dict, message: str) -> None:
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(data.DataError, match=message):
        data.load(config.DataConfig(source="npz", path=tmp_path / "d.npz"))


def test_npz_unreadable(tmp_path: Path) -> None:
    (tmp_path / "d.npz").write_text("not a zip")
    with pytest.raises(data.DataError, match="cannot read"):
        data.load(config.DataConfig(source="npz", path=tmp_path / "d.npz"))
