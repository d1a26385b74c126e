"""TF Serving API fixes, against real TensorFlow and a real server (explicit model control, no polling):

- a model's error reaches the client with its cause ("Data types don't match ..."), not "Graph execution error:";
- GetModelMetadata/Classify/Regress keep working when the version's saved_model.pb leaves the disk or is replaced
  after it loaded (the SignatureDef map is kept from the load; a servable without one reads the file once, or
  fails with a precise status, never UNKNOWN);
- HandleReloadConfigRequest refuses a label naming a version that is not available, as TF Serving does, and keeps
  the config it had."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

import helpers
from kerve.server.errors import ErrorCode, ServingError, first_line
from kerve.server.manager import ModelVersion, VersionState
from kerve.server.model import SavedModelServable
from kerve.server.tfs_service import _Target, read_signature_defs

pytestmark = pytest.mark.integration

DTYPE_CAUSE = "Name: <unknown>, Key: x, Index: 0.  Data types don't match. Data type: int64 but expected type: float"


def bad_example() -> tf.train.Example:
    """Feature x as int64, where the model parses two floats."""
    feature = tf.train.Feature(int64_list=tf.train.Int64List(value=[1, 2]))
    return tf.train.Example(features=tf.train.Features(feature={"x": feature}))


def _parse(serialized: tf.Tensor) -> tf.Tensor:
    return tf.io.parse_example(serialized, {"x": tf.io.FixedLenFeature([2], tf.float32)})["x"]


# --- 1. the cause of a model's error ---------------------------------------------------------------------------


def test_a_tf_function_error_gives_its_cause() -> None:
    fn = tf.function(_parse, input_signature=[tf.TensorSpec([None], tf.string)])
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        fn(tf.constant([bad_example().SerializeToString()]))
    assert info.value.message.startswith("Graph execution error:")  # what the client used to get, alone
    assert first_line(info.value) == DTYPE_CAUSE


def test_a_session_error_gives_its_cause() -> None:
    graph = tf.Graph()
    with graph.as_default():
        serialized = tf.compat.v1.placeholder(tf.string, [None])
        parsed = _parse(serialized)
        with tf.compat.v1.Session(graph=graph) as session:
            call = session.make_callable([parsed], [serialized])
            with pytest.raises(tf.errors.InvalidArgumentError) as info:
                call([bad_example().SerializeToString()])
    assert first_line(info.value) == DTYPE_CAUSE


@pytest.fixture(scope="module")
def examples_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("examples-model") / "1"
    helpers.build_examples_model(path)
    return path


@pytest.mark.parametrize("call_path", ["session", "function"])
def test_a_served_model_rejects_with_the_cause(examples_model: Path, call_path: str) -> None:
    servable = SavedModelServable(examples_model, call_path=call_path)
    try:
        with pytest.raises(ServingError) as info:
            servable.signature("classify").run({"inputs": np.array([bad_example().SerializeToString()], object)})
    finally:
        servable.close()
    assert info.value.code is ErrorCode.INVALID_ARGUMENT
    assert info.value.message == f"model rejected the inputs: {DTYPE_CAUSE}"


# --- 2. SignatureDefs once per loaded version (no server) ------------------------------------------------------


def _entry(path: Path, version: int = 1) -> ModelVersion:
    """A READY version whose servable serves the examples model's signatures (names are all the check reads)."""
    defs = read_signature_defs(path)
    signatures = {
        key: SimpleNamespace(inputs=dict(d.inputs), outputs=dict(d.outputs))
        for key, d in defs.items()
        if not key.startswith("__")
    }
    return ModelVersion("m", version, path, state=VersionState.READY, servable=SimpleNamespace(signatures=signatures))


@pytest.fixture
def version_dir(examples_model: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(examples_model, tmp_path / "m" / "1"))


def test_a_version_whose_file_went_before_any_read_is_failed_precondition(version_dir: Path) -> None:
    entry = _entry(version_dir)
    (version_dir / "saved_model.pb").unlink()
    with pytest.raises(ServingError) as info:
        asyncio.run(_Target(None).signature_defs(entry))  # type: ignore[arg-type]
    assert info.value.code is ErrorCode.FAILED_PRECONDITION
    assert "version 1 of model m" in info.value.message and "cannot read its SavedModel" in info.value.message


def test_a_read_signature_def_map_survives_its_file(version_dir: Path) -> None:
    target, entry = _Target(None), _entry(version_dir)  # type: ignore[arg-type]
    first = asyncio.run(target.signature_defs(entry))
    assert {"classify", "regress", "serving_default"} <= set(first)
    (version_dir / "saved_model.pb").unlink()
    assert asyncio.run(target.signature_defs(entry)) == first
    again = ModelVersion("m", 1, version_dir, state=VersionState.READY, servable=entry.servable)  # a reload
    with pytest.raises(ServingError) as info:
        asyncio.run(target.signature_defs(again))
    assert info.value.code is ErrorCode.FAILED_PRECONDITION


