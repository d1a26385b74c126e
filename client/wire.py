"""Request building and response parsing shared by Client and AsyncClient (no I/O here)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from google.protobuf import json_format

from kerve import codecs
from kerve.protos import grpc_service_pb2 as pb

from .errors import InvalidArgumentError, ServerError
from .shared_memory import SHM_BYTE_SIZE, SHM_OFFSET, SHM_REGION, SharedOutput, SharedTensor

CLASSIFICATION = "classification"  # the requested-output parameter of the V2 classification extension
PRIORITY = "priority"  # Triton's request priority level: 1 the highest, 0 the model's default level
TIMEOUT = "timeout"  # Triton's per-request timeout, int64 microseconds
UINT32_MAX = 2**32 - 1
INT64_MAX = 2**63 - 1
LogSetting = bool | int | str  # a LogSettings value: Triton's SettingValue is one of bool, uint32 and string
TraceSetting = str | int | Sequence[str | int]  # a TraceSetting value: Triton's are lists of strings


@dataclass(frozen=True)
class TensorInfo:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1 marks a variable dimension


@dataclass(frozen=True)
class ModelMetadata:
    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]


@dataclass(frozen=True)
class InferResult:
    model_name: str
    model_version: str
    id: str
    outputs: dict[str, np.ndarray]


@dataclass(frozen=True)
class Classification:
    """The classification extension's answer for one output: its top k classes per row, best first (ties: the
    lower index first). `indices` (int64) and `scores` (float64) have the shape of the server's label tensor:
    [batch, k] for a batched output, [k] for one without a batch dimension; k is less than asked when the output
    has fewer classes."""

    model_name: str
    model_version: str
    output: str
    indices: np.ndarray
    scores: np.ndarray
    labels: np.ndarray | None = None  # the classes' names (str, "" where a class has none); None: the model has none


@dataclass(frozen=True)
class TensorConfig:
    name: str
    datatype: str  # the V2 datatype name, as metadata gives it ("FP32", "BYTES", ...)
    dims: tuple[int, ...]  # without the batch dimension when max_batch_size > 0; -1 marks a variable one
    label_filename: str = ""  # an output's: the file naming its classes on the server ("" when none does)


@dataclass(frozen=True)
class InstanceGroup:
    """Triton's model instances, which kerve counts as batches run at once: `kind` is "CPU" (`count` in all),
    "GPU" (`count` on each of the devices in `gpus`), "MODEL" (a replica spanning devices, or a TPU core) or
    "AUTO"."""

    name: str
    kind: str
    count: int
    gpus: tuple[int, ...]


@dataclass(frozen=True)
class QueuePolicy:
    """How long, and how many, requests of a priority level may wait for a batch (Triton's ModelQueuePolicy):
    `timeout_s` 0 is no limit; a request that reaches it is refused (`timeout_action` "reject",
    DeadlineExceededError) or moved behind fresher ones ("delay"); with `allow_timeout_override` a call's own
    shorter timeout counts instead; `max_queue_size` 0 is no limit, else one more is ResourceExhaustedError."""

    timeout_s: float
    timeout_action: str
    allow_timeout_override: bool
    max_queue_size: int


@dataclass(frozen=True)
class VersionPolicy:
    """Which of a model's versions on disk the server serves (Triton's ModelVersionPolicy; kerve's config.yaml
    `version_policy`): `kind` "latest" (the newest `num_versions`), "all", or "specific" (those in `versions`).
    Build one with `VersionPolicy.latest(2)`, `VersionPolicy.all()` or `VersionPolicy.specific(1, 3)`. It is its
    own value, not a str or a dict, so a config read with `Client.config` carries it back in `load_model` exactly
    as the server reported it; leaving it out there would load with the default policy (latest 1) instead."""

    kind: str  # "latest" | "all" | "specific"
    num_versions: int = 0  # "latest": how many of the newest versions
    versions: tuple[int, ...] = ()  # "specific": the versions served

    def __post_init__(self) -> None:
        # Caught here, not left to the server: an unknown kind has no Triton message to send at all.
        if self.kind not in ("latest", "all", "specific"):
            raise InvalidArgumentError(f'version policy kind must be "latest", "all" or "specific", got {self.kind!r}')

    @classmethod
    def latest(cls, num_versions: int = 1) -> VersionPolicy:
        """Serve the newest `num_versions` versions (Triton's and kerve's default is 1)."""
        return cls("latest", num_versions=num_versions)

    @classmethod
    def all(cls) -> VersionPolicy:
        """Serve every version on disk."""
        return cls("all")

    @classmethod
    def specific(cls, *versions: int) -> VersionPolicy:
        """Serve exactly these versions (those on disk)."""
        return cls("specific", versions=tuple(versions))


@dataclass(frozen=True)
class ModelConfig:
    """What the server runs a model version with (the V2 ModelConfig RPC, Triton's shape of it).

    `max_batch_size` 0 means no batcher: inputs take their full shapes. With dynamic batching, `max_queue_delay_s`
    is how long a request may wait for others to share its batch and `preferred_batch_sizes` the sizes batches are
    padded up to (empty: any size); without it both are None / empty. `priority_levels` (0: none) is how many
    `priority=` levels the batcher keeps, `default_priority_level` a call without one's; `queue_policy` applies to
    every level that `priority_queue_policies` ((level, policy) pairs) does not name, None when it is the default
    (no limits). `response_cache` is True when the server answers repeated requests from its response cache, None
    when the config does not say (off); set it to False (dataclasses.replace) to turn the cache off in a
    `load_model`. `version_policy` is which versions the server serves (a VersionPolicy), None when the config
    does not say (the server's default, latest 1); a `load_model` with this config keeps it, so the load does not
    unload versions a policy of `all` or `specific` serves."""

    name: str
    platform: str
    backend: str
    max_batch_size: int
    inputs: tuple[TensorConfig, ...]
    outputs: tuple[TensorConfig, ...]
    dynamic_batching: bool
    preferred_batch_sizes: tuple[int, ...]
    max_queue_delay_s: float | None
    instance_groups: tuple[InstanceGroup, ...]
    priority_levels: int = 0
    default_priority_level: int = 0
    queue_policy: QueuePolicy | None = None
    priority_queue_policies: tuple[tuple[int, QueuePolicy], ...] = ()
    response_cache: bool | None = None
    version_policy: VersionPolicy | None = None  # last: added later, positional use keeps working


@dataclass(frozen=True)
class ModelIndexEntry:
    name: str
    version: str
    state: str
    reason: str


@dataclass(frozen=True)
class Duration:
    """A statistic's count and its summed time: divide `seconds` by `count` for the mean."""

    count: int
    seconds: float


@dataclass(frozen=True)
class BatchStatistics:
    """The model calls of one batch size, by phase (the V2 statistics extension's InferBatchStatistics): each
    Duration counts calls, so `compute_infer.seconds / compute_infer.count` is the mean model call at this size."""

    batch_size: int
    compute_input: Duration
    compute_infer: Duration
    compute_output: Duration


@dataclass(frozen=True)
class ModelStatistics:
    """One model version's cumulative counters since it loaded (the V2 statistics extension, Triton's meaning).

    `success`, `fail`, `queue` and the compute phases count requests: a successful request adds one to each of
    `success`, `queue` (its wait until its batch's execution began), `compute_input` (assembling the batch),
    `compute_infer` (the model call) and `compute_output` (cutting the outputs back per request), so each sum over
    its count is a per-request mean, as perf_analyzer reads them. `execution_count`, `batches` (a BatchStatistics
    per batch size, its three phases, by batch size) and `batch_stats` (the same as (batch_size, compute_infer)
    pairs) count model calls, which dynamic batching makes fewer than requests; `inference_count` counts samples
    (rows). A request answered from the response cache counts in `success` and `cache_hit` only (not in
    `inference_count`), a lookup that missed in `cache_miss`. `fail` counts failed requests, cancelled ones too.
    `last_inference_ms` is the last success in milliseconds since the epoch, 0 before the first."""

    name: str
    version: str
    last_inference_ms: int
    inference_count: int
    execution_count: int
    success: Duration
    fail: Duration
    queue: Duration
    compute_infer: Duration
    batch_stats: tuple[tuple[int, Duration], ...]
    compute_input: Duration = Duration(0, 0.0)  # after batch_stats: added later, positional use keeps working
    compute_output: Duration = Duration(0, 0.0)
    cache_hit: Duration = Duration(0, 0.0)  # requests answered from the response cache, and the lookups' time
    cache_miss: Duration = Duration(0, 0.0)  # lookups that found nothing, plus storing the answers
    batches: tuple[BatchStatistics, ...] = ()  # every phase per batch size; batch_stats keeps compute_infer's


@dataclass(frozen=True)
class ServerMetadata:
    """What the server calls itself and the V2 extensions it speaks ("statistics", "model_repository", ...), to
    check for a feature before relying on it."""

    name: str
    version: str
    extensions: tuple[str, ...]


def build_infer_request(
    model: str,
    inputs: Mapping[str, Any],
    version: int | str | None = None,
    outputs: Sequence[str | SharedOutput] | None = None,
    request_id: str = "",
    class_counts: Mapping[str, int] | None = None,
    *,
    priority: int = 0,
    timeout: float | None = None,
) -> pb.ModelInferRequest:
    """A ModelInferRequest carrying every input as raw contents (the zero-copy path on the server), or as its place
    in a registered shared memory region when the value is a SharedTensor (`Client.shared_memory`). An output
    given as a SharedOutput is requested with its place, for the server to write it there.

    `class_counts` ({output: k}) asks for those outputs' top k classes (the classification extension) instead of
    their tensors; they are requested besides `outputs` (so with `outputs` None, only they come back).
    `priority` and `timeout` (seconds) become Triton's schedule parameters of the request (`_schedule`); only
    streams need `timeout`, as a unary call's gRPC deadline already reaches the server."""
    if not inputs:
        raise InvalidArgumentError("inputs is empty: pass {input_name: array}")
    level = priority_level(priority)  # before any input is encoded: a bad level costs nothing
    request = pb.ModelInferRequest(
        model_name=model, model_version="" if version is None else str(version), id=request_id
    )
    for name, value in inputs.items():
        if isinstance(value, SharedTensor):  # in a registered region: the request names its place, no raw entry
            tensor = request.inputs.add(name=name, datatype=value.datatype, shape=list(value.shape))
            _set_place(tensor.parameters, value.region, value.offset, value.byte_size)
            continue
        try:
            array, datatype = codecs.wire_array(value)
            raw = codecs.encode_raw(array)
        except codecs.CodecError as exc:
            raise InvalidArgumentError(f"input {name!r}: {exc}") from None
        request.inputs.add(name=name, datatype=datatype, shape=list(array.shape))
        request.raw_input_contents.append(raw)
    _request_outputs(request, outputs or (), dict(class_counts or {}))
    _schedule(request.parameters, level, timeout)
    return request


def _schedule(params: Any, priority: int, timeout: float | None) -> None:
    """Triton's request-level schedule parameters, each left out at its default: a request that sets neither is
    byte for byte the one a server without priority levels (or an older SDK) has always seen."""
    if priority:
        params[PRIORITY].int64_param = priority
    # The caller's own deadline for the server: a stream's gRPC deadline covers the whole stream, so without it a
    # message still queued when its caller gives up would run for nobody. Never 0, which means "none".
    if timeout is not None:
        params[TIMEOUT].int64_param = max(1, round(timeout * 1e6))


def priority_level(priority: Any) -> int:
    """Checked here rather than left to the server: a bool would pass as level 1 (the highest), a float could not
    be encoded, and a negative level would cost a round trip (or a stream message) only to be refused."""
    if isinstance(priority, bool) or not isinstance(priority, (int, np.integer)) or not 0 <= priority <= INT64_MAX:
        raise InvalidArgumentError(
            f"priority must be an integer >= 0 (1 is the highest level, 0 the model's default), got {priority!r}"
        )
    return int(priority)


def _request_outputs(
    request: pb.ModelInferRequest, outputs: Sequence[str | SharedOutput], counts: Mapping[str, int]
) -> None:
    names = [_output_name(o) for o in outputs]
    places = shared_outputs(outputs)
    for name in [*names, *(n for n in counts if n not in names)]:
        requested = request.outputs.add(name=name)
        if name in counts:
            requested.parameters[CLASSIFICATION].int64_param = class_count(name, counts[name])
        if name in places:
            place = places[name]
            _set_place(requested.parameters, place.region, place.offset, place.byte_size)


def shared_outputs(outputs: Sequence[str | SharedOutput] | None) -> dict[str, SharedOutput]:
    """The outputs placed in shared memory, by name: what the response is read back with. A name placed and also
    asked for otherwise would leave the server two answers to choose from, so it is refused."""
    places = {o.name: o for o in outputs or () if isinstance(o, SharedOutput)}
    names = [_output_name(o) for o in outputs or ()]
    for name in places:
        if names.count(name) > 1:
            raise InvalidArgumentError(f"output {name!r} is requested more than once; place it in one region only")
    return places


def _output_name(output: str | SharedOutput) -> str:
    return output.name if isinstance(output, SharedOutput) else output


def _set_place(params: Any, region: str, offset: int, byte_size: int) -> None:
    """A tensor's place in a registered region, as Triton's parameters name it (an offset of 0 is left out)."""
    params[SHM_REGION].string_param = region
    params[SHM_BYTE_SIZE].int64_param = byte_size
    if offset:
        params[SHM_OFFSET].int64_param = offset


def class_count(output: str, count: Any) -> int:
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        raise InvalidArgumentError(f"output {output!r}: the class count must be a positive integer, got {count!r}")
    return int(count)


def parse_infer_response(
    response: pb.ModelInferResponse, shared: Mapping[str, SharedOutput] | None = None
) -> InferResult:
    """Outputs as arrays; raw contents are decoded without a copy, typed contents are converted, and an output
    placed in shared memory (`shared`, by name) is copied out of its region, with the datatype and shape the
    response gives it. Its raw entry is empty then; a server that sent the bytes anyway (one that ignores the
    placement) is believed over a region it may never have written."""
    raw = response.raw_output_contents
    if raw and len(raw) != len(response.outputs):
        raise ServerError(f"response has {len(response.outputs)} outputs but {len(raw)} raw contents")
    arrays: dict[str, np.ndarray] = {}
    for i, out in enumerate(response.outputs):
        try:
            if shared and out.name in shared and not (raw and raw[i]):
                arrays[out.name] = shared[out.name].read(out.datatype, out.shape)
            elif raw:
                arrays[out.name] = codecs.decode_raw(raw[i], out.datatype, out.shape)
            else:
                arrays[out.name] = codecs.decode_contents(out.contents, out.datatype, out.shape)
        except codecs.CodecError as exc:
            raise ServerError(f"output {out.name!r}: {exc}") from None
    return InferResult(response.model_name, response.model_version, response.id, arrays)


def log_settings_request(settings: Mapping[str, LogSetting]) -> pb.LogSettingsRequest:
    """A LogSettings request changing `settings`; each value's Python type picks its field (bool before int:
    True is an int to Python, not to the server). Empty: a request that only reads them."""
    request = pb.LogSettingsRequest()
    for key, value in settings.items():
        if not isinstance(key, str) or not key:
            raise InvalidArgumentError(f"a log setting's name must be a non-empty str, got {key!r}")
        field, plain = _setting_field(key, value)
        setattr(request.settings[key], field, plain)
    return request


def _setting_field(key: str, value: Any) -> tuple[str, LogSetting]:
    if isinstance(value, (bool, np.bool_)):
        return "bool_param", bool(value)
    if isinstance(value, (int, np.integer)):
        if not 0 <= value <= UINT32_MAX:  # the wire's uint32: a negative level would otherwise wrap or fail late
            raise InvalidArgumentError(f"log setting {key!r} takes an integer from 0 to {UINT32_MAX}, got {value}")
        return "uint32_param", int(value)
    if isinstance(value, str):
        return "string_param", value
    raise InvalidArgumentError(f"log setting {key!r} takes a bool, an int or a str, got {value!r}")


def parse_log_settings(response: pb.LogSettingsResponse) -> dict[str, LogSetting]:
    settings: dict[str, LogSetting] = {}
    for key, value in sorted(response.settings.items()):
        choice = value.WhichOneof("parameter_choice")
        if choice is None:
            raise ServerError(f"log setting {key!r} came back without a value")
        settings[key] = getattr(value, choice)
    return settings


def trace_settings_request(
    settings: Mapping[str, TraceSetting | None] | None = None, model: str | None = None
) -> pb.TraceSettingRequest:
    """A TraceSetting request for `model` (None: every model): each value is a string, an int or a list of them
    (Triton's settings are lists of strings); None clears the setting. No settings: a request that only reads."""
    request = pb.TraceSettingRequest(model_name=model or "")
    for key, value in (settings or {}).items():
        if not isinstance(key, str) or not key:
            raise InvalidArgumentError(f"a trace setting's name must be a non-empty str, got {key!r}")
        values = value if isinstance(value, (list, tuple)) else [] if value is None else [value]
        for item in values:
            if isinstance(item, bool) or not isinstance(item, (str, int)):
                raise InvalidArgumentError(f"trace setting {key!r} takes strings or ints, got {item!r}")
        request.settings[key].value.extend(str(item) for item in values)
    return request


def parse_trace_settings(response: pb.TraceSettingResponse) -> dict[str, list[str]]:
    return {key: list(value.value) for key, value in sorted(response.settings.items())}


def load_model_request(
    model: str, config: ModelConfig | Mapping[str, Any] | str | None = None
) -> pb.RepositoryModelLoadRequest:
    """A RepositoryModelLoad request; `config` (Triton's ModelConfig, as a dict or as its JSON text) travels as
    the `config` parameter, which overrides the model's config.yaml for this load. A dict json cannot encode (a
    numpy scalar; NaN, which json would write as `NaN`, text no JSON parser accepts) is InvalidArgumentError
    before sending rather than a TypeError or a server's parse error. A str goes as it is, for the server to
    judge, so a config read from a file needs no round trip through a dict. A ModelConfig (`Client.config`'s,
    edited) goes as the Triton ModelConfig it was read from (`config_message`)."""
    request = pb.RepositoryModelLoadRequest(model_name=model)
    if config is None:
        return request
    if isinstance(config, ModelConfig):
        try:  # an edit the message cannot hold: a datatype or kind Triton has no name for, NaN, out of range
            text = json_format.MessageToJson(config_message(config))
        except (TypeError, ValueError, OverflowError) as exc:
            raise InvalidArgumentError(f"load config for model {model!r} cannot be sent: {exc}") from None
    elif isinstance(config, Mapping):
        try:
            text = json.dumps(dict(config), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise InvalidArgumentError(f"load config for model {model!r} is not JSON: {exc}") from None
    elif isinstance(config, str):
        text = config
    else:
        raise InvalidArgumentError(
            f"load config for model {model!r} must be a ModelConfig, a dict (Triton's ModelConfig) or a str of its "
            f"JSON, got {type(config).__name__}"
        )
    request.parameters["config"].string_param = text
    return request


def _duration(value: pb.StatisticDuration) -> Duration:
    return Duration(value.count, value.ns / 1e9)


def parse_statistics(response: pb.ModelStatisticsResponse) -> tuple[ModelStatistics, ...]:
    stats = []
    for model in response.model_stats:
        infer = model.inference_stats
        batches = sorted(model.batch_stats, key=lambda b: b.batch_size)  # kerve sends them so; not every server
        stats.append(
            ModelStatistics(
                name=model.name,
                version=model.version,
                last_inference_ms=model.last_inference,
                inference_count=model.inference_count,
                execution_count=model.execution_count,
                success=_duration(infer.success),
                fail=_duration(infer.fail),
                queue=_duration(infer.queue),
                compute_infer=_duration(infer.compute_infer),
                batch_stats=tuple((b.batch_size, _duration(b.compute_infer)) for b in batches),
                compute_input=_duration(infer.compute_input),
                compute_output=_duration(infer.compute_output),
                cache_hit=_duration(infer.cache_hit),
                cache_miss=_duration(infer.cache_miss),
                batches=tuple(
                    BatchStatistics(
                        b.batch_size,
                        _duration(b.compute_input),
                        _duration(b.compute_infer),
                        _duration(b.compute_output),
                    )
                    for b in batches
                ),
            )
        )
    return tuple(stats)


def parse_server_metadata(response: pb.ServerMetadataResponse) -> ServerMetadata:
    return ServerMetadata(response.name, response.version, tuple(response.extensions))


def _tensors(items: Any) -> tuple[TensorInfo, ...]:
    return tuple(TensorInfo(t.name, t.datatype, tuple(t.shape)) for t in items)


def parse_metadata(response: pb.ModelMetadataResponse) -> ModelMetadata:
    return ModelMetadata(
        name=response.name,
        versions=tuple(response.versions),
        platform=response.platform,
        inputs=_tensors(response.inputs),
        outputs=_tensors(response.outputs),
    )


def parse_index(response: pb.RepositoryIndexResponse) -> list[ModelIndexEntry]:
    return [ModelIndexEntry(m.name, m.version, m.state, m.reason) for m in response.models]


def only_output(metadata: ModelMetadata) -> str:
    """The name of a model's only output; several (or none) need the caller to choose."""
    names = [t.name for t in metadata.outputs]
    if len(names) != 1:
        raise InvalidArgumentError(f"model {metadata.name!r} has outputs {names}: pass output= to choose one")
    return names[0]


def parse_classification(result: InferResult, output: str) -> Classification:
    """Parse the "<score>:<index>[:<label>]" strings the server answers a classification request with."""
    labels = result.outputs.get(output)
    if labels is None or labels.dtype != object:
        got = "nothing" if labels is None else f"{labels.dtype} {list(labels.shape)}"
        raise ServerError(f"output {output!r}: expected classification labels (BYTES), got {got}")
    scores = np.empty(labels.shape, dtype=np.float64)
    indices = np.empty(labels.shape, dtype=np.int64)
    names = np.full(labels.shape, "", dtype=object)
    for at, label in np.ndenumerate(labels):
        try:
            score, index, *name = bytes(label).split(b":", 2)
            scores[at], indices[at] = float(score), int(index)
            if name:
                names[at] = name[0].decode("utf-8", errors="replace")
        except ValueError:
            raise ServerError(f"output {output!r}: malformed classification label {label!r}") from None
    named = names if any(names.flat) else None
    return Classification(result.model_name, result.model_version, output, indices, scores, named)


def _config_datatype(value: int) -> str:
    name = pb.DataType.Name(value) if value in pb.DataType.values() else "TYPE_INVALID"
    name = name.removeprefix("TYPE_")
    return codecs.BYTES if name == "STRING" else name


def _tensor_configs(items: Any, labelled: bool = False) -> tuple[TensorConfig, ...]:
    return tuple(
        TensorConfig(t.name, _config_datatype(t.data_type), tuple(t.dims), t.label_filename if labelled else "")
        for t in items
    )


def parse_config(response: pb.ModelConfigResponse) -> ModelConfig:
    config = response.config
    batching = config.HasField("dynamic_batching")
    dynamic = config.dynamic_batching
    kinds = pb.ModelInstanceGroup.Kind
    return ModelConfig(
        name=config.name,
        platform=config.platform,
        backend=config.backend,
        max_batch_size=config.max_batch_size,
        inputs=_tensor_configs(config.input),
        outputs=_tensor_configs(config.output, labelled=True),
        dynamic_batching=batching,
        preferred_batch_sizes=tuple(config.dynamic_batching.preferred_batch_size),
        max_queue_delay_s=config.dynamic_batching.max_queue_delay_microseconds / 1e6 if batching else None,
        instance_groups=tuple(
            InstanceGroup(
                name=g.name,
                kind=kinds.Name(g.kind).removeprefix("KIND_") if g.kind in kinds.values() else "AUTO",
                count=g.count,
                gpus=tuple(g.gpus),
            )
            for g in config.instance_group
        ),
        priority_levels=dynamic.priority_levels,
        default_priority_level=dynamic.default_priority_level,
        queue_policy=_queue_policy(dynamic.default_queue_policy) if dynamic.HasField("default_queue_policy") else None,
        priority_queue_policies=tuple(
            (level, _queue_policy(policy)) for level, policy in sorted(dynamic.priority_queue_policy.items())
        ),
        response_cache=config.response_cache.enable if config.HasField("response_cache") else None,
        version_policy=_version_policy(config.version_policy) if config.HasField("version_policy") else None,
    )


def _version_policy(policy: pb.ModelVersionPolicy) -> VersionPolicy:
    """Triton's oneof as a VersionPolicy; a policy with no choice set reads as Triton does: latest 1."""
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return VersionPolicy.all()
    if choice == "specific":
        return VersionPolicy.specific(*policy.specific.versions)
    return VersionPolicy.latest(policy.latest.num_versions if choice == "latest" else 1)


def _queue_policy(policy: pb.ModelQueuePolicy) -> QueuePolicy:
    return QueuePolicy(
        timeout_s=policy.default_timeout_microseconds / 1e6,
        timeout_action="delay" if policy.timeout_action == pb.ModelQueuePolicy.DELAY else "reject",
        allow_timeout_override=policy.allow_timeout_override,
        max_queue_size=policy.max_queue_size,
    )


def config_message(config: ModelConfig) -> pb.ModelConfig:
    """`parse_config` backwards: what `Client.config` returned, edited with dataclasses.replace, as Triton's
    ModelConfig again, so `load_model(model, config=...)` can send it (the server accepts back what it reported)."""
    kinds = pb.ModelInstanceGroup.Kind
    message = pb.ModelConfig(
        name=config.name,
        platform=config.platform,
        backend=config.backend,
        max_batch_size=config.max_batch_size,
        input=[pb.ModelInput(name=t.name, data_type=_data_type(t.datatype), dims=t.dims) for t in config.inputs],
        # label_filename too: the server refuses outputs that differ from what it reports, so dropping it would
        # make any model with class names fail to load with its own config.
        output=[
            pb.ModelOutput(name=t.name, data_type=_data_type(t.datatype), dims=t.dims, label_filename=t.label_filename)
            for t in config.outputs
        ],
        instance_group=[
            pb.ModelInstanceGroup(name=g.name, kind=kinds.Value(f"KIND_{g.kind}"), count=g.count, gpus=g.gpus)
            for g in config.instance_groups
        ],
    )
    if config.dynamic_batching:
        dynamic = message.dynamic_batching
        dynamic.SetInParent()  # present even with every field at its default: batching on
        dynamic.preferred_batch_size.extend(config.preferred_batch_sizes)
        dynamic.max_queue_delay_microseconds = round((config.max_queue_delay_s or 0.0) * 1e6)
        dynamic.priority_levels = config.priority_levels
        dynamic.default_priority_level = config.default_priority_level
        if config.queue_policy is not None:
            dynamic.default_queue_policy.CopyFrom(_queue_policy_message(config.queue_policy))
        for level, policy in config.priority_queue_policies:
            dynamic.priority_queue_policy[level].CopyFrom(_queue_policy_message(policy))
    if config.response_cache is not None:
        message.response_cache.SetInParent()  # present even when False: that turns the cache off
        message.response_cache.enable = config.response_cache
    if config.version_policy is not None:  # None: left out, so the server applies its own (config.yaml's) policy
        message.version_policy.CopyFrom(_version_policy_message(config.version_policy))
    return message


def _version_policy_message(policy: VersionPolicy) -> pb.ModelVersionPolicy:
    if policy.kind == "all":
        return pb.ModelVersionPolicy(all=pb.ModelVersionPolicy.All())
    if policy.kind == "specific":
        return pb.ModelVersionPolicy(specific=pb.ModelVersionPolicy.Specific(versions=list(policy.versions)))
    return pb.ModelVersionPolicy(latest=pb.ModelVersionPolicy.Latest(num_versions=policy.num_versions))


def _data_type(datatype: str) -> int:
    return pb.DataType.Value("TYPE_STRING" if datatype == codecs.BYTES else f"TYPE_{datatype}")


def _queue_policy_message(policy: QueuePolicy) -> pb.ModelQueuePolicy:
    return pb.ModelQueuePolicy(
        timeout_action=pb.ModelQueuePolicy.DELAY if policy.timeout_action == "delay" else pb.ModelQueuePolicy.REJECT,
        default_timeout_microseconds=round(policy.timeout_s * 1e6),
        allow_timeout_override=policy.allow_timeout_override,
        max_queue_size=policy.max_queue_size,
    )
