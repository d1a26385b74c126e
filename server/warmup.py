"""Replay a version's TF Serving warmup requests before it takes traffic.

`<version>/assets.extra/tf_serving_warmup_requests` is a TFRecord file of `tensorflow.serving.PredictionLog`
(what `kerve train` and TF Serving's own tooling write). Each Predict, Classify or Regress log becomes an
InferRequest (a MultiInference log one per task, as TF Serving replays it; a session_run log is refused, as TF
Serving refuses it), is validated against the signature like a client request, and runs on every device replica, so the
first real request does not pay for tracing or memory allocation. Any failure fails the load: a version whose
warmup requests do not work would fail its clients too. Runs in the loader's worker thread.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from tensorflow_serving.apis import classification_pb2, prediction_log_pb2, regression_pb2

from kerve import repository

from . import tfs_codec
from .errors import ServingError
from .types import InferRequest
from .validation import select_outputs, validate_inputs

MAX_RECORDS = 1000  # TF Serving's limit


class WarmupError(Exception):
    """The warmup file is unreadable or one of its requests failed."""


def warmup_file(version_dir: Path) -> Path:
    return version_dir / repository.WARMUP_DIR / repository.WARMUP_FILE


def read_records(path: Path, limit: int = MAX_RECORDS) -> list[bytes]:
    """The records of a TFRecord file (checksums verified), at most `limit` of them."""
    import tensorflow as tf  # the server has it loaded already; TFRecord framing and CRCs come from TF

    records: list[bytes] = []
    try:
        for record in tf.data.TFRecordDataset(str(path)):
            if len(records) == limit:
                raise WarmupError(f"{path} has more than {limit} warmup records")
            records.append(bytes(record.numpy()))
    except tf.errors.OpError as exc:
        raise WarmupError(f"{path}: unreadable TFRecord file: {exc.message.strip().splitlines()[0]}") from None
    return records


def decode_record(record: bytes, model: str) -> list[InferRequest]:
    """The requests one PredictionLog replays: one, or one per task of a MultiInference log."""
    log = prediction_log_pb2.PredictionLog()
    try:
        log.ParseFromString(record)
    except Exception as exc:  # protobuf raises DecodeError (or RuntimeError in some builds)
        raise WarmupError(f"not a PredictionLog: {exc}") from None
    kind = log.WhichOneof("log_type")
    if kind not in ("predict_log", "classify_log", "regress_log", "multi_inference_log"):
        raise WarmupError(
            f"unsupported warmup log type {kind!r}; use predict_log, classify_log, regress_log or multi_inference_log"
        )
    message = getattr(log, kind).request
    if kind == "multi_inference_log":
        return [_task(model, task, message.input) for task in message.tasks]
    message.model_spec.name = model  # the record's name, if any, is whatever the writer called the model
    if kind == "predict_log":
        return [tfs_codec.decode_predict(message)]
    what = "ClassificationRequest" if kind == "classify_log" else "RegressionRequest"
    return [tfs_codec.decode_examples_request(message, what)]


def _task(model: str, task: Any, examples: Any) -> InferRequest:
    """A MultiInference task as the Classify or Regress request it stands for."""
    if task.method_name == tfs_codec.CLASSIFY_METHOD:
        message: Any = classification_pb2.ClassificationRequest(model_spec=task.model_spec, input=examples)
        what = "ClassificationRequest"
    elif task.method_name == tfs_codec.REGRESS_METHOD:
        message = regression_pb2.RegressionRequest(model_spec=task.model_spec, input=examples)
        what = "RegressionRequest"
    else:
        raise WarmupError(f"Unsupported signature method_name: {task.method_name}")
    message.model_spec.name = model
    return tfs_codec.decode_examples_request(message, what)


def _run(servable: Any, request: InferRequest) -> None:
    signature = servable.signature(request.signature)
    validate_inputs(request.model, request.inputs, signature.inputs)
    outputs = select_outputs(request.model, request.outputs, signature.outputs)
    runners = getattr(servable, "runners", None)
    if runners is None:
        signature.run(request.inputs, outputs)
        return
    for run in runners(signature.key):  # every device replica
        run(request.inputs)


def replay(model: str, version_dir: Path, servable: Any, stop: threading.Event | None = None) -> int:
    """Run the version's warmup requests, if it has any; return how many ran. Raises WarmupError, also when
    `stop` is set (the server is stopping: a warmup of minutes must not hold up its exit)."""
    path = warmup_file(version_dir)
    if not path.is_file():
        return 0
    records = read_records(path)
    for i, record in enumerate(records, start=1):
        if stop is not None and stop.is_set():
            raise WarmupError(f"the server is stopping: warmup ended after {i - 1} of {len(records)} requests")
        try:
            for request in decode_record(record, model):
                _run(servable, request)
        except (ServingError, WarmupError) as exc:
            message = tfs_codec.error_message(exc) if isinstance(exc, ServingError) else str(exc)  # TF Serving records
            raise WarmupError(f"warmup request {i} of {len(records)} failed: {message}") from None
        except Exception as exc:
            raise WarmupError(f"warmup request {i} of {len(records)} failed: {type(exc).__name__}: {exc}") from None
    return len(records)
