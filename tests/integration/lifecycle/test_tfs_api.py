"""TensorFlow Serving's gRPC API on kerve's port, called with tensorflow-serving-api exactly as a TF Serving user
would, over several models with different signatures served at once (image CNN, int-token LSTM, two inputs,
strings, tf.Example classify/regress). Results must be bit-identical to calling the SavedModel in process."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
import tritonclient.grpc as triton
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from helpers import example
from kerve.protos import grpc_service_pb2 as pb
from kerve.protos import grpc_service_pb2_grpc as pb_grpc

pytestmark = pytest.mark.integration

RNG = np.random.default_rng(3)
INPUTS = {
    "cnn": {"image": RNG.random((3, 8, 8, 1), dtype=np.float32)},
    "pair": {"features": RNG.random((2, 3), dtype=np.float32), "ids": RNG.integers(0, 16, (2, 2), dtype=np.int64)},
    "text": {"tokens": RNG.integers(0, 50, (4, 6), dtype=np.int32)},
    "strings": {"text": np.array([b"kerve", b"", "s\u00e9rving".encode()], dtype=object)},
}
EXAMPLES = [example((1.0, 2.0)), example((-0.5, 0.25)), example((3.0, -1.0))]


@pytest.fixture(scope="module")
def channel(zoo) -> grpc.Channel:
    with grpc.insecure_channel(zoo.target) as channel:
        yield channel


@pytest.fixture(scope="module")
def tfs(channel) -> prediction_service_pb2_grpc.PredictionServiceStub:
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


@pytest.fixture(scope="module")
def models(channel) -> model_service_pb2_grpc.ModelServiceStub:
    return model_service_pb2_grpc.ModelServiceStub(channel)


@pytest.fixture(scope="module")
def reference(zoo_repo: Path):  # noqa: ANN201 - returns a callable
    """Call a signature of a SavedModel in this process: the bit-identical reference."""
    cache: dict[str, object] = {}

    def call(model: str, inputs: dict[str, np.ndarray], signature: str = "serving_default", version: int = 1):
        path = str(zoo_repo / model / str(version))
        if path not in cache:
            cache[path] = tf.saved_model.load(path)
        fn = cache[path].signatures[signature]
        return {k: v.numpy() for k, v in fn(**{k: tf.constant(v) for k, v in inputs.items()}).items()}

    return call


def predict_request(model: str, inputs: dict[str, np.ndarray], **spec: object) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    for key, value in spec.items():
        if key == "version":
            request.model_spec.version.value = value
        else:
            setattr(request.model_spec, key, value)
    for name, array in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(array))
    return request


def assert_code(call, code: grpc.StatusCode, *fragments: str) -> None:
    with pytest.raises(grpc.RpcError) as info:
        call()
    assert info.value.code() == code, info.value.details()
    for fragment in fragments:
        assert fragment in info.value.details(), info.value.details()


def assert_same(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.dtype == expected.dtype and got.shape == expected.shape
    if got.dtype == object:
        assert got.tolist() == expected.tolist()
    else:
        assert got.tobytes() == expected.tobytes()


@pytest.mark.parametrize("model", sorted(INPUTS))
def test_predict_is_bit_identical_to_in_process(tfs, reference, model: str) -> None:
    response = tfs.Predict(predict_request(model, INPUTS[model]), timeout=30)
    latest = 2 if model == "cnn" else 1  # cnn serves versions 1 and 2
    expected = reference(model, INPUTS[model], version=latest)
    assert sorted(response.outputs) == sorted(expected)
    for name, array in expected.items():
        assert_same(tf.make_ndarray(response.outputs[name]), array)
    assert response.model_spec.name == model and response.model_spec.version.value == latest
    assert response.model_spec.signature_name == "serving_default"


def test_output_filter_and_typed_value_fields(tfs, reference) -> None:
    response = tfs.Predict(predict_request("strings", INPUTS["strings"], signature_name="serving_default"),
                           timeout=30)  # fmt: skip
    assert len(response.outputs) == 3
    request = predict_request("strings", INPUTS["strings"])
    request.output_filter.append("length")
    response = tfs.Predict(request, timeout=30)
    assert list(response.outputs) == ["length"]
    assert_same(tf.make_ndarray(response.outputs["length"]), reference("strings", INPUTS["strings"])["length"])
    # float_val instead of tensor_content, as hand-written clients send it
    image = INPUTS["cnn"]["image"][:1]
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "cnn"
    tensor = request.inputs["image"]
    tensor.dtype = tf.float32.as_datatype_enum
    for dim in image.shape:
        tensor.tensor_shape.dim.add(size=dim)
    tensor.float_val.extend(image.ravel().tolist())
    got = tf.make_ndarray(tfs.Predict(request, timeout=30).outputs["output_0"])
    assert_same(got, reference("cnn", {"image": image})["output_0"])


def test_versions_and_labels(tfs, models) -> None:
    image = {"image": INPUTS["cnn"]["image"][:1]}
    for spec, served in (({"version": 2}, 2), ({"version": 1}, 1), ({"version_label": "stable"}, 1),
                         ({"version_label": "canary"}, 2), ({}, 2)):  # fmt: skip
        assert tfs.Predict(predict_request("cnn", image, **spec), timeout=30).model_spec.version.value == served
    assert_code(lambda: tfs.Predict(predict_request("cnn", image, version_label="beta")),
                grpc.StatusCode.INVALID_ARGUMENT, "Unrecognized servable version label: beta")  # fmt: skip
    status = get_model_status_pb2.GetModelStatusRequest()
    status.model_spec.name = "cnn"
    response = models.GetModelStatus(status, timeout=30)
    assert [(s.version, s.state) for s in response.model_version_status] == [  # newest first, as TF Serving's
        (2, get_model_status_pb2.ModelVersionStatus.AVAILABLE),
        (1, get_model_status_pb2.ModelVersionStatus.AVAILABLE),
    ]
    assert all(s.status.error_code == 0 for s in response.model_version_status)
    for label in ("canary", "beta"):  # TF Serving's GetModelStatus reads a version, never a label: all versions
        status.model_spec.version_label = label
        assert [s.version for s in models.GetModelStatus(status, timeout=30).model_version_status] == [2, 1]
    for model, label in (("cnn", ""), ("nope", "stable")):  # a label set empty, or on an unknown model: as TF Serving
        assert_code(lambda m=model, x=label: tfs.Predict(predict_request(m, image, version_label=x)),
                    grpc.StatusCode.INVALID_ARGUMENT, f"Unrecognized servable version label: {label}")  # fmt: skip


def test_tf_serving_error_codes(tfs, models) -> None:
    image = {"image": INPUTS["cnn"]["image"][:1]}
    assert_code(lambda: tfs.Predict(predict_request("nope", image)), grpc.StatusCode.NOT_FOUND, "'nope' not found")
    assert_code(lambda: tfs.Predict(predict_request("cnn", image, version=7)), grpc.StatusCode.NOT_FOUND,
                "no version 7")  # fmt: skip
    assert_code(lambda: tfs.Predict(predict_request("cnn", image, signature_name="nope")),
                grpc.StatusCode.FAILED_PRECONDITION, 'Serving signature key "nope" not found.')  # fmt: skip
    assert_code(lambda: tfs.Predict(predict_request("cnn", {"image": image["image"].astype(np.float64)})),
                grpc.StatusCode.INVALID_ARGUMENT, "input 'image': expected dtype DT_FLOAT, got DT_DOUBLE")  # fmt: skip
    assert_code(lambda: tfs.Predict(predict_request("pair", {"features": INPUTS["pair"]["features"]})),
                grpc.StatusCode.INVALID_ARGUMENT, "missing input 'ids'")  # fmt: skip
    request = predict_request("cnn", image)
    request.inputs["image"].tensor_content = request.inputs["image"].tensor_content[:-4]
    assert_code(lambda: tfs.Predict(request), grpc.StatusCode.INVALID_ARGUMENT,
                "input 'image'", "tensor_content has 252 bytes, expected 256")  # fmt: skip
    request = predict_request("cnn", image)
    request.output_filter.append("probabilities")
    assert_code(lambda: tfs.Predict(request), grpc.StatusCode.INVALID_ARGUMENT, "no output 'probabilities'")
    assert_code(lambda: tfs.Predict(predict_pb2.PredictRequest()), grpc.StatusCode.INVALID_ARGUMENT,
                "model_spec.name is required")  # fmt: skip
    metadata = get_model_metadata_pb2.GetModelMetadataRequest()
    metadata.model_spec.name = "cnn"
    assert_code(lambda: tfs.GetModelMetadata(metadata), grpc.StatusCode.INVALID_ARGUMENT,
                "must specify at least one metadata_field")  # fmt: skip
    status = get_model_status_pb2.GetModelStatusRequest()
    status.model_spec.SetInParent()  # a spec without a name: TF Serving finds no versions of model ""
    assert_code(
        lambda: models.GetModelStatus(status), grpc.StatusCode.NOT_FOUND, "Could not find any versions of model"
    )
    assert_code(lambda: models.GetModelStatus(get_model_status_pb2.GetModelStatusRequest()),
                grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")  # fmt: skip
    status.model_spec.name = "nope"
    assert_code(lambda: models.GetModelStatus(status), grpc.StatusCode.NOT_FOUND, "any versions of model nope")
    status.model_spec.name = "cnn"
    status.model_spec.version.value = 9
    assert_code(lambda: models.GetModelStatus(status), grpc.StatusCode.NOT_FOUND, "version 9 of model cnn")


def test_wrong_dtype_is_named_in_tf_serving_terms(tfs, zoo) -> None:
    """A TF Serving client reads DT_ names, the ones it sent; a V2 client of the same server reads V2 names."""
    image = INPUTS["cnn"]["image"][:1]
    with pytest.raises(grpc.RpcError) as info:
        tfs.Predict(predict_request("cnn", {"image": image.astype(np.float16)}), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "input 'image': expected dtype DT_FLOAT, got DT_HALF"
    pair = {**INPUTS["pair"], "ids": INPUTS["pair"]["ids"].astype(np.int32)}
    assert_code(lambda: tfs.Predict(predict_request("pair", pair)), grpc.StatusCode.INVALID_ARGUMENT,
                "input 'ids': expected dtype DT_INT64, got DT_INT32")  # fmt: skip
    client = triton.InferenceServerClient(zoo.target)
    try:
        wrong = triton.InferInput("image", list(image.shape), "FP16")
        wrong.set_data_from_numpy(image.astype(np.float16))
        with pytest.raises(triton.InferenceServerException, match="input 'image': expected datatype FP32, got FP16"):
            client.infer("cnn", [wrong])
    finally:
        client.close()


def examples_request(cls, signature: str, examples=EXAMPLES):  # noqa: ANN001, ANN201
    request = cls()
    request.model_spec.name = "examples"
    request.model_spec.signature_name = signature
    request.input.example_list.examples.extend(examples)
    return request


def test_classify_and_regress(tfs, reference) -> None:
    serialized = {"inputs": np.array([e.SerializeToString() for e in EXAMPLES], dtype=object)}
    expected = reference("examples", serialized, "classify")
    response = tfs.Classify(examples_request(classification_pb2.ClassificationRequest, "classify"), timeout=30)
    assert response.model_spec.version.value == 1 and response.model_spec.signature_name == "classify"
    labels = [[c.label.encode() for c in row.classes] for row in response.result.classifications]
    scores = np.array([[c.score for c in row.classes] for row in response.result.classifications], np.float32)
    assert labels == expected["classes"].tolist()
    assert scores.tobytes() == expected["scores"].tobytes()

    want = reference("examples", serialized, "regress")["outputs"]
    for signature in ("regress", "regress_tf2"):  # TF1-style method name, and a native TF2 (predict) export
        response = tfs.Regress(examples_request(regression_pb2.RegressionRequest, signature), timeout=30)
        got = np.array([r.value for r in response.result.regressions], np.float32)
        assert got.tobytes() == want.tobytes()

    # a context example is merged into every example (its features lose to the example's own)
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name, request.model_spec.signature_name = "examples", "classify"
    request.input.example_list_with_context.context.CopyFrom(example((9.0, 9.0)))
    request.input.example_list_with_context.examples.add()  # no features: the context's apply
    request.input.example_list_with_context.examples.append(EXAMPLES[0])
    merged = tfs.Classify(request, timeout=30).result.classifications
    unmerged = np.array([example((9.0, 9.0)).SerializeToString(), EXAMPLES[0].SerializeToString()], dtype=object)
    alone = reference("examples", {"inputs": unmerged}, "classify")
    assert np.array([[c.score for c in r.classes] for r in merged], np.float32).tobytes() == alone["scores"].tobytes()


def test_classify_and_regress_errors(tfs) -> None:
    classify = classification_pb2.ClassificationRequest
    assert_code(lambda: tfs.Classify(examples_request(classify, "regress")), grpc.StatusCode.INVALID_ARGUMENT,
                "Expected classification signature method_name to be tensorflow/serving/classify")  # fmt: skip
    assert_code(lambda: tfs.Regress(examples_request(regression_pb2.RegressionRequest, "classify")),
                grpc.StatusCode.INVALID_ARGUMENT, "Expected regression signature method_name")  # fmt: skip
    assert_code(lambda: tfs.Classify(examples_request(classify, "serving_default")),
                grpc.StatusCode.INVALID_ARGUMENT, "No classification inputs found")  # fmt: skip
    assert_code(lambda: tfs.Classify(examples_request(classify, "nope")), grpc.StatusCode.INVALID_ARGUMENT,
                "No signature was found with the name: nope")  # fmt: skip
    assert_code(lambda: tfs.Classify(examples_request(classify, "classify", [])), grpc.StatusCode.INVALID_ARGUMENT,
                "ClassificationRequest::input is empty.")  # fmt: skip
    request = examples_request(classify, "classify")
    request.model_spec.name = "nope"
    assert_code(lambda: tfs.Classify(request), grpc.StatusCode.NOT_FOUND)


def multi_request(*tasks: tuple[str, str, str], examples=EXAMPLES) -> inference_pb2.MultiInferenceRequest:  # noqa: ANN001
    """A MultiInferenceRequest of (model, signature, method) tasks over the examples."""
    request = inference_pb2.MultiInferenceRequest()
    for model, signature, method in tasks:
        task = request.tasks.add(method_name=method)
        task.model_spec.name, task.model_spec.signature_name = model, signature
    request.input.example_list.examples.extend(examples)
    return request


CLASSIFY, REGRESS = "tensorflow/serving/classify", "tensorflow/serving/regress"


def test_multi_inference_runs_classify_and_regress_on_one_input(tfs, reference) -> None:
    serialized = {"inputs": np.array([e.SerializeToString() for e in EXAMPLES], dtype=object)}
    request = multi_request(("examples", "classify", CLASSIFY), ("examples", "regress_tf2", REGRESS))
    request.tasks[0].model_spec.version.value = 1  # the first task's version is every task's
    classified, regressed = tfs.MultiInference(request, timeout=30).results
    assert (classified.model_spec.name, classified.model_spec.signature_name) == ("examples", "classify")
    assert classified.model_spec.version.value == 1 and regressed.model_spec.version.value == 1
    expected = reference("examples", serialized, "classify")
    rows = classified.classification_result.classifications
    assert [[c.label.encode() for c in row.classes] for row in rows] == expected["classes"].tolist()
    scores = np.array([[c.score for c in row.classes] for row in rows], np.float32)
    assert scores.tobytes() == expected["scores"].tobytes()
    values = np.array([r.value for r in regressed.regression_result.regressions], np.float32)
    assert values.tobytes() == reference("examples", serialized, "regress")["outputs"].tobytes()


def test_multi_inference_errors(tfs) -> None:
    def refused(request: inference_pb2.MultiInferenceRequest, code: grpc.StatusCode, message: str) -> None:
        assert_code(lambda: tfs.MultiInference(request, timeout=30), code, message)

    invalid = grpc.StatusCode.INVALID_ARGUMENT
    refused(multi_request(), invalid, "Tasks field is empty.")
    refused(multi_request(("examples", "classify", CLASSIFY), ("cnn", "regress", REGRESS)), invalid,
            "All ModelSpecs in a MultiInferenceRequest must access the same model name.")  # fmt: skip
    refused(multi_request(("examples", "classify", CLASSIFY), ("examples", "classify", CLASSIFY)), invalid,
            "Duplicate evaluation of signature: classify")  # fmt: skip
    refused(
        multi_request(("examples", "classify", "tensorflow/serving/predict")),
        grpc.StatusCode.UNIMPLEMENTED,
        "Unsupported signature method_name: tensorflow/serving/predict",
    )  # fmt: skip
    refused(multi_request(("examples", "regress", CLASSIFY)), invalid,
            "Expected classification signature method_name to be tensorflow/serving/classify")  # fmt: skip
    refused(multi_request(("examples", "classify", CLASSIFY), examples=[]), invalid,
            "MultiInferenceRequest::input is empty.")  # fmt: skip
    refused(multi_request(("nope", "classify", CLASSIFY)), grpc.StatusCode.NOT_FOUND, "nope")


def test_multi_inference_runs_every_task_on_the_first_tasks_version(tfs) -> None:
    """As TF Serving, which resolves one servable from tasks[0]'s spec: a later task's version is not looked up."""
    request = multi_request(("examples", "classify", CLASSIFY), ("examples", "regress", REGRESS))
    request.tasks[0].model_spec.version.value = 1
    request.tasks[1].model_spec.version.value = 99  # no such version: ignored
    response = tfs.MultiInference(request, timeout=30)
    assert [r.model_spec.version.value for r in response.results] == [1, 1]


def test_get_model_metadata_returns_the_signature_defs(tfs, zoo_repo: Path) -> None:
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "examples"
    response = tfs.GetModelMetadata(request, timeout=30)
    assert response.model_spec.name == "examples" and response.model_spec.version.value == 1
    signatures = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signatures)
    saved = saved_model_pb2.SavedModel.FromString((zoo_repo / "examples" / "1" / "saved_model.pb").read_bytes())
    assert dict(signatures.signature_def) == dict(saved.meta_graphs[0].signature_def)
    assert signatures.signature_def["classify"].method_name == "tensorflow/serving/classify"
    assert signatures.signature_def["serving_default"].inputs["x"].dtype == tf.float32.as_datatype_enum
    request.metadata_field.append("graph")
    assert_code(lambda: tfs.GetModelMetadata(request), grpc.StatusCode.INVALID_ARGUMENT,
                "Metadata field graph is not supported")  # fmt: skip


def test_v2_clients_see_the_same_models(zoo, reference) -> None:
    client = triton.InferenceServerClient(zoo.target)
    try:
        texts = INPUTS["strings"]["text"]
        inp = triton.InferInput("text", [len(texts)], "BYTES")
        inp.set_data_from_numpy(texts)
        result = client.infer("strings", [inp])
        expected = reference("strings", INPUTS["strings"])
        assert result.as_numpy("upper").tolist() == expected["upper"].tolist()
        assert result.as_numpy("bucket").tobytes() == expected["bucket"].tobytes()
        tokens = triton.InferInput("tokens", list(INPUTS["text"]["tokens"].shape), "INT32")
        tokens.set_data_from_numpy(INPUTS["text"]["tokens"])
        got = client.infer("text", [tokens]).as_numpy("output_0")
        assert got.tobytes() == reference("text", INPUTS["text"])["output_0"].tobytes()
        assert "model_repository" in client.get_server_metadata().extensions
        ready = {(m.name, m.version) for m in client.get_model_repository_index().models if m.state == "READY"}
        assert {("cnn", "1"), ("cnn", "2"), ("pair", "1"), ("text", "1"), ("strings", "1"), ("examples", "1")} <= ready
    finally:
        client.close()


def test_repository_control_needs_explicit_mode(channel, models) -> None:
    v2 = pb_grpc.GRPCInferenceServiceStub(channel)
    for call in (lambda: v2.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="cnn")),
                 lambda: v2.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="cnn")),
                 lambda: models.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest())):  # fmt: skip
        assert_code(call, grpc.StatusCode.FAILED_PRECONDITION, "explicit model control")
    assert v2.ModelReady(pb.ModelReadyRequest(name="cnn")).ready


def test_reflection_lists_the_tf_serving_services(channel) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    names = {s.name for s in next(stub.ServerReflectionInfo(iter([request]))).list_services_response.service}
    assert {"tensorflow.serving.PredictionService", "tensorflow.serving.ModelService"} <= names
    request = reflection_pb2.ServerReflectionRequest(file_containing_symbol="tensorflow.serving.PredictionService")
    assert next(stub.ServerReflectionInfo(iter([request]))).file_descriptor_response.file_descriptor_proto


def test_a_signature_without_inputs_is_served_to_a_request_without_inputs(tfs, zoo) -> None:
    """TF Serving runs a signature that takes no inputs (0 given, 0 expected); so does kerve, on both protocols."""
    from kerve.protos import grpc_service_pb2 as pb
    from kerve.protos import grpc_service_pb2_grpc as pb_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "constant"
    assert tf.make_ndarray(tfs.Predict(request, timeout=30).outputs["y"]).tolist() == [1.5, -2.0, 4.0]
    with grpc.insecure_channel(zoo.target) as channel:
        response = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
            pb.ModelInferRequest(model_name="constant"), timeout=30
        )
    assert np.frombuffer(response.raw_output_contents[0], np.float32).tolist() == [1.5, -2.0, 4.0]
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.ones(1, np.float32)))  # one it does not take
    assert_code(lambda: tfs.Predict(request), grpc.StatusCode.INVALID_ARGUMENT, "has no input 'x'")


def test_a_complex_output_is_answered_to_tf_serving_clients(tfs) -> None:
    """TF Serving returns DT_COMPLEX64 outputs; so does kerve (in tensor_content), bit-identical to the model."""
    x = np.array([[1.0, 2.0, 0.5, -1.0], [0.0, 3.0, 1.0, 2.0]], np.float32)
    got = tf.make_ndarray(tfs.Predict(predict_request("spectrum", {"x": x}), timeout=30).outputs["spec"])
    assert got.dtype == np.complex64
    assert got.tobytes() == tf.signal.rfft(x).numpy().tobytes()