def test_garbage_or_a_replaced_file_is_refused_not_cached(version_dir: Path, tmp_path: Path) -> None:
    target, entry = _Target(None), _entry(version_dir)  # type: ignore[arg-type]
    original = (version_dir / "saved_model.pb").read_bytes()
    (version_dir / "saved_model.pb").write_bytes(b"garbage")
    with pytest.raises(ServingError) as info:
        asyncio.run(target.signature_defs(entry))
    assert info.value.code is ErrorCode.FAILED_PRECONDITION and "not a SavedModel" in info.value.message
    helpers.build_strings_model(tmp_path / "other")  # another model's file in its place
    shutil.copy(tmp_path / "other" / "saved_model.pb", version_dir / "saved_model.pb")
    with pytest.raises(ServingError) as info:
        asyncio.run(target.signature_defs(entry))
    assert info.value.code is ErrorCode.FAILED_PRECONDITION and "replaced after it loaded" in info.value.message
    (version_dir / "saved_model.pb").write_bytes(original)  # nothing was cached meanwhile: the right file is read
    assert "classify" in asyncio.run(target.signature_defs(entry))


def test_signature_defs_kept_by_the_servable_come_first(version_dir: Path) -> None:
    entry = _entry(version_dir)
    kept = read_signature_defs(version_dir)
    entry.servable.signature_defs = kept
    (version_dir / "saved_model.pb").unlink()
    assert asyncio.run(_Target(None).signature_defs(entry)) == kept  # type: ignore[arg-type]


@pytest.mark.parametrize("call_path", ["session", "function"])
def test_a_loaded_servable_keeps_the_signature_def_map_it_loaded(version_dir: Path, call_path: str) -> None:
    servable = SavedModelServable(version_dir, call_path=call_path)
    try:
        assert servable.signature_defs == read_signature_defs(version_dir)
    finally:
        servable.close()


# --- the server ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(examples_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    repo = tmp_path_factory.mktemp("tfs-fixes")
    for model, versions in (("ex", (1, 2)), ("gone", (1,)), ("kept", (1,))):
        for version in versions:
            shutil.copytree(examples_model, repo / model / str(version))
    (repo / "ex" / "config.yaml").write_text("version_policy: all\n")
    (repo / "ex" / "3").mkdir()
    (repo / "ex" / "3" / "saved_model.pb").write_bytes(b"garbage")  # on disk, fails to load
    with helpers.running_server(repo, tmp_path_factory.mktemp("tfs-fixes-logs"), "--model-control", "explicit") as (
        target,
        _proc,
    ):
        yield target, repo


@pytest.fixture(scope="module")
def channel(served: tuple[str, Path]) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(served[0]) as channel:
        yield channel


@pytest.fixture(scope="module")
def tfs(channel: grpc.Channel) -> prediction_service_pb2_grpc.PredictionServiceStub:
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


@pytest.fixture(scope="module")
def models(channel: grpc.Channel) -> model_service_pb2_grpc.ModelServiceStub:
    return model_service_pb2_grpc.ModelServiceStub(channel)


