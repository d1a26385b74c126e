"""Helpers shared by the integration tests (importable as `helpers`; tests/ is on sys.path)."""

from __future__ import annotations

import contextlib
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

from kerve.client import Client
from kerve.quickstart import free_port, start_server, wait_until_ready


def build_models(repo: Path) -> None:
    """A small CNN on 8x8x1 images and a two-input model (float features + int64 ids)."""
    import keras

    keras.utils.set_random_seed(7)
    image = keras.Input(shape=(8, 8, 1), name="image")
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(image)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Flatten()(x)
    probs = keras.layers.Dense(10, activation="softmax")(x)
    keras.Model(image, probs).export(str(repo / "cnn" / "1"), format="tf_saved_model", verbose=False)

    features = keras.Input(shape=(3,), name="features")
    ids = keras.Input(shape=(2,), dtype="int64", name="ids")
    embedded = keras.layers.Flatten()(keras.layers.Embedding(16, 2)(ids))
    merged = keras.layers.Concatenate()([features, embedded])
    score = keras.layers.Dense(1)(merged)
    keras.Model({"features": features, "ids": ids}, score).export(
        str(repo / "pair" / "1"), format="tf_saved_model", verbose=False
    )


@contextlib.contextmanager
def running_server(repo: Path, log_dir: Path, *extra: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    proc = start_server(repo, port, log_dir / f"server-{port}.log")
    target = f"127.0.0.1:{port}"
    try:
        with Client(target) as client:
            wait_until_ready(client, proc, 120.0)
        yield target, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
