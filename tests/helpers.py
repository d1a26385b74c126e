"""Helpers shared by the integration tests (importable as `helpers`; tests/ is on sys.path)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from kerve.client import Client
from kerve.quickstart import free_port, start_server, wait_until_ready

CLASS_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")  # for cnn's 10 classes


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
def running_server(
    repo: Path, log_dir: Path, *extra: str, client: dict[str, Any] | None = None
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`kerve serve` on a free loopback port with `extra` flags appended; `client` holds the Client keyword
    arguments (tls, token) the readiness poll needs."""
    port = free_port()
    proc = start_server(repo, port, log_dir / f"server-{port}.log", extra_args=extra)
    target = f"127.0.0.1:{port}"
    try:
        with Client(target, **(client or {})) as ready_client:
            wait_until_ready(ready_client, proc, 120.0)
        yield target, proc
    finally:
        stop_server(proc)


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (the graceful path), then SIGKILL if it has not exited within 30 s."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass(frozen=True)
class TestPKI:
    """A throwaway CA with a server certificate (SAN localhost, 127.0.0.1) and a client certificate, plus a
    second, unrelated CA with its own client certificate (what a stranger would present)."""

    __test__ = False  # not a pytest test class

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path
    other_client_cert: Path
    other_client_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _new_ca(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", f"/CN=kerve test {name}",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )  # fmt: skip
    return cert, key


def _new_leaf(directory: Path, name: str, ca: tuple[Path, Path], extensions: str) -> tuple[Path, Path]:
    cert, key, csr, ext = (directory / f"{name}{suffix}" for suffix in (".pem", ".key", ".csr", ".ext"))
    ext.write_text(extensions)
    _openssl(
        "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}",
        cwd=directory,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
        "-set_serial", str(int.from_bytes(os.urandom(8), "big")), "-days", "2", "-sha256",
        "-extfile", str(ext), "-out", str(cert),
        cwd=directory,
    )  # fmt: skip
    return cert, key


def make_test_pki(directory: Path) -> TestPKI:
    """Generate the certificates with the openssl CLI (EC P-256 keys, valid for two days)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = _new_ca(directory, "ca")
    other = _new_ca(directory, "other-ca")
    leaf = "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
    san = "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
    server = _new_leaf(directory, "localhost", ca, leaf + "extendedKeyUsage=serverAuth\n" + san)
    client = _new_leaf(directory, "client", ca, leaf + "extendedKeyUsage=clientAuth\n")
    stranger = _new_leaf(directory, "stranger", other, leaf + "extendedKeyUsage=clientAuth\n")
    return TestPKI(ca[0], *server, *client, other[0], *stranger)


# --- model lifecycle and TF Serving: more tiny models and repository edits --------------------------------


def build_text_lstm(path: Path) -> None:
    """Token ids (int32, [batch, 6]) -> Embedding -> LSTM -> softmax over 3 classes."""
    import keras

    keras.utils.set_random_seed(11)
    tokens = keras.Input(shape=(6,), dtype="int32", name="tokens")
    x = keras.layers.Embedding(50, 4)(tokens)
    x = keras.layers.LSTM(4)(x)
    probs = keras.layers.Dense(3, activation="softmax")(x)
    keras.Model(tokens, probs).export(str(path), format="tf_saved_model", verbose=False)


def build_strings_model(path: Path) -> None:
    """A tf.string input ([batch] texts) -> its length (int32), a hash bucket (int64) and its upper case."""
    import tensorflow as tf

    class Strings(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
        def serve(self, text: tf.Tensor) -> dict[str, tf.Tensor]:
            return {
                "length": tf.strings.length(text),
                "bucket": tf.strings.to_hash_bucket_fast(text, 1000),
                "upper": tf.strings.upper(text),
            }

    module = Strings()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})


def build_two_heads_model(path: Path) -> None:
    """x [batch, 2] float -> two classifier heads with different classes: `animal` (3 scores), `color` (2)."""
    import tensorflow as tf

    class TwoHeads(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32, name="x")])
        def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            return {
                "animal": tf.stack([x[:, 0], x[:, 1], x[:, 0] + x[:, 1]], axis=1),
                "color": tf.stack([x[:, 1], -x[:, 1]], axis=1),
            }

    module = TwoHeads()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})


def build_spectrum_model(path: Path) -> None:
    """x [batch, 4] float32 -> spec: its real FFT, complex64 [batch, 3] (a type V2 cannot carry, TF Serving can)."""
    import tensorflow as tf

    class Spectrum(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"spec": tf.signal.rfft(x)}

    module = Spectrum()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})


def build_whole_call_outputs_model(path: Path) -> None:
    """x [batch, 2] -> y (2x, per row) beside outputs of the whole call: `labels` ["cat", "dog"] and `rows`."""
    import tensorflow as tf

    class Whole(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32, name="x")])
        def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"y": x * 2.0, "labels": tf.constant(["cat", "dog"]), "rows": tf.shape(x)[0]}

    module = Whole()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})


def build_sleeping_model(path: Path, sleep_us: int) -> None:
    """x [batch, 2] -> y = 2x, after sleeping `sleep_us` per call whatever the batch: a model whose call leaves the
    CPU idle, so a second batch at once doubles what a replica serves of batches of one row."""
    import tensorflow as tf

    class Sleeping(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32, name="x")])
        def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            # tf.data's sleep, through raw ops (its Python wrapper is not public): a one-element dataset of x
            shapes, types = [tf.TensorShape([None, 2])], [tf.float32]
            dataset = tf.raw_ops.TensorDataset(components=[x], output_shapes=shapes)
            dataset = tf.raw_ops.SleepDataset(
                input_dataset=dataset, sleep_microseconds=sleep_us, output_types=types, output_shapes=shapes
            )
            (slept,) = tf.raw_ops.DatasetToSingleElement(dataset=dataset, output_types=types, output_shapes=shapes)
            return {"y": slept * 2.0}

    module = Sleeping()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})


def build_constant_model(path: Path) -> None:
    """A signature without inputs (a lookup table's contents, a model's own constants): serving_default -> y."""
    import tensorflow as tf

    class Constant(tf.Module):
        @tf.function(input_signature=[])
        def serve(self) -> dict[str, tf.Tensor]:
            return {"y": tf.constant([1.5, -2.0, 4.0])}

    module = Constant()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})


CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"


def set_method_names(path: Path, methods: dict[str, str]) -> None:
    """Rewrite SignatureDef method names in saved_model.pb: TF2's saver always writes the predict method, and
    classify/regress method names are what TF1 exporters (and TF Serving's strict mode) use."""
    from tensorflow.core.protobuf import saved_model_pb2

    pb = path / "saved_model.pb"
    saved = saved_model_pb2.SavedModel.FromString(pb.read_bytes())
    for graph in saved.meta_graphs:
        for key, method in methods.items():
            graph.signature_def[key].method_name = method
    pb.write_bytes(saved.SerializeToString())


def build_examples_model(path: Path) -> None:
    """A tf.Module parsing serialized tf.Example {x: 2 floats}: `classify` (classes + scores) and `regress`
    signatures with TF Serving's method names, a `regress_tf2` one left with the predict method (native TF2),
    and a float `serving_default`."""
    import tensorflow as tf

    class Examples(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = tf.Variable([[1.0, -2.0], [0.5, 3.0]])
            self.b = tf.Variable([0.1, -0.2])

        def _features(self, serialized: tf.Tensor) -> tf.Tensor:
            return tf.io.parse_example(serialized, {"x": tf.io.FixedLenFeature([2], tf.float32)})["x"]

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
        def classify(self, inputs: tf.Tensor) -> dict[str, tf.Tensor]:
            scores = tf.nn.softmax(tf.matmul(self._features(inputs), self.w) + self.b)
            classes = tf.tile(tf.constant([["neg", "pos"]]), [tf.shape(scores)[0], 1])
            return {"classes": classes, "scores": scores}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
        def regress(self, inputs: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"outputs": tf.reduce_sum(tf.matmul(self._features(inputs), self.w), axis=1)}

        @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32, name="x")])
        def predict(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"y": tf.matmul(x, self.w) + self.b}

    module = Examples()
    signatures = {
        "serving_default": module.predict,
        "classify": module.classify,
        "regress": module.regress,
        "regress_tf2": module.regress,
    }
    tf.saved_model.save(module, str(path), signatures=signatures)
    set_method_names(path, {"classify": CLASSIFY_METHOD, "regress": REGRESS_METHOD})


