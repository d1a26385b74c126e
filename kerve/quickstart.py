"""`kerve quickstart`: the whole path on the built-in digits data, as a user would run it.

Train (KerasTuner search) -> publish version N+1 into ./models -> start `kerve serve` as a separate process ->
send every held-out test image over gRPC with the SDK -> print accuracy over gRPC next to the in-process
accuracy recorded at training time -> SIGTERM the server and check it drained cleanly.
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

import numpy as np

from kerve.client import Client

MODEL = "digits"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


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
    from kerve.training.data import load_digits_split
    from kerve.training.train import TrainConfig, run_training

    repository: Path = args.model_repository.resolve()
    repository.mkdir(parents=True, exist_ok=True)
    print(f"[1/4] training {MODEL!r} on the built-in digits dataset -> {repository}")
    result = run_training(
        TrainConfig(repository=repository, model_name=MODEL, max_trials=args.max_trials, epochs=args.epochs)
    )
    print(f"      published version {result.version} at {result.path}")

    port = args.port or free_port()
    log_path = Path(tempfile.gettempdir()) / f"kerve-quickstart-server-{port}.log"
    print(f"[2/4] starting kerve serve on 127.0.0.1:{port} (log: {log_path})")
    proc = start_server(repository, port, log_path)
    try:
        with Client(f"127.0.0.1:{port}", timeout=30.0) as client:
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
        print(f"server did not exit cleanly; see {log_path}", file=sys.stderr)
        return 1
    return 0
