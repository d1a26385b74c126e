"""Open Inference Protocol (V2) messages <-> InferRequest / InferResponse.

Raw contents are decoded with np.frombuffer (no copy); typed contents are converted. Every malformed tensor
raises INVALID_ARGUMENT naming the input.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence

import numpy as np

from kerve import codecs
from kerve.protos import grpc_service_pb2 as pb

from .batcher import AUTO, BatchingConfig
from .errors import ErrorCode, ServingError, invalid
from .manager import parse_version
from .model_config import VersionPolicy
from .queue_policy import QueuePolicy
from .shared_memory import Place, SystemSharedMemory
from .slot_choice import learns_slots
from .types import InferRequest, InferResponse, TensorSpec, device_kind
from .validation import DtypeMismatch


def decode_request(
    message: pb.ModelInferRequest, time_remaining: float | None = None, shm: SystemSharedMemory | None = None
) -> InferRequest:
    """``shm``: the server's registered shared memory regions, for inputs that name one instead of carrying data."""
    if not message.model_name:
        raise invalid("model_name is required")
    version = parse_version(message.model_name, message.model_version)
    raw = message.raw_input_contents
    if raw and len(raw) != len(message.inputs):
        _check_raw_count(message)
    inputs: dict[str, np.ndarray] = {}
    next_raw = 0  # inputs in shared memory have no raw entry (Triton's rule)
    for i, tensor in enumerate(message.inputs):
        name = tensor.name
        if not name:
            raise invalid(f"input #{i} has no name")
        if name in inputs:
            raise invalid(f"input {name!r} appears more than once")
        try:
            if tensor.parameters and SHM_REGION in tensor.parameters:
                if tensor.HasField("contents") and codecs.has_contents(tensor.contents):
                    raise codecs.CodecError("set both contents and a shared memory region; use one")
                data = _shared_place(f"input {name!r}", tensor.parameters, shm).view()
                inputs[name] = codecs.decode_raw(data, tensor.datatype, tensor.shape).copy()  # see shared_memory
            elif raw:
                # HasField first: a client that never touched `contents` (the raw path) skips the field scan
                if tensor.HasField("contents") and codecs.has_contents(tensor.contents):
                    raise codecs.CodecError("set both contents and raw_input_contents; use one")
                inputs[name] = codecs.decode_raw(raw[next_raw], tensor.datatype, tensor.shape)
                next_raw += 1
            else:
                inputs[name] = codecs.decode_contents(tensor.contents, tensor.datatype, tensor.shape)
        except codecs.CodecError as exc:
            raise invalid(f"input {name!r}: {exc}") from None
    if next_raw != len(raw):
        _check_raw_count(message)
    priority = 0
    timeout_s = None
    if message.parameters:  # Triton's schedule policy parameters
        _check_parameters(message.parameters)
        if TIMEOUT in message.parameters:
            timeout_s = _timeout_s(message.parameters[TIMEOUT])
        if PRIORITY in message.parameters:
            priority = _int_param("request", message.parameters, PRIORITY)
            if priority < 0:
                raise invalid(f"the priority parameter must be >= 0 (1 is the highest level), got {priority}")
    deadline = None if time_remaining is None else time.monotonic() + time_remaining
    return InferRequest(
        model=message.model_name,
        version=version,
        inputs=inputs,
        outputs=[o.name for o in message.outputs] or None,
        id=message.id,
        deadline=deadline,
        protocol="v2",
        priority=priority,
        timeout_s=timeout_s,
    )


@dataclasses.dataclass(frozen=True, slots=True)
class OutputRequests:
    """How the client asked to get outputs back, where it asked for more than the raw tensor."""

    classify: Mapping[str, int]  # output name -> class count: top classes instead of the tensor (below)
    shared_memory: Mapping[str, Place]  # output name -> where in a registered region its bytes go


