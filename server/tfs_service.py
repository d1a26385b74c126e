"""TensorFlow Serving's gRPC API (`tensorflow.serving.PredictionService` and `ModelService`) on kerve's port.

Thin servicers: they translate with tfs_codec, resolve through the ModelManager and run through the same
InferenceEngine as V2, so batching, statistics, metrics and hot reload behave identically. Status codes follow
TF Serving's: unknown model or version NOT_FOUND; unknown version label INVALID_ARGUMENT ("Unrecognized servable
version label"); unknown signature FAILED_PRECONDITION for Predict and INVALID_ARGUMENT for Classify/Regress;
malformed inputs INVALID_ARGUMENT naming the input.

Classify and Regress (and MultiInference, which runs several of them on one input) follow TF Serving's rules for a
SignatureDef: its method_name is `tensorflow/serving/classify` (or `.../regress`), or `tensorflow/serving/predict`
with the classification (regression) structure, which is what native TF2 exports write and what TF Serving accepts
by default (`--enable_signature_method_name_check=false`): one string input `inputs`; outputs `classes` and/or
`scores` (regression: one output `outputs`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import message, text_format
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_service_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
    status_pb2,
)
from tensorflow_serving.config import model_server_config_pb2

from kerve import repository

from . import tfs_codec
from .errors import ErrorCode, ServingError, first_line, invalid, not_found
from .group_control import ModelControl
from .inference import InferenceEngine
from .manager import ModelManager, ModelVersion, VersionState
from .trace import trace_context
from .types import InferRequest, InferResponse

PREDICTION_SERVICE = prediction_service_pb2.DESCRIPTOR.services_by_name["PredictionService"].full_name
MODEL_SERVICE = model_service_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name
SERVICES = (PREDICTION_SERVICE, MODEL_SERVICE)
PROTO_FILES = (prediction_service_pb2.DESCRIPTOR, model_service_pb2.DESCRIPTOR)  # for the reflection pool
SIGNATURE_DEF_FIELD = "signature_def"
SAVED_MODEL_TEXT_FILE = "saved_model.pbtxt"
SERVING_TAG = "serve"

_STATES = {
    VersionState.LOADING: get_model_status_pb2.ModelVersionStatus.LOADING,
    VersionState.READY: get_model_status_pb2.ModelVersionStatus.AVAILABLE,
    VersionState.UNLOADING: get_model_status_pb2.ModelVersionStatus.UNLOADING,
    VersionState.UNLOADED: get_model_status_pb2.ModelVersionStatus.END,
    VersionState.FAILED: get_model_status_pb2.ModelVersionStatus.END,
}
_UNKNOWN = grpc.StatusCode.UNKNOWN.value[0]


async def _abort(context: grpc.aio.ServicerContext, error: ServingError) -> None:
    await context.abort(grpc.StatusCode[error.code.value], tfs_codec.error_message(error))


def _failed_precondition(message: str) -> ServingError:
    return ServingError(ErrorCode.FAILED_PRECONDITION, message)


def _label_unavailable(model: str, version: int) -> ServingError:
    """TF Serving's refusal of a version label (server_core.cc), word for word."""
    return _failed_precondition(
        f"Request to assign label to version {version} of model {model}, which is not currently available for inference"
    )


def read_signature_defs(version_dir: Path) -> dict[str, meta_graph_pb2.SignatureDef]:
    """The SignatureDef map of the SavedModel's `serve` MetaGraph, as TF Serving reports and checks it.

    Reads saved_model.pb, or saved_model.pbtxt when there is no binary one (as the loader does). Raises OSError
    when neither can be read and DecodeError/ParseError when the file is not a SavedModel: the caller says so."""
    saved = saved_model_pb2.SavedModel()
    binary, text = version_dir / repository.SAVED_MODEL_FILE, version_dir / SAVED_MODEL_TEXT_FILE
    if text.exists() and not binary.exists():
        text_format.Parse(text.read_text(), saved)
    else:
        saved.ParseFromString(binary.read_bytes())
    graphs = [g for g in saved.meta_graphs if SERVING_TAG in g.meta_info_def.tags] or list(saved.meta_graphs)
    return dict(graphs[0].signature_def) if graphs else {}


