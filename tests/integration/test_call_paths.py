"""The two ways a servable calls a model (server/model.py, --call-path): a TF1 Session's callable and the eager
ConcreteFunction give the same signatures, specs and outputs (floats to within a few ulps: an LSTM's last bits can
differ at some batch sizes), and fail the same way."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from helpers import (
    build_examples_model,
    build_no_signature_model,
    build_strings_model,
    build_text_lstm,
    example,
    running_server,
)
from kerve.client import Client

pytestmark = pytest.mark.integration

RNG = np.random.default_rng(5)
SERIALIZED = np.array([example((1.0, 2.0)).SerializeToString(), example((-0.5, 4.0)).SerializeToString()], object)
CASES: dict[str, dict[str, dict[str, np.ndarray]]] = {
    "cnn": {"serving_default": {"image": RNG.random((5, 8, 8, 1), dtype=np.float32)}},
    "pair": {
        "serving_default": {
            "features": RNG.random((4, 3), dtype=np.float32),
            "ids": RNG.integers(0, 16, (4, 2), dtype=np.int64),
        }
    },
    "lstm": {"serving_default": {"tokens": RNG.integers(0, 50, (3, 6), dtype=np.int32)}},
    "strings": {"serving_default": {"text": np.array([b"a", b"hello", "\u00e9t\u00e9".encode()], object)}},
    "vocabulary": {"serving_default": {"word": np.array([b"y", b"unknown", b"z"], object)}},
    "examples": {
        "serving_default": {"x": RNG.random((2, 2), dtype=np.float32)},
        "classify": {"inputs": SERIALIZED},
        "regress": {"inputs": SERIALIZED},
        "regress_tf2": {"inputs": SERIALIZED},
    },
}


def build_vocabulary_model(path: Path, scratch: Path) -> None:
    """A hash table initialized from a vocabulary file: the SavedModel carries it as an asset, and the session
    path's loader must run the init op that fills the table from the copy under assets/."""
    import tensorflow as tf

    vocabulary = scratch / "vocabulary.txt"
    vocabulary.write_text("x\ny\nz\n")

    class Vocabulary(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            line = tf.lookup.TextFileIndex
            source = tf.lookup.TextFileInitializer(
                str(vocabulary), tf.string, line.WHOLE_LINE, tf.int64, line.LINE_NUMBER
            )
            self.table = tf.lookup.StaticHashTable(source, -1)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="word")])
        def serve(self, word: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"id": self.table.lookup(word)}

    module = Vocabulary()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    vocabulary.unlink()  # loaded from the SavedModel's own assets/ from here on


