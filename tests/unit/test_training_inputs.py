"""TensorFlow-free checks of reviewed training defects: the gate/publish race, config limits, unusable paths,
unreadable .npz files and the mirrored device pool."""

from __future__ import annotations

import argparse
import math
import os
import sys
import threading
import types
from pathlib import Path

import numpy as np
import pytest
import yaml

from kerve import repository
from kerve.training import cli, config, data, strategy


def _writer(tmp: Path) -> None:
    tmp.mkdir()
    (tmp / repository.SAVED_MODEL_FILE).write_bytes(b"pb")


def _versions(repo: Path, model: str = "m") -> list[str]:
    return sorted(p.name for p in (repo / model).iterdir())


# ------------------------------------------------------------------------------------------ publish race (#1)


def test_publish_refuses_a_candidate_gated_against_a_version_that_is_no_longer_the_latest(tmp_path: Path) -> None:
    assert repository.publish(tmp_path, "m", _writer, {}, expected_latest=None) == 1
    with pytest.raises(repository.LatestChangedError, match="latest version is now 1, not the no version") as info:
        repository.publish(tmp_path, "m", _writer, {}, expected_latest=None)
    assert (info.value.expected, info.value.latest) == (None, 1)
    assert _versions(tmp_path) == ["1"]  # nothing published, no .tmp-* left behind
    assert repository.publish(tmp_path, "m", _writer, {}, expected_latest=1) == 2
    with pytest.raises(repository.LatestChangedError, match="latest version is now 2, not the version 1"):
        repository.publish(tmp_path, "m", _writer, {}, expected_latest=1)
    assert repository.publish(tmp_path, "m", _writer, {}) == 3  # unchecked, as before
    assert _versions(tmp_path) == ["1", "2", "3"]


