"""MirroredStrategy over two logical CPU devices, end to end: train -> export -> `kerve serve` -> predict.

Training runs in a subprocess: logical devices must be configured before TensorFlow initialises, which this
test process has long done.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import running_server
from kerve import repository
from kerve.client import Client
from kerve.training import data

pytestmark = pytest.mark.integration


def test_mirrored_strategy_on_two_cpu_devices_trains_exports_and_serves(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    cfg = {
        "repository": str(repo),
        "model_name": "digits",
        "data": {"source": "digits"},
        "family": "cnn",
        "tuner": "random",
        "max_trials": 1,
        "epochs": 2,
        "batch_size": 32,
        "strategy": "mirrored",
        "cpu_devices": 2,
        "verbose": 0,
        "work_dir": str(tmp_path / "work"),
    }
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(cfg))
    proc = subprocess.run(
        [sys.executable, "-m", "kerve", "train", "--config", str(tmp_path / "train.yaml")],
        capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Strategy: MirroredStrategy" in proc.stdout and "2 replica(s)" in proc.stdout

    meta = repository.read_metadata(repo / "digits" / "1")
    assert meta["strategy"] == {
        "name": "MirroredStrategy",
        "kind": "mirrored",
        "requested": "mirrored",
        "reason": "requested in the configuration; over 2 logical CPU devices",
        "replicas": 2,
        "devices": ["/job:localhost/replica:0/task:0/device:CPU:0", "/job:localhost/replica:0/task:0/device:CPU:1"],
    }
    output = meta["signature"]["outputs"][0]
    d = data.load_digits_split(seed=0)
    with running_server(repo, tmp_path) as (target, _proc), Client(target) as client:
        result = client.infer("digits", {"image": d.x_test})
        top = client.classify("digits", {"image": d.x_test[:3]}, top_k=2)
    assert result.model_version in ("1", 1)
    # the class names training recorded in kerve.json name the classes in classification answers
    assert top.labels is not None
    assert top.labels.tolist() == [[meta["dataset"]["class_names"][i] for i in row] for row in top.indices]
    probabilities = result.outputs[output]
    assert probabilities.shape == (len(d.y_test), 10)
    accuracy = float((probabilities.argmax(axis=1) == d.y_test).mean())
    assert accuracy == pytest.approx(meta["metrics"]["accuracy"], abs=1e-6)


_MULTIWORKER = """
import json, os, socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
cluster = {"cluster": {"worker": [f"127.0.0.1:{port}"]}, "task": {"type": "worker", "index": 0}}
os.environ["TF_CONFIG"] = json.dumps(cluster)
from kerve.training import strategy
made, described = strategy.create("auto", 0)
print(described["name"], described["kind"], described["replicas"])
"""


def test_auto_under_tf_config_makes_a_multiworker_strategy() -> None:
    """TF_CONFIG set (one worker here, so no peer is needed): `auto` builds MultiWorkerMirroredStrategy, which
    must exist before anything starts TensorFlow's runtime (listing logical devices does)."""
    proc = subprocess.run([sys.executable, "-c", _MULTIWORKER], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    name, kind, replicas = proc.stdout.split()[-3:]
    assert (kind, replicas) == ("multiworker", "1") and name in (
        "MultiWorkerMirroredStrategy",
        "CollectiveAllReduceStrategy",
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_two_workers_train_together_and_only_the_chief_publishes(tmp_path: Path) -> None:
    """Two `kerve train` processes under one TF_CONFIG (MultiWorkerMirroredStrategy, which Keras 3's own fit
    cannot run): both finish, one version is published, by worker 0, and it serves what it recorded."""
    repo = tmp_path / "repo"
    workers = [f"127.0.0.1:{_free_port()}" for _ in range(2)]
    procs = []
    for index in range(2):
        cfg = {
            "repository": str(repo), "model_name": "digits", "data": {"source": "digits"}, "family": "mlp",
            "tuner": "random", "max_trials": 1, "epochs": 2, "batch_size": 64, "verbose": 0,
            "work_dir": str(tmp_path / f"work{index}"),
        }  # fmt: skip
        (tmp_path / f"train{index}.yaml").write_text(yaml.safe_dump(cfg))
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        env = {**os.environ, "TF_CONFIG": json.dumps(tf_config)}
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "kerve", "train", "--config", str(tmp_path / f"train{index}.yaml")],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )  # fmt: skip
        )
    results = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=400)
            results.append((proc.returncode, out, err))
    finally:
        for proc in procs:
            proc.kill()
    for returncode, out, err in results:
        assert returncode == 0, (out + err)[-4000:]
    chief_out, worker_out = results[0][1], results[1][1]
    assert "2 replica(s), worker 0 (chief)" in chief_out and "Published version 1" in chief_out
    assert "2 replica(s), worker 1" in worker_out and "the chief gates and publishes" in worker_out
    assert "Published" not in worker_out
    assert repository.list_versions(repo, "digits") == [1]
    meta = repository.read_metadata(repo / "digits" / "1")
    assert meta["strategy"]["kind"] == "multiworker" and meta["strategy"]["replicas"] == 2
    assert (meta["strategy"]["task"], meta["strategy"]["chief"]) == ("worker 0", True)

    d = data.load_digits_split(seed=0)
    with running_server(repo, tmp_path) as (target, _proc), Client(target) as client:
        result = client.infer("digits", {"image": d.x_test})
    probabilities = result.outputs[meta["signature"]["outputs"][0]]
    accuracy = float((probabilities.argmax(axis=1) == d.y_test).mean())
    assert accuracy == pytest.approx(meta["metrics"]["accuracy"], abs=1e-6)
    assert accuracy > 0.5  # two epochs of the two workers' steps learned something: 0.1 is chance