@pytest.fixture(scope="module")
def models(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    made = tmp_path_factory.mktemp("call-paths")
    build_text_lstm(made / "lstm")
    build_strings_model(made / "strings")
    build_examples_model(made / "examples")
    build_no_signature_model(made / "nothing")
    build_vocabulary_model(made / "vocabulary", tmp_path_factory.mktemp("scratch"))
    paths = {name: made / name for name in ("lstm", "strings", "examples", "nothing", "vocabulary")}
    return {"cnn": model_repo / "cnn" / "1", "pair": model_repo / "pair" / "1", **paths}


def load(path: Path, call_path: str):  # noqa: ANN201 - a SavedModelServable (TF imported lazily)
    from kerve.server.model import SavedModelServable

    return SavedModelServable(path, "/device:CPU:0", call_path)


@pytest.mark.parametrize("name", sorted(CASES))
def test_both_paths_give_the_same_signatures_and_bit_identical_outputs(name: str, models: dict[str, Path]) -> None:
    session, function = load(models[name], "session"), load(models[name], "function")
    try:
        assert sorted(session.signatures) == sorted(function.signatures)
        assert set(CASES[name]) <= set(session.signatures)  # Keras exports add `serve`, serving_default's twin
        for key in session.signatures:
            inputs = CASES[name].get(key, CASES[name]["serving_default"])
            ours, theirs = session.signatures[key], function.signatures[key]
            assert ours.inputs == theirs.inputs and ours.outputs == theirs.outputs
            assert ours.fn is None and theirs.fn is not None  # only the function path can run under a strategy
            got, want = ours.run(inputs), theirs.run(inputs)
            if name == "vocabulary":
                assert got["id"].tolist() == [1, -1, 2]
            assert sorted(got) == sorted(want) == sorted(ours.outputs)
            for output, value in want.items():
                assert got[output].dtype == value.dtype and got[output].shape == value.shape
                if value.dtype.kind == "f":
                    np.testing.assert_array_max_ulp(got[output], value, maxulp=4)
                else:
                    assert np.array_equal(got[output], value), f"{name}/{key}/{output} differs between the paths"
            first = sorted(ours.outputs)[:1]
            assert list(ours.run(inputs, first)) == first  # a subset of the outputs: only those are fetched
            np.testing.assert_array_equal(ours.run(inputs, first)[first[0]], got[first[0]])
    finally:
        session.close()
        function.close()


def test_session_path_rejects_bad_calls_with_the_status_a_client_gets(models: dict[str, Path]) -> None:
    from kerve.server.errors import ErrorCode, ServingError

    servable = load(models["examples"], "session")
    signature = servable.signatures["classify"]
    with pytest.raises(ServingError) as unknown:
        signature.run({"inputs": SERIALIZED}, ["classes", "nope"])
    assert unknown.value.code == ErrorCode.INVALID_ARGUMENT and "nope" in str(unknown.value)
    with pytest.raises(ServingError) as missing:
        servable.signatures["serving_default"].run({"y": np.zeros((1, 2), np.float32)})
    assert missing.value.code == ErrorCode.INVALID_ARGUMENT and "['x']" in str(missing.value)
    with pytest.raises(ServingError) as unparsable:  # the model itself fails on the values: its error, not a crash
        signature.run({"inputs": np.array([b"not an example"], object)})
    assert unparsable.value.code == ErrorCode.INVALID_ARGUMENT
    assert "model rejected the inputs" in str(unparsable.value)
    for call_path in ("session", "function"):  # a shape the graph cannot take, on both paths
        with pytest.raises(ServingError) as shape:
            load(models["cnn"], call_path).signature().run({"image": np.zeros((2, 8, 8, 3), np.float32)})
        assert shape.value.code == ErrorCode.INVALID_ARGUMENT, call_path

    servable.close()
    servable.close()  # closing twice is harmless
    with pytest.raises(ServingError) as closed:  # a batch that ran after its version was unloaded
        signature.run({"inputs": SERIALIZED})
    assert closed.value.code == ErrorCode.UNAVAILABLE and "unloaded" in str(closed.value)


@pytest.mark.parametrize("call_path", ["session", "function"])
def test_a_model_without_signatures_is_refused_on_both_paths(call_path: str, models: dict[str, Path]) -> None:
    from kerve.server.errors import ErrorCode, ServingError

    with pytest.raises(ServingError) as refused:
        load(models["nothing"], call_path)
    assert refused.value.code == ErrorCode.FAILED_PRECONDITION and "no serving signatures" in str(refused.value)


def test_auto_is_the_session_on_cpu_and_the_function_elsewhere() -> None:
    from kerve.server.devices import DeviceSet
    from kerve.server.model import ReplicaLoader, resolve_call_path
    from kerve.server.settings import ServerSettings

    assert [resolve_call_path("auto", kind) for kind in ("cpu", "gpu", "tpu")] == ["session", "function", "function"]
    assert resolve_call_path("function", "cpu") == "function" and resolve_call_path("session", "gpu") == "session"
    with pytest.raises(ValueError, match="call path"):
        resolve_call_path("graph", "cpu")
    assert ReplicaLoader(DeviceSet("cpu", ("/device:CPU:0",))).call_path == "session"
    assert ReplicaLoader(DeviceSet("gpu", ("/device:GPU:0",)), "session").call_path == "session"
    with pytest.raises(ValueError, match="--call-path"):
        ServerSettings(model_repository=Path("."), call_path="graph")


def test_replicas_load_on_the_loaders_path_and_unloading_closes_their_sessions(models: dict[str, Path]) -> None:
    from kerve.server.devices import DeviceSet
    from kerve.server.errors import ErrorCode, ServingError
    from kerve.server.model import ReplicaLoader
    from kerve.server.model_config import ModelConfig

    loader = ReplicaLoader(DeviceSet("cpu", ("/device:CPU:0",)))
    servable = loader(models["cnn"], ModelConfig())
    assert [replica.call_path for replica in servable.replicas] == ["session"]
    (run,) = servable.runners("serving_default")
    inputs = CASES["cnn"]["serving_default"]
    assert run(inputs)["output_0"].shape == (5, 10)
    servable.close()
    with pytest.raises(ServingError) as closed:
        run(inputs)
    assert closed.value.code == ErrorCode.UNAVAILABLE


def test_a_server_on_the_function_path_serves_what_the_model_computes(
    model_repo: Path, tmp_path: Path, in_process
) -> None:
    """The session fixture's server runs the default (session on CPU); this one keeps the function path covered."""
    images = CASES["cnn"]["serving_default"]["image"]
    with running_server(model_repo, tmp_path, "--call-path", "function") as (target, _proc), Client(target) as client:
        got = client.infer("cnn", {"image": images}).outputs
    log = next(tmp_path.glob("server-*.log")).read_text()
    assert "models are called through the function path (--call-path function)" in log
    np.testing.assert_array_equal(got["output_0"], in_process("cnn", {"image": images})["output_0"])


def test_auto_falls_back_to_the_function_for_a_model_the_session_cannot_load(
    models: dict[str, Path], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """`--call-path auto` must not refuse a model that loaded before the session path became its default; an
    explicit `--call-path session` says so instead."""
    from kerve.server.devices import DeviceSet
    from kerve.server.model import ReplicaLoader, SavedModelServable
    from kerve.server.model_config import ModelConfig

    def unloadable(self: SavedModelServable, *_: object) -> None:
        raise RuntimeError("Op type not registered 'SomeCustomOp'\nmore lines")

    monkeypatch.setattr(SavedModelServable, "_load_session", unloadable)
    cpu = DeviceSet("cpu", ("/device:CPU:0",))
    with caplog.at_level("WARNING", logger="kerve.server.model"):
        servable = ReplicaLoader(cpu)(models["cnn"], ModelConfig())
    assert [replica.call_path for replica in servable.replicas] == ["function"]
    assert "SomeCustomOp" in caplog.text and "function path" in caplog.text
    (run,) = servable.runners("serving_default")
    assert run(CASES["cnn"]["serving_default"])["output_0"].shape == (5, 10)
    servable.close()

    explicit = ReplicaLoader(cpu, "session")
    with pytest.raises(RuntimeError, match="SomeCustomOp"):
        explicit(models["cnn"], ModelConfig())
    assert explicit.placer.held() == {"/device:CPU:0": 0}  # the failed load gave its device back


def test_a_savedmodel_with_several_metagraphs_loads_its_serve_graph_on_both_paths(tmp_path: Path) -> None:
    """TF1 exports (Estimator, TF-Hub) may carry a "train" MetaGraph beside "serve": TF Serving serves the latter,
    and so do both call paths (tf.saved_model.load needs the tags to choose)."""
    import tensorflow as tf

    path = tmp_path / "tf1"
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 2], name="x")
        w = tf.compat.v1.get_variable("w", initializer=tf.constant([[1.0], [2.0]]))
        signature = tf.compat.v1.saved_model.signature_def_utils.predict_signature_def({"x": x}, {"y": tf.matmul(x, w)})
        with tf.compat.v1.Session(graph=graph) as session:
            session.run(tf.compat.v1.global_variables_initializer())
            builder = tf.compat.v1.saved_model.Builder(str(path))
            builder.add_meta_graph_and_variables(session, ["serve"], signature_def_map={"serving_default": signature})
            builder.add_meta_graph(["train"], signature_def_map={"serving_default": signature})
            builder.save()
    for call_path in ("session", "function"):
        servable = load(path, call_path)
        assert servable.signature().run({"x": np.ones((1, 2), np.float32)})["y"].tolist() == [[3.0]], call_path
        servable.close()


