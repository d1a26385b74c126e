"""bench.peers' own logic, without the peers: how it sets MLServer up, compares answers and prints the table."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from bench import peers


def test_mlserver_gets_loopback_ports_and_a_savedmodel_runtime_per_model(tmp_path: Path) -> None:
    models = {"seed_cnn": tmp_path / "m" / "seed_cnn" / "1", "resnet": tmp_path / "m" / "resnet" / "1"}
    repo = peers.mlserver_repository(tmp_path / "plain", models, (9001, 9002, 9003), batching=False)
    settings = json.loads((repo / "settings.json").read_text())
    assert settings == {"host": "127.0.0.1", "grpc_port": 9001, "http_port": 9002, "metrics_port": 9003}
    model = json.loads((repo / "seed_cnn" / "model-settings.json").read_text())
    assert model == {
        "name": "seed_cnn",
        "implementation": "mlserver_savedmodel.SavedModel",
        "parameters": {"uri": str(models["seed_cnn"])},
    }  # MLServer's defaults otherwise: no adaptive batching
    batched = peers.mlserver_repository(tmp_path / "batched", models, (1, 2, 3), batching=True)
    model = json.loads((batched / "resnet" / "model-settings.json").read_text())
    assert (model["max_batch_size"], model["max_batch_time"]) == (64, 0.001)  # kerve's defaults


def test_peer_commands_and_names() -> None:
    assert peers.peer_list("kserve,mlserver") == ["kserve", "mlserver"]
    with pytest.raises(argparse.ArgumentTypeError, match="unknown peer"):
        peers.peer_list("triton")
    with pytest.raises(FileNotFoundError, match="setup-peers.sh"):
        peers.peer_python(Path("/nonexistent"), "kserve")
    cmd = peers.peer_command("kserve", Path("/v/bin/python"), Path("/w"), {"a": Path("/m/a/1")}, (1, 2, 3))
    assert cmd[2:] == ["--grpc_port", "1", "--http_port", "2", "--model=a=/m/a/1"]


def test_answers_are_compared_to_the_last_bit() -> None:
    ref = {"y": np.array([[0.25, 0.5]], np.float32)}
    assert peers.compare(ref, {"y": ref["y"].copy()}) == "same"
    assert peers.compare(ref, {"y": np.array([[0.25, 0.75]], np.float32)}) == "max |d| 0.25"
    assert peers.compare(ref, {"z": ref["y"]}) == "outputs ['z'] instead of ['y']"
    assert peers.compare(ref, {"y": ref["y"].astype(np.float64)}) == "y: float64[1, 2] instead of float32[1, 2]"


def test_the_table_puts_kerve_over_each_peer() -> None:
    entry = {"samples_per_s": 1000.0, "p50_ms": 1.0, "p99_ms": 2.0, "errors": 0}
    slow = {**entry, "samples_per_s": 400.0, "errors": 3}
    results = {
        "inprocess_best": {"seed_cnn": 5000.0},
        "cases": {"seed_cnn/c8": {"kerve": entry, "mlserver": slow, "kerve_over": {"mlserver": 2.5}}},
    }
    lines = peers.render(results, ["kerve", "mlserver"]).splitlines()
    assert (
        lines[0] == "| case | in-process best/s | kerve /s (p50, p99 ms) | mlserver /s (p50, p99 ms) | kerve/mlserver |"
    )
    assert lines[2] == "| seed_cnn/c8 | 5000 | 1000 (1.00, 2.00) | 400 (1.00, 2.00) 3 errors | 2.50x |"