def test_a_version_landing_between_the_check_and_the_rename_is_never_jumped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another publisher renames its version into place right after this one checked the latest version: the
    rename finds the number taken, and the next check sees the new version (no N+2 above an unseen N+1)."""
    repository.publish(tmp_path, "m", _writer, {})
    real = repository.latest_version
    calls = []

    def latest_then_race(repo: str | os.PathLike[str], model: str) -> int | None:
        latest = real(repo, model)
        if not calls:
            calls.append(repository.publish(tmp_path, "m", _writer, {}))  # the other run's version 2
        return latest

    monkeypatch.setattr(repository, "latest_version", latest_then_race)
    with pytest.raises(repository.LatestChangedError) as info:
        repository.publish(tmp_path, "m", _writer, {"who": "late"}, expected_latest=1)
    assert calls == [2] and (info.value.expected, info.value.latest) == (1, 2)
    assert _versions(tmp_path) == ["1", "2"]
    assert repository.read_metadata(tmp_path / "m" / "2").get("who") is None


def test_of_two_concurrent_publishers_gated_against_the_same_version_one_publishes(tmp_path: Path) -> None:
    repository.publish(tmp_path, "m", _writer, {})
    barrier = threading.Barrier(2)
    results: list[object] = []

    def write(tmp: Path) -> None:
        _writer(tmp)
        barrier.wait(timeout=10)  # both have exported before either renames

    def run() -> None:
        try:
            results.append(repository.publish(tmp_path, "m", write, {}, expected_latest=1))
        except repository.LatestChangedError as exc:
            results.append(exc.latest)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(results) == [2, 2]  # one published 2, the other was told 2 is the latest now
    assert _versions(tmp_path) == ["1", "2"]


# ------------------------------------------------------------------------------------------ config (#2, #7, #8)


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"tuner": "hyperband", "epochs": 1}, "hyperband tuner needs epochs >= 2, got 1"),
        ({"seed": -1}, r"seed must be in \[0, 2\*\*32\), got -1"),
        ({"seed": 2**32}, r"seed must be in \[0, 2\*\*32\), got 4294967296"),
        ({"gate": {"tolerance": math.nan}}, "gate.tolerance must be a finite number, got nan"),
        ({"gate": {"tolerance": math.inf}}, "gate.tolerance must be a finite number, got inf"),
        ({"gate": {"tolerance": -math.inf}}, "gate.tolerance must be a finite number, got -inf"),
    ],
)
def test_config_limits(tmp_path: Path, body: dict, message: str) -> None:
    with pytest.raises(config.ConfigError, match=message):
        config.from_mapping({"repository": str(tmp_path / "repo"), **body})


def test_config_limits_that_still_pass(tmp_path: Path) -> None:
    cfg = config.from_mapping({"repository": str(tmp_path), "tuner": "hyperband", "epochs": 2, "seed": 2**32 - 1})
    assert (cfg.epochs, cfg.seed) == (2, 2**32 - 1)
    assert config.from_mapping({"repository": str(tmp_path), "gate": {"tolerance": -0.5}}).gate.tolerance == -0.5


def test_yaml_nan_tolerance_and_out_of_range_seed_exit_2_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(f"repository: {tmp_path / 'repo'}\ngate:\n  tolerance: .nan\n")
    assert cli.main(_args("--config", str(path))) == cli.EXIT_BAD_CONFIG
    assert "gate.tolerance must be a finite number" in capsys.readouterr().err
    assert cli.main(_args("--model-repository", str(tmp_path / "repo"), "--seed", "-3")) == cli.EXIT_BAD_CONFIG
    assert "seed must be in [0, 2**32)" in capsys.readouterr().err
    argv = ("--model-repository", str(tmp_path / "repo"), "--tuner", "hyperband", "--epochs", "1")
    assert cli.main(_args(*argv)) == cli.EXIT_BAD_CONFIG
    assert "hyperband tuner needs epochs >= 2" in capsys.readouterr().err
    assert not (tmp_path / "repo").exists()


@pytest.mark.parametrize("flags", [("--dataset", "csv"), ("--data-path", "/d.csv"), ("--dataset", "digits")])
def test_a_data_string_with_data_flags_is_a_config_error(
    tmp_path: Path, flags: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"repository": str(tmp_path / "repo"), "data": "digits"}))
    with pytest.raises(config.ConfigError, match="data must be a mapping with at least `source`"):
        cli.config_from_args(_args("--config", str(path), *flags))
    assert cli.main(_args("--config", str(path), *flags)) == cli.EXIT_BAD_CONFIG
    assert "data must be a mapping with at least `source`" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ unusable paths (#4)


def _bad_paths(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    afile = tmp_path / "afile"
    afile.write_text("")
    return {
        "a file": (afile, "is not a directory"),
        "under a file": (afile / "sub", f"cannot be created: {afile} is not a directory"),
        "under /proc": (Path("/proc/kerve-no-such-dir/repo"), "cannot be created in /proc"),
    }


@pytest.mark.parametrize("case", ["a file", "under a file", "under /proc"])
def test_a_repository_that_is_not_a_usable_directory_is_a_config_error(tmp_path: Path, case: str) -> None:
    path, message = _bad_paths(tmp_path)[case]
    with pytest.raises(config.ConfigError, match=f"repository {path} {message}"):
        config.from_mapping({"repository": str(path), "work_dir": str(tmp_path / "work")})


@pytest.mark.parametrize("case", ["a file", "under a file", "under /proc"])
def test_a_work_dir_that_is_not_a_usable_directory_is_a_config_error(tmp_path: Path, case: str) -> None:
    path, message = _bad_paths(tmp_path)[case]
    with pytest.raises(config.ConfigError, match=f"work dir {path} {message}"):
        config.from_mapping({"repository": str(tmp_path / "repo"), "work_dir": str(path)})


def test_a_model_directory_that_is_a_file_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "digits").write_text("")
    with pytest.raises(config.ConfigError, match="digits is not a directory"):
        config.from_mapping({"repository": str(tmp_path)})


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_repository_is_a_config_error(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir(mode=0o555)
    with pytest.raises(config.ConfigError, match="is not writable"):
        config.from_mapping({"repository": str(repo)})
    with pytest.raises(config.ConfigError, match="cannot be created in"):
        config.from_mapping({"repository": str(repo / "sub")})


def test_only_the_chief_of_a_cluster_needs_the_repository(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "afile").write_text("")
    cluster = '{"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": %d}}'
    monkeypatch.setenv("TF_CONFIG", cluster % 1)  # worker 1 never touches the repository
    assert config.from_mapping({"repository": str(tmp_path / "afile")}).repository == tmp_path / "afile"
    monkeypatch.setenv("TF_CONFIG", cluster % 0)
    with pytest.raises(config.ConfigError, match="is not a directory"):
        config.from_mapping({"repository": str(tmp_path / "afile")})


def test_path_checks_leave_nothing_behind_and_can_be_skipped(tmp_path: Path) -> None:
    config.from_mapping({"repository": str(tmp_path / "a" / "repo"), "work_dir": str(tmp_path / "w")})
    assert list(tmp_path.iterdir()) == []  # probed by a dot-directory, removed at once; nothing created
    cfg = config.from_mapping({"repository": "/proc/kerve-no-such-dir"}, check_paths=False)  # another machine's
    assert cfg.repository == Path("/proc/kerve-no-such-dir")


def test_cli_exits_2_for_an_unusable_repository(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "afile").write_text("")
    assert cli.main(_args("--model-repository", str(tmp_path / "afile"))) == cli.EXIT_BAD_CONFIG
    assert f"invalid configuration: repository {tmp_path / 'afile'} is not a directory" in capsys.readouterr().err


def test_cli_reports_an_os_error_during_the_run_with_the_failure_exit_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A repository that becomes unwritable while training runs: a message and exit 1, not a traceback. The
    TensorFlow modules `_run` imports are stood in for, so this stays a unit test."""

    def run_training(cfg: config.TrainConfig, enforce_gate: bool = False) -> None:
        raise PermissionError(13, "Permission denied", str(cfg.repository / "digits"))

    fakes = {
        "kerve.training.train": {"run_training": run_training},
        "kerve.training.publish": {"ExportError": type("ExportError", (RuntimeError,), {})},
        "kerve.training.tune": {"TuningError": type("TuningError", (RuntimeError,), {})},
    }
    for name, attributes in fakes.items():
        module = types.ModuleType(name)
        module.__dict__.update(attributes)
        monkeypatch.setitem(sys.modules, name, module)
    assert cli.main(_args("--model-repository", str(tmp_path))) == cli.EXIT_FAILED
    assert cli.retrain_main(_args("--model-repository", str(tmp_path), "--config", "/dev/null")) == cli.EXIT_FAILED
    err = capsys.readouterr().err
    assert f"kerve train: error: [Errno 13] Permission denied: '{tmp_path / 'digits'}'" in err
    assert "Traceback" not in err