def test_a_signature_with_a_sparse_or_ragged_tensor_is_left_out_and_the_others_served(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Both wire protocols carry dense tensors: a signature returning a SparseTensor (TF1) or a RaggedTensor (TF2)
    is not served, with a warning, and the version's dense signatures are, on both paths (a sparse one made the
    session path refuse the whole model; a ragged one answered or failed depending on its rows)."""
    import tensorflow as tf

    tf1 = tmp_path / "tf1"
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 2], name="x")
        info = tf.compat.v1.saved_model.build_tensor_info
        build = tf.compat.v1.saved_model.signature_def_utils.build_signature_def
        dense = build({"x": info(x)}, {"y": info(x * 2.0)}, "tensorflow/serving/predict")
        sparse = build({"x": info(x)}, {"sp": info(tf.sparse.from_dense(x))}, "tensorflow/serving/predict")
        with tf.compat.v1.Session(graph=graph) as session:
            builder = tf.compat.v1.saved_model.Builder(str(tf1))
            signatures = {"serving_default": dense, "sparse": sparse}
            builder.add_meta_graph_and_variables(session, ["serve"], signature_def_map=signatures)
            builder.save()

    class Words(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
        def length(self, text: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"length": tf.strings.length(text)}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
        def split(self, text: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"words": tf.strings.split(text)}

    tf2, module = tmp_path / "tf2", Words()
    tf.saved_model.save(module, str(tf2), signatures={"serving_default": module.length, "split": module.split})
    text = np.array([b"a b", b"c"], dtype=object)
    for call_path in ("session", "function"):
        first = load(tf1, call_path)
        assert sorted(first.signatures) == ["serving_default"], call_path
        assert first.signature().run({"x": np.ones((1, 2), np.float32)})["y"].tolist() == [[2.0, 2.0]]
        second = load(tf2, call_path)
        assert sorted(second.signatures) == ["serving_default"], call_path
        assert second.signature().run({"text": text})["length"].tolist() == [3, 1]
        first.close()
        second.close()
    assert "signature 'sparse' is not served" in caplog.text and "signature 'split' is not served" in caplog.text


def _cpu_ticks_by_thread_name() -> dict[str, int]:
    """CPU time (clock ticks) of this process's threads, summed by thread name (Linux /proc)."""
    ticks: dict[str, int] = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread exited meanwhile
            continue
        ticks[name] = ticks.get(name, 0) + int(fields[11]) + int(fields[12])  # utime + stime
    return ticks