def build_no_signature_model(path: Path) -> None:
    """A valid SavedModel with nothing to serve."""
    import tensorflow as tf

    module = tf.Module()
    module.v = tf.Variable(1.0)
    tf.saved_model.save(module, str(path))


def example(x: tuple[float, float]) -> Any:
    import tensorflow as tf

    feature = tf.train.Feature(float_list=tf.train.FloatList(value=list(x)))
    return tf.train.Example(features=tf.train.Features(feature={"x": feature}))


def write_warmup(version_dir: Path, requests: list[Any]) -> None:
    """assets.extra/tf_serving_warmup_requests with one PredictionLog per PredictRequest."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    target = version_dir / "assets.extra" / "tf_serving_warmup_requests"
    target.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(target)) as writer:
        for request in requests:
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())


def copy_version(source: Path, repo: Path, model: str, version: int | None = None) -> int:
    """Publish a copy of a SavedModel directory as a new version, atomically (kerve.repository.publish)."""
    import shutil

    from kerve import repository

    return repository.publish(repo, model, lambda tmp: shutil.copytree(source, tmp), {}, version=version)


def wait_for(condition: Any, what: str, timeout_s: float = 60.0, interval_s: float = 0.05) -> Any:
    """Poll condition() until it returns something truthy (returned), or fail after timeout_s."""
    import time

    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what} (last: {last!r})")


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> tuple[Samples, dict[str, str]]:
    """Every sample by (name, labels), and every family's type."""
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    samples: Samples = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            samples[sample.name, frozenset(sample.labels.items())] = sample.value
    return samples, types


def value(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples named `name` whose labels include `labels` (0 when there is none)."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


class SharedMemoryKeys:
    """For a scripted V2 servicer: system shared memory registration, kept as region name -> key (what a client
    registered, to open the region the way the server would)."""

    def __init__(self) -> None:
        self.keys: dict[str, str] = {}

    def SystemSharedMemoryRegister(self, request: Any, context: Any) -> Any:
        from kerve.protos import grpc_service_pb2 as pb

        self.keys[request.name] = request.key
        return pb.SystemSharedMemoryRegisterResponse()

    def SystemSharedMemoryUnregister(self, request: Any, context: Any) -> Any:
        from kerve.protos import grpc_service_pb2 as pb

        self.keys.pop(request.name, None)
        return pb.SystemSharedMemoryUnregisterResponse()


@contextlib.contextmanager
def in_process_v2_server(servicer: Any, workers: int) -> Iterator[str]:
    """A V2 servicer (a test's scripted fake) served in this process on a loopback port; yields its target."""
    from concurrent import futures

    import grpc

    from kerve.protos import grpc_service_pb2_grpc as pb_grpc

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None)