def _error(call: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()  # type: ignore[operator]
    return info.value


def _classify(model: str, examples: list[tf.train.Example]) -> classification_pb2.ClassificationRequest:
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name, request.model_spec.signature_name = model, "classify"
    request.input.example_list.examples.extend(examples)
    return request


def _metadata(model: str) -> get_model_metadata_pb2.GetModelMetadataRequest:
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = model
    return request


def test_classify_and_predict_name_the_cause_of_a_bad_example(tfs) -> None:  # noqa: ANN001
    error = _error(lambda: tfs.Classify(_classify("ex", [bad_example()]), timeout=30))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and DTYPE_CAUSE in error.details(), error.details()
    predict = predict_pb2.PredictRequest()
    predict.model_spec.name, predict.model_spec.signature_name = "ex", "classify"
    predict.inputs["inputs"].CopyFrom(tf.make_tensor_proto(np.array([bad_example().SerializeToString()], object)))
    error = _error(lambda: tfs.Predict(predict, timeout=30))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and DTYPE_CAUSE in error.details(), error.details()


def test_metadata_and_classify_after_the_file_left_the_disk(tfs, served) -> None:  # noqa: ANN001
    _, repo = served
    (repo / "gone" / "1" / "saved_model.pb").unlink()  # before any metadata request: read when it loaded
    metadata = tfs.GetModelMetadata(_metadata("gone"), timeout=30)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    metadata.metadata["signature_def"].Unpack(signatures)
    assert {"classify", "regress"} <= set(signatures.signature_def)
    good = helpers.example((1.0, 2.0))
    response = tfs.Classify(_classify("gone", [good]), timeout=30)  # the loaded version still classifies
    assert len(response.result.classifications) == 1
    regress = regression_pb2.RegressionRequest()
    regress.model_spec.name, regress.model_spec.signature_name = "gone", "regress"
    regress.input.example_list.examples.append(good)
    assert len(tfs.Regress(regress, timeout=30).result.regressions) == 1


def test_metadata_read_once_survives_the_file(tfs, served) -> None:  # noqa: ANN001
    _, repo = served
    before = tfs.GetModelMetadata(_metadata("kept"), timeout=30)
    (repo / "kept" / "1" / "saved_model.pb").unlink()
    after = tfs.GetModelMetadata(_metadata("kept"), timeout=30)
    assert after.metadata["signature_def"] == before.metadata["signature_def"]
    assert len(tfs.Classify(_classify("kept", [helpers.example((1.0, 2.0))]), timeout=30).result.classifications) == 1


# --- 3. labels of HandleReloadConfigRequest --------------------------------------------------------------------


def _reload(models, labels: dict[str, int]) -> model_management_pb2.ReloadConfigResponse:  # noqa: ANN001
    """Serve "ex" (all versions) with these labels; the other models are unloaded (the list is the whole set)."""
    request = model_management_pb2.ReloadConfigRequest()
    config = request.config.model_config_list.config.add(name="ex", model_platform="tensorflow")
    config.model_version_policy.all.SetInParent()
    for label, version in labels.items():
        config.version_labels[label] = version
    return models.HandleReloadConfigRequest(request, timeout=120)


def _predict_by_label(tfs, label: str) -> predict_pb2.PredictResponse:  # noqa: ANN001
    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.version_label = "ex", label
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.ones((1, 2), np.float32)))
    return tfs.Predict(request, timeout=30)


def test_a_label_for_a_missing_version_is_refused_and_changes_nothing(tfs, models) -> None:  # noqa: ANN001
    error = _error(lambda: _reload(models, {"stable": 7}))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == (
        "Request to assign label to version 7 of model ex, which is not currently available for inference"
    )
    error = _error(lambda: _predict_by_label(tfs, "stable"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "Unrecognized servable version label" in error.details()
    error = _error(lambda: _reload(models, {"stable": 1, "canary": 7}))  # one bad label refuses the whole request
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "version 7 of model ex" in error.details()
    assert _error(lambda: _predict_by_label(tfs, "stable")).code() == grpc.StatusCode.INVALID_ARGUMENT

    assert _reload(models, {"stable": 1, "canary": 2}).status.error_code == 0
    assert _predict_by_label(tfs, "stable").model_spec.version.value == 1
    assert _predict_by_label(tfs, "canary").model_spec.version.value == 2
    assert _error(lambda: _reload(models, {"stable": 9})).code() == grpc.StatusCode.FAILED_PRECONDITION
    assert _predict_by_label(tfs, "stable").model_spec.version.value == 1  # the old config still serves


def test_a_label_for_a_version_that_fails_to_load_is_refused_and_stays(tfs, models) -> None:  # noqa: ANN001
    assert _reload(models, {"stable": 1}).status.error_code == 0
    error = _error(lambda: _reload(models, {"stable": 3}))  # version 3 is on disk but cannot load
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == (
        "Request to assign label to version 3 of model ex, which is not currently available for inference"
    )
    assert _predict_by_label(tfs, "stable").model_spec.version.value == 1  # the label stayed where it served


def test_multi_inference_tasks_reserve_the_pinned_version_before_a_reload_can_unload_it() -> None:
    """The tasks of one MultiInference start in the loop turn that resolved the version: a gather started them a
    turn later, after a hot reload had already marked that version unloading (UNAVAILABLE under publishes)."""
    from kerve.server.tfs_service import PredictionServicer
    from kerve.server.types import InferRequest, InferResponse

    class Engine:
        def __init__(self) -> None:
            self.unloading = False

        def start(self, request: InferRequest, future: asyncio.Future) -> SimpleNamespace:
            if self.unloading:
                raise ServingError(ErrorCode.UNAVAILABLE, f"model 'm' version {request.version} is unloading")
            future.set_result(InferResponse(model="m", version=request.version or 0, outputs={}))
            return SimpleNamespace(cancel=lambda: None)

    engine = Engine()
    servicer = PredictionServicer(None, engine)  # type: ignore[arg-type]

    async def main() -> list:
        asyncio.get_running_loop().call_soon(setattr, engine, "unloading", True)  # the reload's next step
        requests = [InferRequest(model="m", version=3, inputs={}, signature=key) for key in ("a", "b")]
        return await servicer._run_pinned(requests)

    answers = asyncio.run(main())
    assert [a.version for a in answers] == [3, 3]
