"""`kerve quickstart` and `kerve predict --save-dir` on bad input: one `kerve <command>: ...` line and an exit code
(2 bad input, 1 a failed run), never a traceback, and bad input found before the expensive part (training, the
request). No TensorFlow: training is replaced by fakes, or must not be reached at all."""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kerve import cli, quickstart
from kerve.training.config import ConfigError


def _quickstart_args(repository: Path, port: int = 0) -> argparse.Namespace:
    return argparse.Namespace(model_repository=repository, port=port, max_trials=1, epochs=1)


@pytest.fixture
def no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """Importing the training pipeline fails: the code under test must return before it."""
    monkeypatch.setitem(sys.modules, "kerve.training.train", None)


def _fake_training(monkeypatch: pytest.MonkeyPatch, run_training: Any) -> None:
    module = types.ModuleType("kerve.training.train")
    module.run_training = run_training  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "kerve.training.train", module)


# --------------------------------------------------------------------------------------------------------
# kerve quickstart
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--max-trials", "0"], "argument --max-trials: must be >= 1, got 0"),
        (["--epochs", "-3"], "argument --epochs: must be >= 1, got -3"),
        (["--epochs", "two"], "argument --epochs: expected an integer, got 'two'"),
        (["--port", "70000"], "argument --port: must be 0..65535"),
        (["--port", "-1"], "argument --port: must be 0..65535"),
        (["--port", "http"], "argument --port: expected a port number, got 'http'"),
    ],
)
def test_quickstart_flags_are_checked_by_the_parser(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["quickstart", *flags])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"kerve quickstart: error: {message}" in err
    assert "Traceback" not in err


def test_quickstart_parser_accepts_the_port_range() -> None:
    parser = cli.build_parser()
    assert parser.parse_args(["quickstart", "--port", "0"]).port == 0
    assert parser.parse_args(["quickstart", "--port", "65535"]).port == 65535


@pytest.mark.parametrize("where", ["file", "under_file", "proc"])
def test_quickstart_unusable_repository_is_bad_input(
    where: str, tmp_path: Path, no_training: None, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "a-file"
    file.write_text("x")
    repository = {"file": file, "under_file": file / "models", "proc": Path("/proc/kerve-nope")}[where]
    assert quickstart.run(_quickstart_args(repository)) == quickstart.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith("kerve quickstart: invalid configuration: repository ")
    assert str(repository) in err and err.count("\n") == 1


def test_quickstart_taken_port_is_bad_input_before_training(
    tmp_path: Path, no_training: None, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as holder:
        holder.bind((quickstart.HOST, 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        assert quickstart.run(_quickstart_args(tmp_path / "models", port)) == quickstart.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith(f"kerve quickstart: cannot listen on {quickstart.HOST}:{port}: ")
    assert "[1/4]" not in capsys.readouterr().out


def test_check_port_accepts_a_free_port() -> None:
    quickstart.check_port(quickstart.free_port())
    with socket.socket() as holder:  # held on every address: the loopback one is taken too
        holder.bind(("0.0.0.0", 0))
        holder.listen(1)
        with pytest.raises(quickstart.BadInput, match="cannot listen"):
            quickstart.check_port(holder.getsockname()[1])


@pytest.mark.parametrize(
    ("error", "code", "message"),
    [
        (RuntimeError("the search found no trial that trained"), 1, "error: training failed: the search found"),
        (ValueError("labels must be integers"), 1, "error: training failed: labels must be integers"),
        (ConfigError("cv_folds 9 is larger than the smallest class"), 2, "invalid configuration: cv_folds 9"),
    ],
)
def test_quickstart_failed_training_is_one_line(
    error: Exception,
    code: int,
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def run_training(config: Any) -> Any:
        raise error

    _fake_training(monkeypatch, run_training)
    assert quickstart.run(_quickstart_args(tmp_path / "models")) == code
    err = capsys.readouterr().err
    assert err.startswith(f"kerve quickstart: {message}") and err.count("\n") == 1


def test_quickstart_server_that_dies_is_a_failed_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    published = tmp_path / "models" / "digits" / "1"
    _fake_training(monkeypatch, lambda config: types.SimpleNamespace(version=1, path=published, metrics={}))

    def start_server(repository: Path, port: int, log_path: Path) -> subprocess.Popen[bytes]:
        log_path.write_text("cannot listen on 127.0.0.1: another process holds the port\n")
        return subprocess.Popen([sys.executable, "-c", "raise SystemExit(2)"])

    monkeypatch.setattr(quickstart, "start_server", start_server)
    assert quickstart.run(_quickstart_args(tmp_path / "models")) == quickstart.EXIT_FAILED
    err = capsys.readouterr().err
    assert err.startswith("kerve quickstart: error: server exited with code 2 before becoming ready; server log: ")
    assert "Traceback" not in err


# --------------------------------------------------------------------------------------------------------
# kerve predict --save-dir
# --------------------------------------------------------------------------------------------------------


class _FakeClient:
    """What _cmd_predict uses of kerve.client.Client; `on_infer` runs before the answer."""

    def __init__(self, on_infer: Any = None) -> None:
        self.calls = 0
        self.on_infer = on_infer

    def __enter__(self) -> _FakeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def infer(self, model: str, inputs: dict[str, np.ndarray], **kwargs: Any) -> Any:
        self.calls += 1
        if self.on_infer is not None:
            self.on_infer()
        probs = np.array([[0.1, 0.9], [0.8, 0.2]], dtype=np.float32)
        return types.SimpleNamespace(model_name=model, model_version="1", outputs={"probs": probs})


def _predict(tmp_path: Path, save_dir: Path) -> int:
    npy = tmp_path / "x.npy"
    np.save(npy, np.zeros((2, 4), dtype=np.float32))
    return cli.main(["predict", "--model", "m", "--input", f"x={npy}", "--save-dir", str(save_dir)])


@pytest.mark.parametrize("where", ["file", "under_file", "proc"])
def test_predict_unusable_save_dir_is_bad_input_before_the_request(
    where: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    client = _FakeClient()
    monkeypatch.setattr(cli, "_client", lambda args: client)
    file = tmp_path / "a-file"
    file.write_text("x")
    save_dir = {"file": file, "under_file": file / "out", "proc": Path("/proc/kerve-nope")}[where]
    assert _predict(tmp_path, save_dir) == 2
    assert client.calls == 0, "no inference for outputs that could not be saved"
    err = capsys.readouterr().err
    assert err.startswith(f"kerve predict: cannot write to {save_dir}: ") and err.count("\n") == 1
    if where == "file":
        assert err.rstrip().endswith("not a directory")


def test_predict_saves_outputs_into_a_new_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "_client", lambda args: _FakeClient())
    save_dir = tmp_path / "out" / "nested"
    assert _predict(tmp_path, save_dir) == 0
    saved = np.load(save_dir / "probs.npy")
    assert saved.dtype == np.float32
    np.testing.assert_array_equal(saved, np.array([[0.1, 0.9], [0.8, 0.2]], dtype=np.float32))
    assert "probs argmax: [1, 0]" in capsys.readouterr().out


def test_predict_save_failing_after_the_request_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    save_dir = tmp_path / "out"

    def replace_dir_with_a_file() -> None:  # what changes between the check and the save
        save_dir.rmdir()
        save_dir.write_text("x")

    monkeypatch.setattr(cli, "_client", lambda args: _FakeClient(replace_dir_with_a_file))
    assert _predict(tmp_path, save_dir) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"kerve predict: cannot write to {save_dir}: ") and "Traceback" not in err
