"""Fixtures for model lifecycle and TF Serving tests: a repository of many tiny models ("the zoo") served by one
polling server, and a small repository served with explicit model control."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import helpers
from kerve.quickstart import free_port

POLL_INTERVAL_S = "0.1"
HEAD_CLASSES = {"animal": ("cat", "dog", "bird"), "color": ("red", "blue")}  # the "heads" model's label files


@dataclass(frozen=True)
class Served:
    repo: Path
    target: str
    metrics_url: str
    log: Path


def _copies(source: Path, repo: Path, model: str, versions: tuple[int, ...], config: str = "") -> None:
    for version in versions:
        shutil.copytree(source, repo / model / str(version))
    if config:
        (repo / model / "config.yaml").write_text(config)


@pytest.fixture(scope="session")
def zoo_repo(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Models with different signatures, plus one model per lifecycle scenario (so tests do not interfere)."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    from kerve.training.publish import _write_warmup

    repo = tmp_path_factory.mktemp("zoo")
    cnn, pair = model_repo / "cnn" / "1", model_repo / "pair" / "1"
    _copies(cnn, repo, "cnn", (1, 2), "version_policy: all\nlabels: {stable: 1, canary: 2}\n")
    _copies(pair, repo, "pair", (1,))
    helpers.build_text_lstm(repo / "text" / "1")
    helpers.build_strings_model(repo / "strings" / "1")
    helpers.build_examples_model(repo / "examples" / "1")
    _copies(cnn, repo, "live", (1,))
    _copies(cnn, repo, "iso", (1,))
    _copies(cnn, repo, "gone", (1, 2), "version_policy: all\n")
    _copies(cnn, repo, "latest2", (1, 2, 3), "version_policy: {latest: 2}\n")
    _copies(cnn, repo, "every", (1, 2, 3), "version_policy: all\n")
    _copies(cnn, repo, "some", (1, 2, 3), "version_policy: {specific: [1, 3]}\n")
    _copies(cnn, repo, "labeled", (1, 2), "labels: {stable: 1, canary: 2}\n")
    _copies(cnn, repo, "badcfg", (1,), "version_policy: {latest: 0}\n")
    _copies(cnn, repo, "classes", (1,))
    (repo / "classes" / "1" / "labels.txt").write_text("".join(f"{name}\n" for name in helpers.CLASS_NAMES))
    helpers.build_two_heads_model(repo / "heads" / "1")
    helpers.build_constant_model(repo / "constant" / "1")
    helpers.build_spectrum_model(repo / "spectrum" / "1")
    helpers.build_whole_call_outputs_model(repo / "whole" / "1")
    shutil.copytree(repo / "examples" / "1", repo / "warmmulti" / "1")
    _write_multi_inference_warmup(repo / "warmmulti" / "1")
    (repo / "heads" / "1" / "animal.labels.txt").write_text("".join(f"{name}\n" for name in HEAD_CLASSES["animal"]))
    (repo / "heads" / "1" / "color.labels.txt").write_text("".join(f"{name}\n" for name in HEAD_CLASSES["color"]))
    _copies(cnn, repo, "warm", (1,))
    _write_warmup(repo / "warm" / "1", "warm", "image", np.zeros((2, 8, 8, 1), np.float32))  # kerve train's writer
    _copies(cnn, repo, "warmbad", (1,))
    bad = predict_pb2.PredictRequest()
    bad.inputs["pixels"].CopyFrom(tf.make_tensor_proto(np.zeros((1, 8, 8, 1), np.float32)))
    helpers.write_warmup(repo / "warmbad" / "1", [bad])
    return repo


def _write_multi_inference_warmup(version_dir: Path) -> None:
    """One MultiInferenceLog record (classify and regress tasks over two tf.Examples), as TF Serving replays."""
    import tensorflow as tf
    from tensorflow_serving.apis import inference_pb2, prediction_log_pb2

    request = inference_pb2.MultiInferenceRequest()
    for signature, method in (("classify", helpers.CLASSIFY_METHOD), ("regress", helpers.REGRESS_METHOD)):
        task = request.tasks.add(method_name=method)
        task.model_spec.name, task.model_spec.signature_name = "whatever", signature
    for x in ((1.0, 2.0), (0.5, -1.0)):
        request.input.example_list.examples.add().CopyFrom(helpers.example(x))
    log = prediction_log_pb2.PredictionLog(multi_inference_log=prediction_log_pb2.MultiInferenceLog(request=request))
    target = version_dir / "assets.extra" / "tf_serving_warmup_requests"
    target.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(target)) as writer:
        writer.write(log.SerializeToString())


@pytest.fixture(scope="session")
def zoo(zoo_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    logs = tmp_path_factory.mktemp("zoo-logs")
    metrics_port = free_port()
    extra = ("--poll-interval", POLL_INTERVAL_S, "--metrics-port", str(metrics_port))
    with running(zoo_repo, logs, *extra) as (target, log):
        yield Served(zoo_repo, target, f"http://127.0.0.1:{metrics_port}/metrics", log)


@pytest.fixture(scope="module")
def explicit(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    repo = tmp_path_factory.mktemp("explicit")
    _copies(model_repo / "cnn" / "1", repo, "a", (1,))
    _copies(model_repo / "pair" / "1", repo, "b", (1,))
    with running(repo, tmp_path_factory.mktemp("explicit-logs"), "--model-control", "explicit") as (target, log):
        yield Served(repo, target, "", log)


@contextlib.contextmanager
def running(repo: Path, logs: Path, *extra: str) -> Iterator[tuple[str, Path]]:
    """helpers.running_server, also giving the server's log file."""
    with helpers.running_server(repo, logs, *extra) as (target, _proc):
        yield target, logs / f"server-{target.rsplit(':', 1)[1]}.log"