def output_requests(message: pb.ModelInferRequest, shm: SystemSharedMemory | None = None) -> OutputRequests | None:
    """Parsed once per request, before the model runs, so a malformed one fails early; None for plain outputs."""
    if not message.outputs:
        return None
    classify = classification_counts(message)
    targets = {
        output.name: _shared_place(f"output {output.name!r}", output.parameters, shm)
        for output in message.outputs
        if output.parameters and SHM_REGION in output.parameters
    }
    for place in targets.values():
        place.view()  # a region that is not there, or too small for the place, fails before the model runs
    return OutputRequests(classify, targets) if classify or targets else None


BACKEND = "tensorflow"  # ModelConfig's backend: what a Triton load config may repeat (triton_config.py)
TIMEOUT = "timeout"
PRIORITY = "priority"  # 1 is the highest level; 0 the model's default (batcher.BatchingConfig.priority_levels)


def _timeout_s(param: pb.InferParameter) -> float | None:
    """Triton's per-request ``timeout`` (microseconds; 0: none): the request's queue timeout where the model's queue
    policy allows overrides, a deadline like gRPC's own otherwise (batcher.Batcher.enqueue). A message of a stream
    can carry one, where the stream's deadline is the whole stream's."""
    if param.WhichOneof("parameter_choice") != "int64_param" or param.int64_param < 0:
        raise invalid("the timeout parameter must be a non-negative int64_param (microseconds)")
    return param.int64_param / 1e6 if param.int64_param else None


def _check_raw_count(message: pb.ModelInferRequest) -> None:
    raw, inputs = message.raw_input_contents, message.inputs
    carried = sum(SHM_REGION not in tensor.parameters for tensor in inputs)
    if raw and len(raw) != carried:
        where = " outside shared memory" if carried != len(inputs) else ""
        raise invalid(
            f"raw_input_contents has {len(raw)} entries but the request has {carried} inputs{where}; "
            "send one raw entry per input, in order"
        )


def encode_response(response: InferResponse, requests: OutputRequests | None = None) -> pb.ModelInferResponse:
    message = pb.ModelInferResponse(model_name=response.model, model_version=str(response.version), id=response.id)
    for name, array in response.outputs.items():
        if requests is not None and name in requests.classify:
            array = top_classes(name, array, requests.classify[name], _labels(response, name), response.batched)
        datatype = _datatype(response.model, "output", name, array.dtype)
        message.outputs.add(name=name, datatype=datatype, shape=list(array.shape))
        if requests is not None and name in requests.shared_memory:
            _write_shared(name, array, requests.shared_memory[name])
            message.raw_output_contents.append(b"")  # one entry per output, as Triton sends: clients index by position
        else:
            message.raw_output_contents.append(codecs.encode_raw(array))
    return message


SHM_REGION = "shared_memory_region"
SHM_OFFSET = "shared_memory_offset"
SHM_BYTE_SIZE = "shared_memory_byte_size"


def _shared_place(what: str, params: Mapping[str, pb.InferParameter], shm: SystemSharedMemory | None) -> Place:
    """Where a tensor's shared memory parameters put it (tritonclient's ``set_shared_memory``)."""
    region = params[SHM_REGION]
    if region.WhichOneof("parameter_choice") != "string_param" or not region.string_param:
        raise invalid(f"{what}: {SHM_REGION} must be a region name (string_param)")
    if SHM_BYTE_SIZE not in params:
        raise invalid(f"{what}: {SHM_BYTE_SIZE} is required with {SHM_REGION}")
    byte_size = _int_param(what, params, SHM_BYTE_SIZE)
    offset = _int_param(what, params, SHM_OFFSET) if SHM_OFFSET in params else 0
    if shm is None:
        raise invalid(f"{what}: this server does not take tensors in shared memory")
    return Place(shm, what, region.string_param, offset, byte_size)


FINAL_RESPONSE = "triton_enable_empty_final_response"  # the one reserved key a client may send (Triton's list)
FINAL_RESPONSE_FLAG = "triton_final_response"  # on a stream's response: no more responses to that request
_PARAMETER_TYPES = {  # Triton's types (and its words for them) for the keys it reads; kerve has no sequences
    "sequence_id": (("int64_param", "string_param"), "int64_param or string_param"),
    "sequence_start": (("bool_param",), "bool_param"),
    "sequence_end": (("bool_param",), "bool_param"),
    FINAL_RESPONSE: (("bool_param",), "bool_param"),
}
_CUSTOM_TYPES = (("int64_param", "bool_param", "string_param"), "int64_param, bool_param, or string_param")