# ------------------------------------------------------------------------------------------ npz files (#5)


def test_empty_and_truncated_npz_files_are_data_errors_naming_the_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    good = tmp_path / "good.npz"
    np.savez_compressed(good, x=np.zeros((8, 3)), y=np.arange(8) % 2)
    truncated = tmp_path / "trunc.npz"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    for path in (empty, truncated):
        with pytest.raises(data.DataError, match=f"cannot read {path} as .npz"):
            data.load(config.DataConfig(source="npz", path=path))


@pytest.mark.parametrize(("low", "high"), [(0, 7), (-1, 3)])
def test_npz_token_ids_outside_the_vocabulary_are_data_errors(tmp_path: Path, low: int, high: int) -> None:
    path = tmp_path / "text.npz"
    x = np.zeros((10, 4), np.int64)
    x[0, 0], x[1, 1] = low, high
    np.savez(path, x=x, y=np.arange(10) % 2, vocabulary=np.array(["", "[UNK]", "a", "b", "c"]))
    with pytest.raises(data.DataError, match=rf"{path}: token ids must be in \[0, 5\).*from {low} to {high}"):
        data.load(config.DataConfig(source="npz", path=path))


def test_npz_token_ids_inside_the_vocabulary_load(tmp_path: Path) -> None:
    path = tmp_path / "text.npz"
    x = np.arange(40, dtype=np.int64).reshape(10, 4) % 5
    np.savez(path, x=x, y=np.arange(10) % 2, vocabulary=np.array(["", "[UNK]", "a", "b", "c"]))
    assert data.load(config.DataConfig(source="npz", path=path)).kind == "text"


# ------------------------------------------------------------------------------------------ strategy pool (#6)


@pytest.mark.parametrize(
    ("requested", "gpus", "cpus", "kind", "devices", "reason"),
    [
        ("auto", 2, 2, "mirrored", "GPU", "2 GPUs"),  # GPUs first: the reason named them, the CPUs ran
        ("auto", 2, 0, "mirrored", "GPU", "2 GPUs"),
        ("auto", 1, 2, "mirrored", "CPU", "2 logical CPU devices"),
        ("auto", 0, 3, "mirrored", "CPU", "3 logical CPU devices"),
        ("mirrored", 1, 0, "mirrored", "GPU", "requested in the configuration; over 1 GPU"),
        ("mirrored", 1, 2, "mirrored", "CPU", "requested in the configuration; over 2 logical CPU devices"),
        ("mirrored", 0, 0, "mirrored", "CPU", "requested in the configuration; over 1 CPU device"),
        ("mirrored", 4, 2, "mirrored", "GPU", "requested in the configuration; over 4 GPUs"),
        ("auto", 1, 0, "default", "", "one device"),
        ("default", 4, 2, "default", "", "requested in the configuration"),
    ],
)
def test_the_mirrored_device_pool_is_chosen_with_the_strategy(
    requested: str, gpus: int, cpus: int, kind: str, devices: str, reason: str
) -> None:
    assert strategy.choose(requested, {}, None, gpus, cpus) == strategy.Choice(kind, reason, devices)
