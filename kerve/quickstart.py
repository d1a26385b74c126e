"""`kerve quickstart`: the whole path on the built-in digits data, as a user would run it.

Train (KerasTuner search) -> publish version N+1 into ./models -> start `kerve serve` as a separate process ->
send every held-out test image over gRPC with the SDK -> print accuracy over gRPC next to the in-process
accuracy recorded at training time -> SIGTERM the server and check it drained cleanly.

Exit codes, as `kerve train`'s: 0 done; 2 bad input (the repository cannot be written, the port cannot be
listened on, an invalid training configuration), found before any training; 1 the run failed (training, the
server, a request). Either failure is one `kerve quickstart: ...` line on stderr, not a traceback.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from kerve.client import Client, KerveError

if TYPE_CHECKING:
    from kerve.training.train import TrainResult

MODEL = "digits"
HOST = "127.0.0.1"  # where the quickstart server listens (start_server)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2


class BadInput(Exception):
    """A flag or path the run cannot use; reported before any training (exit 2)."""


def free_port(host: str = HOST) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def check_port(port: int, host: str = HOST) -> None:
    """BadInput unless a server could listen on host:port now. SO_REUSEADDR as gRPC sets it: a port left in
    TIME_WAIT by an earlier run is usable, one another process listens on is not."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            sock.listen(1)
        except OSError as exc:
            raise BadInput(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def prepare_repository(path: Path) -> Path:
    """The repository as an absolute path, created if needed; BadInput if it cannot be."""
    repository = path.resolve()
    try:
        repository.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInput(f"cannot create model repository {repository}: {exc.strerror or exc}") from None
    return repository


def _error(message: str) -> None:
    print(f"kerve quickstart: {message}", file=sys.stderr)


def start_server(
    repository: Path, port: int, log_path: Path, extra_args: Sequence[str] = ()
) -> subprocess.Popen[bytes]:
    """`kerve serve` on loopback without metrics; `extra_args` come last, so they can override those flags."""
    cmd = [
        sys.executable, "-m", "kerve", "serve",
        "--model-repository", str(repository), "--host", "127.0.0.1", "--port", str(port), "--metrics-port", "0",
        *extra_args,
    ]  # fmt: skip
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
    with open(log_path, "wb") as log:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)


def wait_until_ready(
    client: Client, proc: subprocess.Popen[bytes], deadline_s: float, model: str | None = None
) -> None:
    """Poll readiness (of the server, or of one model) with a deadline, failing fast if the process died."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode} before becoming ready")
        if client.ready(model, timeout=1.0):
            return
        time.sleep(0.05)
    raise TimeoutError(f"server not ready after {deadline_s:.0f}s")


def run(args: argparse.Namespace) -> int:
    """The whole quickstart; returns the exit code (module docstring) and never raises for bad input or a failed
    run."""
    from kerve.repository import RepositoryError
    from kerve.training.config import ConfigError, TrainConfig  # no TensorFlow yet

    try:  # everything a flag can get wrong, before minutes of training
        config = TrainConfig(
            repository=args.model_repository, model_name=MODEL, max_trials=args.max_trials, epochs=args.epochs
        )
        config.validate()  # the repository among the rest: writable, or creatable
        config.repository = prepare_repository(args.model_repository)
        if args.port:
            check_port(args.port)
    except ConfigError as exc:
        _error(f"invalid configuration: {exc}")
        return EXIT_BAD_INPUT
    except BadInput as exc:
        _error(str(exc))
        return EXIT_BAD_INPUT
    repository = config.repository

    from kerve.training.train import run_training

    print(f"[1/4] training {MODEL!r} on the built-in digits dataset -> {repository}")
    try:
        result = run_training(config)
    except ConfigError as exc:  # found once the data is loaded, or the repository is under the temp dir
        _error(f"invalid configuration: {exc}")
        return EXIT_BAD_INPUT
    except (ValueError, RuntimeError, OSError, RepositoryError) as exc:  # data, search, export, publish
        _error(f"error: training failed: {exc}")
        return EXIT_FAILED
    print(f"      published version {result.version} at {result.path}")

    try:
        if args.port:
            check_port(args.port)  # again: the training took minutes, another process may have taken it
        port = args.port or free_port()
    except BadInput as exc:
        _error(str(exc))
        return EXIT_FAILED
    log_path = Path(tempfile.gettempdir()) / f"kerve-quickstart-server-{port}.log"
    print(f"[2/4] starting kerve serve on {HOST}:{port} (log: {log_path})")
    try:
        return _serve_and_predict(repository, port, log_path, result)
    except (RuntimeError, OSError, KerveError) as exc:  # TimeoutError is an OSError
        _error(f"error: {exc}; server log: {log_path}")
        return EXIT_FAILED


def _serve_and_predict(repository: Path, port: int, log_path: Path, result: TrainResult) -> int:
    from kerve.training.data import load_digits_split

    proc = start_server(repository, port, log_path)
    try:
        with Client(f"{HOST}:{port}", timeout=30.0) as client:
            wait_until_ready(client, proc, 180.0, MODEL)
            meta = client.metadata(MODEL)
            print(
                f"      ready: {MODEL} versions {list(meta.versions)}, input {meta.inputs[0].name} "
                f"{meta.inputs[0].datatype} {list(meta.inputs[0].shape)}"
            )

            data = load_digits_split()
            print(f"[3/4] sending {len(data.x_test)} test images, one request each, 8 at a time")
            started = time.monotonic()

            def predict_one(i: int) -> tuple[int, str]:
                res = client.infer(MODEL, {data.input_name: data.x_test[i : i + 1]})
                (probs,) = res.outputs.values()
                return int(np.argmax(probs[0])), res.model_version

            with ThreadPoolExecutor(8) as pool:
                answers = list(pool.map(predict_one, range(len(data.x_test))))
            elapsed = time.monotonic() - started
            predictions = np.array([a[0] for a in answers])
            served_versions = sorted({a[1] for a in answers})
            accuracy = float(np.mean(predictions == data.y_test))
    finally:
        print("[4/4] stopping the server (SIGTERM, graceful drain)")
        proc.terminate()
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
    trained_accuracy = result.metrics.get("accuracy")
    print()
    print(f"  model                 {MODEL} (version {', '.join(served_versions)})")
    print(f"  test images           {len(predictions)}")
    print(f"  accuracy over gRPC    {accuracy:.4f}")
    if trained_accuracy is not None:
        print(f"  accuracy in process   {float(trained_accuracy):.4f}")
    print(f"  requests/s            {len(predictions) / elapsed:.0f}")
    print(f"  server exit code      {code}")
    if code != 0:
        _error(f"error: the server did not exit cleanly (code {code}); server log: {log_path}")
        return EXIT_FAILED
    return EXIT_OK