def _check_parameters(params: Mapping[str, pb.InferParameter]) -> None:
    """Triton's checks of a request's parameters (SetInferenceRequestMetadata), so a request Triton refuses is
    refused here too rather than silently run: `triton_` keys are reserved, known keys have one type, and custom
    ones are int64, bool or string."""
    for key, param in params.items():
        if key in (TIMEOUT, PRIORITY):
            continue  # read, with their own checks, by the caller
        choice = param.WhichOneof("parameter_choice")
        if key.startswith("triton_") and key != FINAL_RESPONSE:
            raise invalid(
                "parameter keys starting with 'triton_' are reserved for Triton usage. Only the following keys "
                f"starting with 'triton_' are allowed: {FINAL_RESPONSE}"
            )
        allowed, expected = _PARAMETER_TYPES.get(key, _CUSTOM_TYPES)
        if choice not in allowed:
            raise invalid(f"invalid value type for '{key}' parameter, expected {expected}.")


def wants_final_flag(message: pb.ModelInferRequest) -> bool:
    """Whether a stream's response to this request must say it is the last one (Triton's
    `triton_final_response`, which tritonclient's `enable_empty_final_response` waits for)."""
    return (
        bool(message.parameters)
        and FINAL_RESPONSE in message.parameters
        and message.parameters[FINAL_RESPONSE].bool_param
    )


def _int_param(what: str, params: Mapping[str, pb.InferParameter], key: str) -> int:
    param = params[key]
    choice = param.WhichOneof("parameter_choice")
    if choice not in ("int64_param", "uint64_param"):
        raise invalid(f"{what}: {key} must be an integer (int64_param)")
    return getattr(param, choice)


def _write_shared(name: str, array: np.ndarray, place: Place) -> None:
    target = place.view()  # checked again: the object may have shrunk while the model ran
    size = codecs.write_raw(array, target)
    if size > len(target):
        raise invalid(
            f"output {name!r}: the shared memory given for it ({len(target)} bytes) should be at least {size} "
            "bytes to hold the result"
        )


def _datatype(model: str, kind: str, name: str, dtype: np.dtype) -> str:
    """The V2 datatype of a model's tensor; one the protocol has no datatype for (complex numbers, say) is the
    model's limit on this protocol, not a fault of the request."""
    try:
        return codecs.datatype_of(dtype)
    except codecs.CodecError:
        raise ServingError(
            ErrorCode.FAILED_PRECONDITION,
            f"model {model!r} {kind} {name!r} has dtype {np.dtype(dtype)}, which the V2 protocol cannot carry",
        ) from None


def _datatype_name(dtype: np.dtype) -> str:
    """A numpy dtype by its V2 name (FP32), or numpy's where V2 has none."""
    try:
        return codecs.datatype_of(dtype)
    except codecs.CodecError:
        return str(dtype)


def error_message(error: ServingError) -> str:
    """What V2 clients read for an error: dtypes by their V2 datatype names."""
    if isinstance(error, DtypeMismatch):
        return error.worded("datatype", _datatype_name)
    return error.message


CLASSIFICATION = "classification"


def classification_counts(message: pb.ModelInferRequest) -> dict[str, int]:
    """The classification extension (tritonclient's ``InferRequestedOutput(name, class_count=k)``): requested
    outputs whose ``classification`` parameter asks for their top k classes instead of the raw tensor."""
    counts: dict[str, int] = {}
    for output in message.outputs:
        if CLASSIFICATION not in output.parameters:
            continue
        param = output.parameters[CLASSIFICATION]
        choice = param.WhichOneof("parameter_choice")
        count = getattr(param, choice) if choice in ("int64_param", "uint64_param") else None
        if count is None or count < 1:
            shown = getattr(param, choice) if choice else "nothing"
            raise invalid(
                f"output {output.name!r}: the classification parameter must be a positive integer, got {shown!r}"
            )
        counts[output.name] = count
    return counts


