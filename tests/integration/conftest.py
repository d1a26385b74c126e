"""Fixtures: tiny real SavedModels made here, and a real `kerve serve` process on a free loopback port."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from subprocess import Popen

import numpy as np
import pytest

from helpers import build_models, running_server


@pytest.fixture(scope="session")
def model_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("repo")
    build_models(repo)
    return repo


@pytest.fixture(scope="session")
def server_process(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Popen[bytes]]]:
    """The session's default server: its target and its process (for what only /proc shows)."""
    with running_server(model_repo, tmp_path_factory.mktemp("logs")) as (target, proc):
        yield target, proc


@pytest.fixture(scope="session")
def server(server_process: tuple[str, Popen[bytes]]) -> str:
    return server_process[0]


@pytest.fixture(scope="session")
def in_process(model_repo: Path):  # noqa: ANN201 - returns a callable
    """Call a version's serving_default signature directly, the reference for bit-identical checks."""
    import tensorflow as tf

    cache = {}

    def call(model: str, inputs: dict[str, np.ndarray], version: int = 1) -> dict[str, np.ndarray]:
        if (model, version) not in cache:
            cache[model, version] = tf.saved_model.load(str(model_repo / model / str(version)))
        fn = cache[model, version].signatures["serving_default"]
        return {k: v.numpy() for k, v in fn(**{k: tf.constant(v) for k, v in inputs.items()}).items()}

    return call