def _unreadable(entry: ModelVersion, why: str) -> ServingError:
    """The SavedModel a loaded version came from can no longer be read (or is another model now), and its
    SignatureDefs were never read: GetModelMetadata cannot answer for it; the version still serves, and Classify and
    Regress check the structure of what it serves instead."""
    return _failed_precondition(
        f"the SignatureDefs of version {entry.version} of model {entry.model} are not available: {why}; "
        f"the loaded version still serves Predict, Classify and Regress"
    )


def _mismatch(entry: ModelVersion, defs: Mapping[str, meta_graph_pb2.SignatureDef]) -> str:
    """Why the SignatureDefs on disk are not those of the loaded servable ('' if they agree): saved_model.pb can be
    replaced in place after the version loaded, and metadata must never describe a model that is not served."""
    for key, signature in (getattr(entry.servable, "signatures", None) or {}).items():
        found = defs.get(key)
        if found is None:
            return f"signature {key!r} is served but not in the file"
        if set(found.inputs) != set(signature.inputs) or set(found.outputs) != set(signature.outputs):
            return f"signature {key!r} has other inputs or outputs in the file than in the loaded model"
    return ""


def _served_signature_def(entry: ModelVersion, key: str) -> meta_graph_pb2.SignatureDef | None:
    """A SignatureDef with the served signature's input and output names and the predict method name: enough for
    Classify and Regress to check a signature's structure (which the loaded model has) when its SavedModel file
    cannot be read, as TF Serving keeps serving a version whose files went."""
    served = entry.servable.signatures.get(key)
    if served is None:
        return None
    signature = meta_graph_pb2.SignatureDef(method_name=tfs_codec.PREDICT_METHOD)
    for name in served.inputs:
        signature.inputs[name].SetInParent()
    for name in served.outputs:
        signature.outputs[name].SetInParent()
    return signature