def _labels(response: InferResponse, output: str) -> Sequence[str] | None:
    return response.class_labels.get(output) if response.class_labels else None


def top_classes(
    name: str, scores: np.ndarray, count: int, labels: Sequence[str] | None = None, batched: bool = False
) -> np.ndarray:
    """The ``count`` highest scores per row as BYTES ``"<value>:<index>"``, highest first (ties: lower index
    first), as Triton answers: shape [batch, count] for a batched output, [count] for one without a batch dimension.
    Every element of a row past the batch dimension is a class. Fewer classes than ``count``: all of them. With
    ``labels``, ``"<value>:<index>:<label>"`` for a class that has one, as Triton does with a label file.

    ``batched`` (a model served with a batcher, Triton's max_batch_size > 0): the first dimension is the batch
    even for a 1-D output, one class per row (shape [batch, 1]); ranking it as one row would mix the callers'
    rows, and a request's answer would depend on who shared its batch."""
    if scores.dtype.kind == "V" and scores.dtype.name == codecs.BFLOAT16:
        scores = scores.astype(np.float32)  # exact: every bfloat16 value is a float32 one
    if scores.dtype.kind not in "biuf":
        raise invalid(
            f"output {name!r}: classification needs numeric scores, got {scores.dtype} of shape {list(scores.shape)}"
        )
    if scores.ndim == 0:  # a scalar output: one class, as Triton ranks it (shape [1])
        scores = scores.reshape(1)
    if scores.ndim > 1 or batched:  # sized explicitly: -1 cannot be inferred for a batch of 0 rows
        rows = scores.reshape(scores.shape[0], int(np.prod(scores.shape[1:], dtype=np.int64)))
    else:
        rows = scores.reshape(1, -1)
    order = np.argsort(-rows.astype(np.float64), axis=1, kind="stable")[:, :count]
    out = np.empty(order.shape, dtype=object)
    for r, indices in enumerate(order):
        for c, index in enumerate(indices):
            label = f":{labels[index]}" if labels is not None and index < len(labels) else ""
            out[r, c] = f"{_number(rows[r, index])}:{index}{label}".encode()
    return out if scores.ndim > 1 or batched else out[0]


def _number(value: np.generic) -> str:
    if isinstance(value, np.floating):
        return np.format_float_positional(value, unique=True, trim="-")
    return str(int(value))


def tensor_metadata(model: str, kind: str, spec: TensorSpec) -> pb.ModelMetadataResponse.TensorMetadata:
    return pb.ModelMetadataResponse.TensorMetadata(
        name=spec.name, datatype=_datatype(model, kind, spec.name, spec.dtype), shape=spec.wire_shape
    )


