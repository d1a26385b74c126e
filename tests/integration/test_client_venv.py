"""`pip install kerve` without extras gives a working client with no TensorFlow in the environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

CLIENT_SCRIPT = """
import importlib.util, json, sys
import numpy as np
from kerve.client import Client, NotFoundError
assert importlib.util.find_spec("tensorflow") is None, "tensorflow must not be installed"
assert importlib.util.find_spec("keras") is None, "keras must not be installed"
images = np.load(sys.argv[2])
with Client(sys.argv[1]) as client:
    assert client.ready("cnn")
    out = client.predict("cnn", {"image": images})["output_0"]
    try:
        client.predict("missing", {"image": images})
    except NotFoundError as exc:
        code = exc.code
print(json.dumps({"hex": out.tobytes().hex(), "code": code}))
"""


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    env_dir = tmp_path_factory.mktemp("client-venv")
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    python = env_dir / "bin" / "python"
    constraints = ROOT / "requirements" / "constraints.txt"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-c", str(constraints), str(ROOT)],
        check=True,
        timeout=600,
        env={**os.environ, "PIP_NO_INPUT": "1"},
    )
    return env_dir


def test_client_only_install_has_no_tensorflow(client_venv: Path) -> None:
    python = client_venv / "bin" / "python"
    listed = subprocess.run([str(python), "-m", "pip", "list", "--format=json"], check=True, capture_output=True)
    names = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert {"kerve", "grpcio", "protobuf", "numpy"} <= names
    assert not names & {"tensorflow", "keras", "keras-tuner", "tensorboard", "scikit-learn"}


def test_client_only_install_predicts_against_server(client_venv: Path, server: str, in_process, tmp_path) -> None:
    images = np.random.default_rng(3).random((2, 8, 8, 1), dtype=np.float32)
    np.save(tmp_path / "images.npy", images)
    result = subprocess.run(
        [str(client_venv / "bin" / "python"), "-c", CLIENT_SCRIPT, server, str(tmp_path / "images.npy")],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,  # not the repo root, whose kerve/ folder would shadow the installed package
    )
    payload = json.loads(result.stdout.strip().splitlines()[-1])
    assert payload["code"] == "NOT_FOUND"
    assert bytes.fromhex(payload["hex"]) == in_process("cnn", {"image": images})["output_0"].tobytes()

    cli = subprocess.run(
        [str(client_venv / "bin" / "kerve"), "predict", "--target", server, "--model", "cnn",
         "--input", f"image={tmp_path / 'images.npy'}", "--save-dir", str(tmp_path / "out")],
        check=True, capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert "model cnn version 1" in cli.stdout
    saved = np.load(tmp_path / "out" / "output_0.npy")
    assert saved.tobytes() == in_process("cnn", {"image": images})["output_0"].tobytes()
    models = subprocess.run(
        [str(client_venv / "bin" / "kerve"), "models", "--target", server],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert "cnn" in models.stdout and "READY" in models.stdout
    serve = subprocess.run(
        [str(client_venv / "bin" / "kerve"), "serve", "--model-repository", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert serve.returncode == 2 and "install the [server] extra" in serve.stderr


def test_main_env_python_is_not_the_venv(client_venv: Path) -> None:
    assert Path(sys.executable).resolve() != (client_venv / "bin" / "python").resolve()