class _Target:
    """Resolution shared by the servicers: model spec -> ready version, with TF Serving's label errors."""

    def __init__(self, manager: ModelManager) -> None:
        self.manager = manager
        self._signature_defs: dict[tuple[str, int], tuple[ModelVersion, dict[str, meta_graph_pb2.SignatureDef]]] = {}

    def check_label(self, model: str, label: str | None) -> None:
        """TF Serving's label check comes before the model's: an unknown model's label, and an empty one, are
        unrecognized labels too."""
        if label is not None and label not in self.manager.labels(model):
            raise invalid(f"Unrecognized servable version label: {label}")

    def resolve(self, model: str, version: int | None, label: str | None) -> ModelVersion:
        if not model:
            raise invalid("model_spec.name is required")
        self.check_label(model, label)
        return self.manager.resolve(model, version, label)

    async def signature_defs(self, entry: ModelVersion) -> dict[str, meta_graph_pb2.SignatureDef]:
        """The version's SignatureDefs, read once per loaded version (the entry object: a reload makes a new one)
        and kept for its lifetime, so they stay what was loaded when the files on disk change or go.

        A servable that kept the SignatureDefs it loaded (a `signature_defs` attribute) is the source; otherwise
        the first read from disk, which is refused, rather than cached, when it disagrees with what is served.
        Raises FAILED_PRECONDITION when neither can be had."""
        loaded = getattr(entry.servable, "signature_defs", None)
        if isinstance(loaded, Mapping):
            return dict(loaded)
        key = (entry.model, entry.version)
        cached = self._signature_defs.get(key)
        if cached is not None and cached[0] is entry:
            return cached[1]
        try:
            defs = await asyncio.to_thread(read_signature_defs, entry.path)
        except OSError as exc:
            raise _unreadable(entry, f"cannot read its SavedModel ({exc.strerror or type(exc).__name__})") from None
        except (message.DecodeError, text_format.ParseError) as exc:
            raise _unreadable(entry, f"its SavedModel file is not a SavedModel ({first_line(exc)})") from None
        why = _mismatch(entry, defs)
        if why:
            raise _unreadable(entry, f"its SavedModel on disk was replaced after it loaded ({why})")
        gone = [k for k, (e, _) in self._signature_defs.items() if e.state is VersionState.UNLOADED]
        for old in gone:  # forget unloaded versions, so the cache follows what is loaded
            del self._signature_defs[old]
        self._signature_defs[key] = (entry, defs)
        return defs


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, manager: ModelManager, engine: InferenceEngine) -> None:
        self.engine = engine
        self._target = _Target(manager)

    def _rejected(self, model: str, error: ServingError) -> None:
        """Count a request refused before the engine saw it (unknown label or signature, undecodable input)."""
        self.engine.count_rejected(model, tfs_codec.PROTOCOL, error)

    async def Predict(
        self, request: predict_pb2.PredictRequest, context: grpc.aio.ServicerContext
    ) -> predict_pb2.PredictResponse:
        try:
            try:
                version, label = tfs_codec.spec_version(request.model_spec)
                entry = self._target.resolve(request.model_spec.name, version, label)
                key = request.model_spec.signature_name or tfs_codec.DEFAULT_SIGNATURE
                if key not in entry.servable.signatures:
                    raise _failed_precondition(f'Serving signature key "{key}" not found.')
                infer = tfs_codec.decode_predict(request, context.time_remaining())
                if self.engine.tracer.propagates:
                    infer.trace_context = trace_context(context.invocation_metadata())
            except ServingError as exc:
                self._rejected(request.model_spec.name, exc)
                raise
            response = await self.engine.infer(infer)
            return tfs_codec.encode_predict(response.model, response.version, key, response.outputs)
        except ServingError as exc:
            await _abort(context, exc)
            raise

    async def _examples_request(
        self,
        request: classification_pb2.ClassificationRequest | regression_pb2.RegressionRequest,
        context: grpc.aio.ServicerContext,
        method: str,
        what: str,
    ) -> tuple[InferRequest, str]:
        """Check the signature like TF Serving and build the request: (request, signature key)."""
        spec = request.model_spec
        version, label = tfs_codec.spec_version(spec)
        entry = self._target.resolve(spec.name, version, label)
        key = spec.signature_name or tfs_codec.DEFAULT_SIGNATURE
        try:
            signature = (await self._target.signature_defs(entry)).get(key)
        except ServingError:  # the file is gone or replaced: check what is served, which is what will run
            signature = _served_signature_def(entry, key)
        if signature is None or key not in entry.servable.signatures:
            raise invalid(f"No signature was found with the name: {key}")
        kind = "classification" if method == tfs_codec.CLASSIFY_METHOD else "regression"
        if signature.method_name not in (method, tfs_codec.PREDICT_METHOD):
            raise invalid(f"Expected {kind} signature method_name to be {method}. Was: {signature.method_name}")
        if len(signature.inputs) != 1:
            raise invalid("Expected one input Tensor.")
        if tfs_codec.EXAMPLES_INPUT not in signature.inputs:
            raise invalid(f"No {kind} inputs found in SignatureDef {key!r}: it needs an input named 'inputs'")
        if method == tfs_codec.CLASSIFY_METHOD:
            wanted = [n for n in (tfs_codec.CLASSES_OUTPUT, tfs_codec.SCORES_OUTPUT) if n in signature.outputs]
            if len(signature.outputs) not in (1, 2):
                raise invalid(f"Expected one or two output Tensors, found {len(signature.outputs)}")
            if not wanted:
                raise invalid(
                    f'Expected classification signature outputs to contain at least one of "classes" or "scores"; '
                    f"signature {key!r} has {sorted(signature.outputs)}"
                )
        else:
            wanted = [tfs_codec.REGRESS_OUTPUT]
            if len(signature.outputs) != 1:
                raise invalid("Expected one output Tensor.")
            if tfs_codec.REGRESS_OUTPUT not in signature.outputs:
                raise invalid(f"No regression outputs found in SignatureDef {key!r}: it needs an output 'outputs'")
        infer = tfs_codec.decode_examples_request(request, what, context.time_remaining())
        infer.outputs = wanted
        if self.engine.tracer.propagates:
            infer.trace_context = trace_context(context.invocation_metadata())
        return infer, key

    async def _run_examples(
        self,
        request: classification_pb2.ClassificationRequest | regression_pb2.RegressionRequest,
        context: grpc.aio.ServicerContext,
        method: str,
        what: str,
    ) -> tuple[str, int, int, dict[str, Any]]:
        """(signature key, version, rows, outputs) of a Classify or Regress request."""
        try:
            infer, key = await self._examples_request(request, context, method, what)
        except ServingError as exc:
            self._rejected(request.model_spec.name, exc)
            raise
        response = await self.engine.infer(infer)
        return key, response.version, len(infer.inputs[tfs_codec.EXAMPLES_INPUT]), response.outputs

    async def Classify(
        self, request: classification_pb2.ClassificationRequest, context: grpc.aio.ServicerContext
    ) -> classification_pb2.ClassificationResponse:
        try:
            key, version, rows, outputs = await self._run_examples(
                request, context, tfs_codec.CLASSIFY_METHOD, "ClassificationRequest"
            )
            response = classification_pb2.ClassificationResponse()
            tfs_codec.response_spec(response.model_spec, request.model_spec.name, version, key)
            tfs_codec.encode_classification(response.result, outputs, rows)
            return response
        except ServingError as exc:
            await _abort(context, exc)
            raise

    async def Regress(
        self, request: regression_pb2.RegressionRequest, context: grpc.aio.ServicerContext
    ) -> regression_pb2.RegressionResponse:
        try:
            key, version, rows, outputs = await self._run_examples(
                request, context, tfs_codec.REGRESS_METHOD, "RegressionRequest"
            )
            response = regression_pb2.RegressionResponse()
            tfs_codec.response_spec(response.model_spec, request.model_spec.name, version, key)
            tfs_codec.encode_regression(response.result, outputs, rows)
            return response
        except ServingError as exc:
            await _abort(context, exc)
            raise

    async def MultiInference(
        self, request: inference_pb2.MultiInferenceRequest, context: grpc.aio.ServicerContext
    ) -> inference_pb2.MultiInferenceResponse:
        """Several Classify/Regress tasks on one input, with TF Serving's rules: every task names the same model,
        each a different signature, method classify or regress; all run on the version the first task resolves."""
        tasks = list(request.tasks)
        model = tasks[0].model_spec.name if tasks else ""
        try:
            try:
                built = [await self._task_request(request, task, context) for task in _checked_tasks(tasks)]
                version, label = tfs_codec.spec_version(tasks[0].model_spec)
                pinned = self._target.resolve(model, version, label).version  # one version for every task
            except ServingError as exc:
                self._rejected(model, exc)
                raise
            for infer, _, _ in built:
                infer.version, infer.label = pinned, None
            answers = await self._run_pinned([infer for infer, _, _ in built])
            response = inference_pb2.MultiInferenceResponse()
            for (infer, key, method), answer in zip(built, answers, strict=True):
                if isinstance(answer, BaseException):
                    raise answer
                result = response.results.add()
                tfs_codec.response_spec(result.model_spec, model, answer.version, key)
                rows = len(infer.inputs[tfs_codec.EXAMPLES_INPUT])
                if method == tfs_codec.CLASSIFY_METHOD:
                    tfs_codec.encode_classification(result.classification_result, answer.outputs, rows)
                else:
                    tfs_codec.encode_regression(result.regression_result, answer.outputs, rows)
            return response
        except ServingError as exc:
            await _abort(context, exc)
            raise

    async def _run_pinned(self, requests: list[InferRequest]) -> list[InferResponse | BaseException]:
        """Start every task in this loop turn, right after the version was resolved: each reserves the version as
        it starts, so a hot reload cannot unload it in between (tasks started one loop turn later by a gather
        asked for a version that was already unloading, and failed UNAVAILABLE)."""
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[InferResponse]] = []
        calls = []
        try:
            for infer in requests:
                future: asyncio.Future[InferResponse] = loop.create_future()
                calls.append(self.engine.start(infer, future))
                futures.append(future)
            return await asyncio.gather(*futures, return_exceptions=True)
        except BaseException:  # one refused up front, or the client went away: the others stop too
            for call in calls:
                call.cancel()
            raise

    async def _task_request(
        self,
        request: inference_pb2.MultiInferenceRequest,
        task: inference_pb2.InferenceTask,
        context: grpc.aio.ServicerContext,
    ) -> tuple[InferRequest, str, str]:
        """One task as the Classify or Regress request it is: (request, signature key, method name)."""
        kind = (
            classification_pb2.ClassificationRequest
            if task.method_name == tfs_codec.CLASSIFY_METHOD
            else regression_pb2.RegressionRequest
        )
        single = kind(model_spec=task.model_spec, input=request.input)
        first = request.tasks[0].model_spec  # as TF Serving: the first task's version serves every task
        single.model_spec.ClearField("version")
        single.model_spec.ClearField("version_label")
        if first.WhichOneof("version_choice") == "version":
            single.model_spec.version.CopyFrom(first.version)
        elif first.WhichOneof("version_choice") == "version_label":
            single.model_spec.version_label = first.version_label
        infer, key = await self._examples_request(single, context, task.method_name, "MultiInferenceRequest")
        return infer, key, task.method_name

    async def GetModelMetadata(
        self, request: get_model_metadata_pb2.GetModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        try:
            if not request.HasField("model_spec"):
                raise invalid("Missing ModelSpec")
            if not request.metadata_field:
                raise invalid("GetModelMetadataRequest must specify at least one metadata_field")
            for name in request.metadata_field:
                if name != SIGNATURE_DEF_FIELD:
                    raise invalid(f"Metadata field {name} is not supported")
            version, label = tfs_codec.spec_version(request.model_spec)
            entry = self._target.resolve(request.model_spec.name, version, label)
            signatures = get_model_metadata_pb2.SignatureDefMap()
            for key, signature in (await self._target.signature_defs(entry)).items():
                signatures.signature_def[key].CopyFrom(signature)
        except ServingError as exc:
            await _abort(context, exc)
            raise
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        tfs_codec.response_spec(response.model_spec, entry.model, entry.version)
        response.metadata[SIGNATURE_DEF_FIELD].Pack(signatures)
        return response


def _checked_tasks(tasks: list[inference_pb2.InferenceTask]) -> list[inference_pb2.InferenceTask]:
    """TF Serving's checks on a MultiInferenceRequest's tasks, with its messages."""
    if not tasks:
        raise invalid("Tasks field is empty.")
    seen: set[str] = set()
    for task in tasks:
        if task.model_spec.name != tasks[0].model_spec.name:
            raise invalid("All ModelSpecs in a MultiInferenceRequest must access the same model name.")
        key = task.model_spec.signature_name or tfs_codec.DEFAULT_SIGNATURE
        if key in seen:
            raise invalid(f"Duplicate evaluation of signature: {key}")
        seen.add(key)
        if task.method_name not in (tfs_codec.CLASSIFY_METHOD, tfs_codec.REGRESS_METHOD):
            raise ServingError(ErrorCode.UNIMPLEMENTED, f"Unsupported signature method_name: {task.method_name}")
    return tasks


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, manager: ModelManager, control: ModelControl | None = None) -> None:
        self.manager = manager
        self.control = control if control is not None else ModelControl(manager)  # loads reach a whole group
        self._target = _Target(manager)

    async def GetModelStatus(
        self, request: get_model_status_pb2.GetModelStatusRequest, context: grpc.aio.ServicerContext
    ) -> get_model_status_pb2.GetModelStatusResponse:
        try:
            return self._status(request)
        except ServingError as exc:
            await _abort(context, exc)
            raise

    def _status(
        self, request: get_model_status_pb2.GetModelStatusRequest
    ) -> get_model_status_pb2.GetModelStatusResponse:
        spec = request.model_spec
        if not request.HasField("model_spec"):
            raise invalid("Missing ModelSpec")
        if not self.manager.knows(spec.name):
            raise not_found(f"Could not find any versions of model {spec.name}")
        # as TF Serving: a version narrows the answer, a label does not (every version is listed), newest first
        version = int(spec.version.value) if spec.WhichOneof("version_choice") == "version" else None
        # the versions it knows, and those deleted from disk since they were served (END, as TF Serving keeps them)
        known: list[tuple[int, ModelVersion | None]] = [(e.version, e) for e in self.manager.entries(spec.name)]
        gone = self.manager.gone_versions(spec.name)
        known += [(v, None) for v in gone]
        known.sort(key=lambda item: item[0], reverse=True)
        if version is not None:
            known = [item for item in known if item[0] == version]
            if not known:
                raise not_found(f"Could not find version {version} of model {spec.name}")
        if not known:
            failure = next((r.reason for r in self.manager.index() if r.model == spec.name and not r.version), "")
            raise not_found(f"Could not find any versions of model {spec.name}" + (f": {failure}" if failure else ""))
        response = get_model_status_pb2.GetModelStatusResponse()
        for number, entry in known:
            state = _STATES[entry.state] if entry is not None else get_model_status_pb2.ModelVersionStatus.END
            status = response.model_version_status.add(version=number, state=state)
            status.status.SetInParent()  # OK, as TF Serving reports a healthy version
            reason = (
                gone.get(number, "") if entry is None else entry.reason if entry.state is VersionState.FAILED else ""
            )
            if reason:  # a failed version, loaded or deleted since: END with its error, as TF Serving keeps it
                status.status.CopyFrom(status_pb2.StatusProto(error_code=_UNKNOWN, error_message=reason))
        return response

    async def HandleReloadConfigRequest(
        self, request: model_management_pb2.ReloadConfigRequest, context: grpc.aio.ServicerContext
    ) -> model_management_pb2.ReloadConfigResponse:
        """Serve exactly the listed models (explicit model control): load them, unload every other one."""
        try:
            self.manager.require_explicit("HandleReloadConfigRequest")
            models = self._model_list(request.config)
            await asyncio.to_thread(self._check_labels_on_disk, models)
            await self.control.apply(models, exclusive=True)
            self._check_labels_moved(models)
        except ServingError as exc:
            await _abort(context, exc)
            raise
        return model_management_pb2.ReloadConfigResponse(status=status_pb2.StatusProto())

    def _check_labels_on_disk(self, models: Mapping[str, Mapping[str, object]]) -> None:
        """Refuse, before anything changes, a label naming a version the repository does not have: TF Serving
        refuses to point a label at a version that is not available (FAILED_PRECONDITION, its message), and keeps
        its config; accepted, the label would answer every request NOT_FOUND. A model missing from the repository
        is left to apply_models, which says NOT_FOUND. Reads the disk: run it in a thread."""
        for name, overrides in models.items():
            labels = overrides.get("labels")
            if not isinstance(labels, Mapping) or not (self.manager.repository / name).is_dir():
                continue
            on_disk = set(repository.list_versions(self.manager.repository, name))
            missing = sorted(set(labels.values()) - on_disk)
            if missing:
                raise _label_unavailable(name, missing[0])

    def _check_labels_moved(self, models: Mapping[str, Mapping[str, object]]) -> None:
        """After the load: a label whose version did not come up (it failed to load) did not move (the manager keeps
        a label on the version it served), and the client must hear so, as from TF Serving."""
        for name, overrides in models.items():
            labels = overrides.get("labels")
            if not isinstance(labels, Mapping):
                continue
            now, ready = self.manager.labels(name), set(self.manager.ready_versions(name))
            for label, version in sorted(labels.items()):
                if now.get(label) != version or version not in ready:
                    raise _label_unavailable(name, version)

    def _model_list(self, config: model_server_config_pb2.ModelServerConfig) -> dict[str, dict[str, object]]:
        if config.WhichOneof("config") != "model_config_list":
            raise invalid("ModelServerConfig must set model_config_list (custom_model_config is not supported)")
        models: dict[str, dict[str, object]] = {}
        for model in config.model_config_list.config:
            name = model.name
            try:
                repository.validate_model_name(name)
            except repository.RepositoryError as exc:
                raise invalid(str(exc)) from None
            if name in models:
                raise invalid(f"model {name!r} is listed more than once")
            if model.model_platform not in ("", "tensorflow"):
                raise invalid(f"model {name!r}: model_platform {model.model_platform!r} is not supported")
            expected = (self.manager.repository / name).resolve()
            if model.base_path and Path(model.base_path).resolve() != expected:
                raise invalid(
                    f"model {name!r}: base_path must be empty or {expected}: kerve serves its model repository"
                )
            overrides: dict[str, object] = {}
            policy = model.model_version_policy
            choice = policy.WhichOneof("policy_choice")
            if choice == "latest":
                overrides["version_policy"] = {"latest": policy.latest.num_versions or 1}
            elif choice == "all":
                overrides["version_policy"] = "all"
            elif choice == "specific":
                overrides["version_policy"] = {"specific": [int(v) for v in policy.specific.versions]}
            if model.version_labels:
                overrides["labels"] = {k: int(v) for k, v in model.version_labels.items()}
            models[name] = overrides
        return models
