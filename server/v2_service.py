"""The V2 `inference.GRPCInferenceService` servicer: translate, delegate to the engine, translate back."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import grpc

import kerve
from kerve.protos import grpc_service_pb2 as pb
from kerve.protos import grpc_service_pb2_grpc as pb_grpc

from . import log_settings, triton_config, v2_codec
from .errors import ErrorCode, ServingError
from .group_control import ModelControl
from .group_stats import GroupStats
from .inference import InferenceEngine
from .manager import ModelManager, ModelVersion, VersionState, parse_version
from .model import PLATFORM
from .shared_memory import SystemSharedMemory
from .stats import DURATIONS, PHASES, Duration, summed
from .stream_pipeline import Pipeline, Slot
from .trace import FIXED_KEYS as FIXED_TRACE_KEYS
from .trace import trace_context
from .types import InferRequest

log = logging.getLogger("kerve.server.v2")

EXTENSIONS = [
    "classification", "statistics", "model_repository", "model_configuration", "logging", "schedule_policy", "trace"
]  # fmt: skip
SHARED_MEMORY_EXTENSION = "system_shared_memory"
_SETTING_FIELDS = {bool: "bool_param", int: "uint32_param", str: "string_param"}  # LogSettings values by type
STREAM_WINDOW = 256  # requests of one stream in flight at once; reading pauses beyond it (backpressure)


async def abort(context: grpc.aio.ServicerContext, error: ServingError) -> None:
    await context.abort(grpc.StatusCode[error.code.value], v2_codec.error_message(error))


class V2Servicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(
        self,
        manager: ModelManager,
        engine: InferenceEngine,
        is_ready: Callable[[], bool],
        shared_memory: SystemSharedMemory | None = None,
        logs: log_settings.LogSettings | None = None,
        devices: int = 1,
        group_stats: GroupStats | None = None,
        control: ModelControl | None = None,
    ) -> None:
        self.manager = manager
        self.control = control if control is not None else ModelControl(manager)  # loads reach a whole group
        # a --processes group's: every process registers each region and applies each settings change alike
        self._group = self.control.group
        if self._group is not None:
            self._group.add("shm_register", self._register_region)
            self._group.add("shm_unregister", self._unregister_region)
            self._group.add("log", self._apply_log_settings)
            self._group.add("trace", self._apply_trace_settings)
        self.group_stats = group_stats  # a --processes group's: ModelStatistics counts every process's requests
        self.devices = devices  # the server's: a load config's KIND_CPU count is spread over its CPU devices
        self.engine = engine
        self._is_ready = is_ready
        self.shared_memory = shared_memory  # None: the extension is off (--no-shared-memory)
        self.logs = logs if logs is not None else log_settings.LogSettings(log_settings.DEFAULT_FORMAT)

    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._is_ready())

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        try:
            self.manager.resolve(request.name, parse_version(request.name, request.version))
        except ServingError:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        extensions = [*EXTENSIONS, SHARED_MEMORY_EXTENSION] if self.shared_memory is not None else EXTENSIONS
        return pb.ServerMetadataResponse(name="kerve", version=kerve.__version__, extensions=extensions)

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        try:
            entry, signature = self._described(request.name, request.version)
            return pb.ModelMetadataResponse(
                name=entry.model,
                # as Triton: the version asked for, else every ready one
                versions=[str(entry.version)] if request.version else _ready(self.manager, entry.model),
                platform=PLATFORM,
                inputs=[v2_codec.tensor_metadata(entry.model, "input", s) for _, s in sorted(signature.inputs.items())],
                outputs=[
                    v2_codec.tensor_metadata(entry.model, "output", s) for _, s in sorted(signature.outputs.items())
                ],
            )
        except ServingError as exc:
            await abort(context, exc)
            raise

    async def ModelConfig(
        self, request: pb.ModelConfigRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelConfigResponse:
        try:
            config = self._model_config(request.name, request.version)
        except ServingError as exc:
            await abort(context, exc)
            raise
        return pb.ModelConfigResponse(config=config)

    def _model_config(self, name: str, version: str) -> pb.ModelConfig:
        entry, signature = self._described(name, version)
        batching = self.engine.batching_for(entry, signature)
        return v2_codec.model_config(
            entry.model,
            PLATFORM,
            signature.inputs,
            signature.outputs,
            batching,
            self.manager.version_policy(name) or entry.config.version_policy,
            getattr(entry.servable, "runner_devices", ()),
            entry.config.response_cache,
            _label_files(entry, signature.outputs),
            None if batching is not None else self.engine.row_limit(entry, signature),
        )

    def _described(self, name: str, version: str) -> tuple[ModelVersion, Any]:
        """The version a metadata or config request names, and its default signature (what both describe)."""
        entry = self.manager.resolve(name, parse_version(name, version))
        return entry, entry.servable.signature(None)

    def _decode(
        self, request: pb.ModelInferRequest, time_remaining: float | None
    ) -> tuple[InferRequest, v2_codec.OutputRequests | None]:
        """The internal request and how its outputs go back; one that cannot be decoded is counted (it never
        reaches the engine) and raised."""
        try:
            decoded = v2_codec.decode_request(request, time_remaining, self.shared_memory)
            return decoded, v2_codec.output_requests(request, self.shared_memory)
        except ServingError as exc:
            self.engine.count_rejected(request.model_name, "v2", exc)
            raise

    async def _infer(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext) -> pb.ModelInferResponse:
        decoded, outputs = self._decode(request, context.time_remaining())
        if self.engine.tracer.propagates:
            decoded.trace_context = trace_context(context.invocation_metadata())
        return v2_codec.encode_response(await self.engine.infer(decoded), outputs)

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        try:
            return await self._infer(request, context)
        except ServingError as exc:
            await abort(context, exc)
            raise

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """One response per request, in request order; a failed request yields error_message and the stream goes on.

        Requests are pipelined: each is decoded, validated and queued for its batch as soon as it is read (up to
        STREAM_WINDOW at once), so the messages of one stream share batches instead of running one after another.
        Responses still leave in order. No task and no future per message: each call completes into its slot in
        the stream's pipeline, which wakes this generator when the oldest answer is ready.
        """
        pipeline = Pipeline(STREAM_WINDOW)
        # gRPC metadata belongs to the stream: a trace context in it is every message's parent
        carrier = trace_context(context.invocation_metadata()) if self.engine.tracer.propagates else None

        async def read() -> None:
            try:
                async for request in request_iterator:
                    pipeline.push(self._stream_start(pipeline, request, context.time_remaining(), carrier))
                    if pipeline.full:
                        await pipeline.room()
            finally:
                pipeline.end()

        reader = asyncio.ensure_future(read())
        try:
            while (slot := await pipeline.next()) is not None:
                yield _stream_response(slot)
            await reader  # surfaces an error that ended the request stream
        finally:
            reader.cancel()
            pipeline.cancel()

    def _stream_start(
        self,
        pipeline: Pipeline,
        request: pb.ModelInferRequest,
        time_remaining: float | None,
        carrier: dict[str, str] | None = None,
    ) -> Slot:
        slot = pipeline.slot(request)
        try:
            decoded, slot.outputs = self._decode(request, time_remaining)
            decoded.trace_context = carrier
            slot.call = self.engine.start(decoded, slot)
        except ServingError as exc:
            slot.reject(exc)
        except Exception as exc:  # a defect of ours: this message fails, the stream and its other messages go on
            log.exception("stream message for model %r failed before reaching the model", request.model_name)
            slot.reject(ServingError(ErrorCode.INTERNAL, f"the server failed to take the request: {exc!r}"))
        return slot

    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelStatisticsResponse:
        # as Triton (TRITONSERVER_ServerModelStatistics): the ready versions; a model or version without one is
        # INVALID_ARGUMENT, with Triton's messages
        entries = [e for e in self.manager.entries(request.name or None) if e.state is VersionState.READY]
        if request.name and not entries:
            message = f"requested model '{request.name}' is not available"
            await abort(context, ServingError(ErrorCode.INVALID_ARGUMENT, message))
        if request.version:
            entries = [e for e in entries if str(e.version) == request.version]
            if not entries:
                message = f"requested model version is not available for model '{request.name}'"
                await abort(context, ServingError(ErrorCode.INVALID_ARGUMENT, message))
        others = self.group_stats.others() if self.group_stats is not None else {}
        response = pb.ModelStatisticsResponse()
        for entry in entries:
            theirs = others.get((entry.model, entry.version))
            s = summed([entry.stats, *theirs]) if theirs else entry.stats
            stats = response.model_stats.add(
                name=entry.model,
                version=str(entry.version),
                last_inference=s.last_inference_ms,
                inference_count=s.inference_count,
                execution_count=s.execution_count,
            )
            for field_name in DURATIONS:
                _set_duration(getattr(stats.inference_stats, field_name), getattr(s, field_name))
            for size, durations in sorted(s.batch_sizes.items()):
                batch = stats.batch_stats.add(batch_size=size)
                for field_name in PHASES:
                    _set_duration(getattr(batch, field_name), getattr(durations, field_name))
        return response

    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryIndexResponse:
        """Every known version, plus a version-less row for a model that failed as a whole (config.yaml) or is not
        loaded (explicit control)."""
        response = pb.RepositoryIndexResponse()
        for row in self.manager.index():
            if request.ready and row.state != VersionState.READY.value:
                continue
            response.models.add(name=row.model, version=row.version, state=row.state, reason=row.reason)
        return response

    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryModelLoadResponse:
        """(Re)load a model from the repository with its current config.yaml and versions (explicit control); a
        `config` parameter (Triton ModelConfig JSON) overrides config.yaml for this load (triton_config.py)."""
        try:
            self.manager.require_explicit("RepositoryModelLoad")
            _check_repository_request(request, allowed=("config",))
            await self.control.load(request.model_name, self._load_overrides(request))
        except ServingError as exc:
            await abort(context, exc)
        return pb.RepositoryModelLoadResponse()

    def _load_overrides(self, request: pb.RepositoryModelLoadRequest) -> dict[str, Any] | None:
        if "config" not in request.parameters:
            return None
        parameter = request.parameters["config"]
        if parameter.WhichOneof("parameter_choice") != "string_param":
            raise ServingError(ErrorCode.INVALID_ARGUMENT, "the load parameter 'config' must be a string (JSON)")
        try:
            current: pb.ModelConfig | None = self._model_config(request.model_name, "")
        except ServingError:  # not loaded (or not at all): nothing to compare a config's inputs with
            current = None
        return triton_config.overrides(request.model_name, parameter.string_param, PLATFORM, current, self.devices)

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryModelUnloadResponse:
        """Unload every version of a model once its in-flight requests finish (explicit control)."""
        try:
            self.manager.require_explicit("RepositoryModelUnload")
            _check_repository_request(request, allowed=("unload_dependents",))  # tritonclient sends it
            await self.control.unload(request.model_name)
        except ServingError as exc:
            await abort(context, exc)
        return pb.RepositoryModelUnloadResponse()

    async def LogSettings(
        self, request: pb.LogSettingsRequest, context: grpc.aio.ServicerContext
    ) -> pb.LogSettingsResponse:
        """Read the logging settings, or change the ones named (tritonclient's get/update_log_settings)."""
        changes: dict[str, bool | int | str] = {}
        for key, value in request.settings.items():
            choice = value.WhichOneof("parameter_choice")
            if choice is None:
                await abort(context, ServingError(ErrorCode.INVALID_ARGUMENT, f"log setting {key!r} has no value"))
            changes[key] = getattr(value, choice)
        try:
            current = self.logs.update(changes)  # checks them: a refused change reaches no other process
            if changes and self._group is not None:  # each applies it (this one again) in the group's one order
                await self._group.run("log", {"changes": changes})
        except ServingError as exc:
            await abort(context, exc)
        if changes:
            log.info("log settings changed: %s", ", ".join(f"{k}={v!r}" for k, v in sorted(changes.items())))
        response = pb.LogSettingsResponse()
        for key, value in current.items():
            setattr(response.settings[key], _SETTING_FIELDS[type(value)], value)
        return response

    async def TraceSetting(
        self, request: pb.TraceSettingRequest, context: grpc.aio.ServicerContext
    ) -> pb.TraceSettingResponse:
        """Read the trace settings (global, or a model's), or change the ones named (tritonclient's
        get/update_trace_settings)."""
        tracer = self.engine.tracer
        model = request.model_name or None
        try:
            if model is not None and not self.manager.knows(model):
                raise ServingError(ErrorCode.NOT_FOUND, f"model {model!r} not found")
            changes = {key: list(value.value) for key, value in request.settings.items()}
            current = tracer.update(model, changes) if changes else tracer.settings(model)
            # the fixed keys (accepted only as this process's own value) stay here: each has its own file
            shared = {k: v for k, v in changes.items() if k not in FIXED_TRACE_KEYS}
            if shared and self._group is not None:  # as LogSettings
                await self._group.run("trace", {"model": model, "changes": shared})
        except ServingError as exc:
            await abort(context, exc)
        if changes:
            shown = ", ".join(f"{k}={v}" for k, v in sorted(changes.items()))
            log.info("trace settings of %s changed: %s", model or "every model", shown)
        response = pb.TraceSettingResponse()
        for key, values in current.items():
            response.settings[key].value.extend(values)
        return response

    def _regions(self) -> SystemSharedMemory:
        if self.shared_memory is None:
            raise ServingError(
                ErrorCode.FAILED_PRECONDITION, "system shared memory is off on this server (--no-shared-memory)"
            )
        return self.shared_memory

    async def SystemSharedMemoryRegister(
        self, request: pb.SystemSharedMemoryRegisterRequest, context: grpc.aio.ServicerContext
    ) -> pb.SystemSharedMemoryRegisterResponse:
        region = {"name": request.name, "key": request.key, "offset": request.offset, "byte_size": request.byte_size}
        try:
            self._regions()
            if self._group is None:
                await self._register_region(region)
            else:
                await self._group.run("shm_register", region)
        except ServingError as exc:
            await abort(context, exc)
        return pb.SystemSharedMemoryRegisterResponse()

    async def _register_region(self, region: Mapping[str, Any]) -> None:
        self._regions().register(region["name"], region["key"], region["offset"], region["byte_size"])
        log.info("registered shared memory region %r (%s, %d bytes at %d)", region["name"], region["key"],
                 region["byte_size"], region["offset"])  # fmt: skip

    async def _unregister_region(self, region: Mapping[str, Any]) -> None:
        self._regions().unregister(region["name"])

    async def _apply_log_settings(self, change: Mapping[str, Any]) -> None:
        self.logs.update(change["changes"])

    async def _apply_trace_settings(self, change: Mapping[str, Any]) -> None:
        self.engine.tracer.update(change["model"], change["changes"])

    async def SystemSharedMemoryUnregister(
        self, request: pb.SystemSharedMemoryUnregisterRequest, context: grpc.aio.ServicerContext
    ) -> pb.SystemSharedMemoryUnregisterResponse:
        """One region, or all of them when no name is given (as Triton)."""
        try:
            self._regions()
            if self._group is None:
                await self._unregister_region({"name": request.name})
            else:
                await self._group.run("shm_unregister", {"name": request.name})
        except ServingError as exc:
            await abort(context, exc)
        return pb.SystemSharedMemoryUnregisterResponse()

    async def SystemSharedMemoryStatus(
        self, request: pb.SystemSharedMemoryStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.SystemSharedMemoryStatusResponse:
        try:
            regions = self._regions().status(request.name)
        except ServingError as exc:
            await abort(context, exc)
        response = pb.SystemSharedMemoryStatusResponse()
        for region in regions:
            status = response.regions[region.name]
            status.name, status.key, status.offset, status.byte_size = (
                region.name, region.key, region.offset, region.byte_size
            )  # fmt: skip
        return response


def _check_repository_request(
    request: pb.RepositoryModelLoadRequest | pb.RepositoryModelUnloadRequest, allowed: tuple[str, ...]
) -> None:
    if not request.model_name:
        raise ServingError(ErrorCode.INVALID_ARGUMENT, "model_name is required")
    if request.repository_name:
        raise ServingError(ErrorCode.INVALID_ARGUMENT, "kerve serves one model repository; leave repository_name empty")
    unsupported = sorted(set(request.parameters) - set(allowed))
    if unsupported:
        raise ServingError(
            ErrorCode.INVALID_ARGUMENT,
            f"parameters {unsupported} are not supported (only {list(allowed)}): model files come from the "
            f"repository, model settings from <repository>/<model>/config.yaml",
        )


def _set_duration(target: pb.StatisticDuration, duration: Duration) -> None:
    target.count, target.ns = duration.count, duration.ns


def _stream_response(slot: Slot) -> pb.ModelStreamInferResponse:
    error = slot.error
    request: pb.ModelInferRequest = slot.request
    response: pb.ModelStreamInferResponse | None = None
    if slot.response is not None:
        try:
            response = pb.ModelStreamInferResponse(infer_response=v2_codec.encode_response(slot.response, slot.outputs))
        except ServingError as exc:  # outputs the V2 wire cannot carry
            error = exc
    if response is None:
        assert error is not None, "a slot leaves the pipeline answered"
        response = pb.ModelStreamInferResponse(
            error_message=f"{error.code.value}: {v2_codec.error_message(error)}",
            infer_response=pb.ModelInferResponse(
                model_name=request.model_name, model_version=request.model_version, id=request.id
            ),
        )
    if v2_codec.wants_final_flag(request):  # one response per request: this one is the last
        response.infer_response.parameters[v2_codec.FINAL_RESPONSE_FLAG].bool_param = True
    return response


def _label_files(entry: ModelVersion, outputs: Mapping[str, Any]) -> dict[str, str]:
    """The label file of each output that has one (ModelConfig's label_filename)."""
    labels = entry.class_labels
    if labels is None:
        return {}
    files = {name: labels.file_of(name, outputs) for name in outputs}
    return {name: file for name, file in files.items() if file}


def _ready(manager: ModelManager, model: str) -> list[str]:
    return [str(v) for v in manager.ready_versions(model)]