def model_config(
    model: str,
    platform: str,
    inputs: Mapping[str, TensorSpec],
    outputs: Mapping[str, TensorSpec],
    batching: BatchingConfig | None,
    policy: VersionPolicy,
    devices: Sequence[str],
    response_cache: bool = False,
    label_files: Mapping[str, str] | None = None,
    row_limit: int | None = None,
) -> pb.ModelConfig:
    """A served version as Triton's ModelConfig, so tools that size their requests from it see what kerve does.

    With a batcher (``batching``), ``max_batch_size`` is its largest batch and dims leave out the batch
    dimension, as Triton's do; a larger request still runs (alone, or split when batches are padded). Without
    one, the model takes its signature's shapes as they are: ``max_batch_size`` 0 and full dims, -1 for a
    variable dimension. ``label_files`` names the file of each output's class names (Triton's
    ``label_filename``). ``row_limit``: without a batcher, the most rows a request may carry (Triton's
    max_batch_size without dynamic_batching): reported as max_batch_size, with dims that leave the batch out.
    """
    batched = batching is not None or row_limit is not None
    per_replica = 1
    if batching is not None and (batching.batches_per_replica != AUTO or learns_slots(devices)):
        per_replica = batching.most_batches_per_replica  # `auto`: the two it may run on CPU replicas
    label_files = label_files or {}
    config = pb.ModelConfig(
        name=model,
        platform=platform,
        backend=BACKEND,
        max_batch_size=batching.max_batch_size if batching is not None else (row_limit or 0),
        version_policy=_version_policy(policy),
        input=[
            pb.ModelInput(name=n, data_type=_data_type(model, "input", s), dims=_dims(s, batched))
            for n, s in sorted(inputs.items())
        ],
        output=[
            pb.ModelOutput(
                name=n,
                data_type=_data_type(model, "output", s),
                dims=_dims(s, batched),
                label_filename=label_files.get(n, ""),
            )
            for n, s in sorted(outputs.items())
        ],
        instance_group=_instance_groups(model, devices, per_replica),
    )
    if response_cache:
        config.response_cache.enable = True
    if batching is not None:
        config.dynamic_batching.max_queue_delay_microseconds = round(batching.max_queue_delay_s * 1e6)
        config.dynamic_batching.priority_levels = batching.priority_levels
        config.dynamic_batching.default_priority_level = batching.default_priority_level
        if batching.pad_to_allowed:
            config.dynamic_batching.preferred_batch_size.extend(batching.allowed_batch_sizes)
        if batching.queue_policy != QueuePolicy():
            config.dynamic_batching.default_queue_policy.CopyFrom(_queue_policy(batching.queue_policy))
        for level, policy in batching.priority_queue_policy:
            config.dynamic_batching.priority_queue_policy[level].CopyFrom(_queue_policy(policy))
    return config


def _queue_policy(policy: QueuePolicy) -> pb.ModelQueuePolicy:
    return pb.ModelQueuePolicy(
        timeout_action=pb.ModelQueuePolicy.DELAY if policy.delays else pb.ModelQueuePolicy.REJECT,
        default_timeout_microseconds=round(policy.timeout_s * 1e6),
        allow_timeout_override=policy.allow_timeout_override,
        max_queue_size=policy.max_queue_size,
    )


def _data_type(model: str, kind: str, spec: TensorSpec) -> pb.DataType:
    datatype = _datatype(model, kind, spec.name, spec.dtype)
    return pb.DataType.Value("TYPE_STRING" if datatype == codecs.BYTES else f"TYPE_{datatype}")


def _dims(spec: TensorSpec, batched: bool) -> list[int]:
    shape = spec.wire_shape
    return shape[1:] if batched and spec.batched else shape


def _version_policy(policy: VersionPolicy) -> pb.ModelVersionPolicy:
    if policy.kind == "all":
        return pb.ModelVersionPolicy(all=pb.ModelVersionPolicy.All())
    if policy.kind == "specific":
        return pb.ModelVersionPolicy(specific=pb.ModelVersionPolicy.Specific(versions=list(policy.versions)))
    return pb.ModelVersionPolicy(latest=pb.ModelVersionPolicy.Latest(num_versions=policy.latest))


def _instance_groups(model: str, devices: Sequence[str], per_replica: int = 1) -> list[pb.ModelInstanceGroup]:
    """Triton's instances are batches at once (`per_replica` on each replica): CPU replicas as one KIND_CPU group
    counting them all (Triton's count on "the CPU"), GPU replicas as one KIND_GPU group listing their GPUs, its
    count per GPU; a replica that spans devices (mirrored mode) or sits on a TPU core is KIND_MODEL."""
    cpus, gpus, other = 0, [], 0
    for device in devices:
        kind = device_kind(device)
        if kind is None:
            other += 1
        elif kind[0] == "CPU":
            cpus += 1
        else:
            gpus.append(kind[1])
    kind = pb.ModelInstanceGroup.Kind
    groups = []
    if gpus:
        groups.append(pb.ModelInstanceGroup(name=f"{model}_gpu", kind=kind.KIND_GPU, count=per_replica, gpus=gpus))
    if cpus:
        groups.append(pb.ModelInstanceGroup(name=f"{model}_cpu", kind=kind.KIND_CPU, count=cpus * per_replica))
    if other:
        groups.append(pb.ModelInstanceGroup(name=model, kind=kind.KIND_MODEL, count=other))
    return groups