def test_small_batches_run_their_ops_on_the_calling_thread_with_the_same_outputs(models: dict[str, Path]) -> None:
    """--caller-thread-max-batch: a batch of at most that many rows runs its ops on the thread that calls the model,
    so the session's inter-op pool (TensorFlow's "Compute" threads) gets no CPU from it; a larger one runs there."""
    from kerve.server.model import SavedModelServable

    small = SavedModelServable(models["cnn"], "/device:CPU:0", "session", caller_thread_max_rows=4)
    pooled = SavedModelServable(models["cnn"], "/device:CPU:0", "session")
    images = CASES["cnn"]["serving_default"]["image"]  # 5 rows
    try:
        for rows in (1, 4, 5):
            batch = {"image": images[:rows]}
            np.testing.assert_array_equal(
                small.signature().run(batch)["output_0"], pooled.signature().run(batch)["output_0"]
            )
            before = _cpu_ticks_by_thread_name()
            for _ in range(1500):
                small.signature().run(batch)
            after = _cpu_ticks_by_thread_name()
            pool_ticks = after.get("tf_Compute", 0) - before.get("tf_Compute", 0)
            if rows <= 4:
                assert pool_ticks == 0, f"{rows}-row batches gave the inter-op pool {pool_ticks} ticks of CPU"
            else:
                assert pool_ticks > 0, "5-row batches (over the limit) ran without the inter-op pool"
    finally:
        small.close()
        pooled.close()


