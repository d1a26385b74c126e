"""Export a trained Keras model as the next SavedModel version of a kerve repository.

The export happens inside `kerve.repository.publish`, which owns atomicity: the server sees the new
version whole (SavedModel, kerve.json, warmup requests) or not at all. Before the rename, the export is
loaded back and checked against the Keras model, so a version that would serve wrong answers or under
different tensor names is never published.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from kerve import repository

from . import multiworker

SIGNATURE = "serving_default"
WARMUP_BATCH_SIZES = (1, 8)


class ExportError(RuntimeError):
    """The exported SavedModel does not match the Keras model it came from."""


def signature_names(model: keras.Model) -> tuple[list[str], list[str]]:
    """(input names, output names) that `model.export` gives the serving signature.

    Keras names signature inputs after the `keras.Input` layers and positional outputs `output_<i>`.
    The export is verified against these, so a change of that convention fails the publish loudly.
    """
    inputs = [tensor.name for tensor in model.inputs]
    outputs = [f"output_{i}" for i in range(len(model.outputs))]
    return inputs, outputs


def publish_model(
    repo: str | os.PathLike[str],
    model_name: str,
    model: keras.Model,
    metadata: dict[str, Any],
    sample: np.ndarray,
    expected_latest: int | None | repository.Unchecked = repository.UNCHECKED,
) -> tuple[int, Path]:
    """Publish `model` as the next version and return (version, version directory).

    `sample` is a batch of real inputs: it checks the export reproduces the Keras predictions and
    becomes the TF Serving warmup requests, so the first client request does not pay for tracing.
    `expected_latest`: the version the gate compared with (None: there was none); if another one is the latest
    by the time of the rename, nothing is published and `repository.LatestChangedError` is raised.
    """
    input_names, output_names = signature_names(model)
    if len(input_names) != 1:
        raise ExportError(f"only single-input models can be published for now, got inputs {input_names}")
    warmup = _warmup_available()
    full_metadata = {
        **metadata,
        "signature": {
            "name": SIGNATURE,
            "inputs": {input_names[0]: {"dtype": str(sample.dtype), "shape": [None, *map(int, sample.shape[1:])]}},
            "outputs": output_names,
        },
        "warmup": (
            {
                "file": f"{repository.WARMUP_DIR}/{repository.WARMUP_FILE}",
                "batch_sizes": list(WARMUP_BATCH_SIZES),
            }
            if warmup
            else None
        ),
    }
    expected = multiworker.predict(model, sample)

    def write(tmp: Path) -> None:
        model.export(str(tmp), format="tf_saved_model", verbose=False)
        _verify_export(tmp, input_names[0], output_names, sample, expected)
        if warmup:
            _write_warmup(tmp, model_name, input_names[0], sample)
        _pause_for_tests(tmp)

    version = repository.publish(repo, model_name, write, full_metadata, expected_latest=expected_latest)
    return version, repository.version_dir(repo, model_name, version)


def _verify_export(
    path: Path, input_name: str, output_names: list[str], sample: np.ndarray, expected: np.ndarray
) -> None:
    loaded = tf.saved_model.load(str(path))
    if SIGNATURE not in loaded.signatures:
        raise ExportError(f"export has no {SIGNATURE!r} signature: {list(loaded.signatures)}")
    signature = loaded.signatures[SIGNATURE]
    _args, inputs = signature.structured_input_signature
    if list(inputs) != [input_name]:
        raise ExportError(f"export signature inputs are {list(inputs)}, expected [{input_name!r}]")
    outputs = signature(**{input_name: tf.constant(sample)})
    if sorted(outputs) != sorted(output_names):
        raise ExportError(f"export signature outputs are {sorted(outputs)}, expected {output_names}")
    got = outputs[output_names[0]].numpy()
    if got.shape != expected.shape or not np.allclose(got, expected, rtol=1e-4, atol=1e-5):
        raise ExportError("the exported SavedModel's predictions differ from the Keras model's")


PAUSE_ENV = "KERVE_TEST_PAUSE_PUBLISH"


def _pause_for_tests(tmp: Path) -> None:
    """Test hook: with KERVE_TEST_PAUSE_PUBLISH=FILE, write the in-progress directory's path to FILE and block
    before the rename, so a test can kill the publisher at the worst moment."""
    marker = os.environ.get(PAUSE_ENV)
    if not marker:
        return
    Path(marker).write_text(str(tmp))
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        time.sleep(0.1)


def _warmup_available() -> bool:
    """Warmup records are TF Serving PredictionLog protos, which ship with tensorflow-serving-api."""
    try:
        from tensorflow_serving.apis import prediction_log_pb2  # noqa: F401
    except ImportError:
        return False
    return True


def _write_warmup(path: Path, model_name: str, input_name: str, sample: np.ndarray) -> None:
    """Write assets.extra/tf_serving_warmup_requests: one Predict request per warmup batch size."""
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    target = path / repository.WARMUP_DIR / repository.WARMUP_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(target)) as writer:
        for batch_size in WARMUP_BATCH_SIZES:
            rows = np.resize(sample, (batch_size, *sample.shape[1:])).astype(sample.dtype)
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name=model_name, signature_name=SIGNATURE)
            )
            request.inputs[input_name].CopyFrom(tf.make_tensor_proto(rows))
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