def _trial_calls() -> int:
    """Calls until `auto` decides a bucket: each way needs TRIALS timed calls, BLOCK - 1 per block of BLOCK."""
    from kerve.server.call_choice import BLOCK, TRIALS

    return 2 * BLOCK * -(-TRIALS // (BLOCK - 1))


def test_auto_times_both_ways_on_real_batches_and_keeps_one_per_bucket(
    models: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from kerve.server.model import SavedModelServable

    caplog.set_level(logging.INFO, "kerve.server.call_choice")
    auto = SavedModelServable(models["cnn"], "/device:CPU:0", "session", caller_thread_max_rows=None)
    pooled = SavedModelServable(models["cnn"], "/device:CPU:0", "session")
    images = CASES["cnn"]["serving_default"]["image"]
    try:
        want = pooled.signature().run({"image": images[:1]})["output_0"]
        choice = auto.signature().run.choice
        calls = 0
        while not choice.chosen() and calls < 2 * _trial_calls():  # the trials: both ways, in alternating blocks
            np.testing.assert_array_equal(auto.signature().run({"image": images[:1]})["output_0"], want)
            calls += 1
        assert list(choice.chosen()) == [1] and calls <= _trial_calls()
        assert "cnn/1 serving_default on /device:CPU:0: batches of 1 rows run on" in caplog.text
        np.testing.assert_array_equal(auto.signature().run({"image": images[:1]})["output_0"], want)
        assert choice.choose(5) == (True, False)  # 5-8 rows: not decided yet, its own trials start
    finally:
        auto.close()
        pooled.close()


def test_a_server_times_both_ways_by_default_and_0_keeps_every_op_on_the_pool(
    model_repo: Path, tmp_path: Path, in_process
) -> None:
    """The default (`--caller-thread-max-batch auto`) reaches the replicas through the real server's settings; `0`
    turns the timing off. TensorFlow's pool threads sleep between tasks by default; `--tf-thread-spinning` (given
    to the second server) lets them spin, and either way the answers are the same."""
    images = CASES["cnn"]["serving_default"]["image"][:1]
    want = in_process("cnn", {"image": images})["output_0"]
    calls = _trial_calls() + 4  # one bucket's trials, and a few decided calls
    logs = {}
    for arm, flags in (("auto", ()), ("off", ("--caller-thread-max-batch", "0", "--tf-thread-spinning"))):
        (tmp_path / arm).mkdir()
        with running_server(model_repo, tmp_path / arm, *flags) as (target, _proc), Client(target) as client:
            for _ in range(calls):  # one at a time: each a batch of 1 row, bit-identical either way
                np.testing.assert_array_equal(client.infer("cnn", {"image": images}).outputs["output_0"], want)
        logs[arm] = next((tmp_path / arm).glob("server-*.log")).read_text()
    assert "cnn/1 serving_default on /device:CPU:0: batches of 1 rows run on" in logs["auto"], logs["auto"][-2000:]
    assert "rows run on" not in logs["off"]
    assert "between tasks they sleep" in logs["auto"], logs["auto"][-2000:]
    assert "between tasks they spin" in logs["off"], logs["off"][-2000:]
