"""Triton's `load_model(name, config=JSON)`: a ModelConfig sent with a load, turned into config.yaml overrides.

Triton loads the model with the given config instead of its config.pbtxt. kerve's settings live in config.yaml,
so the fields that have a config.yaml key override it for that load (as TF Serving's reload config does), and a
later load without a config goes back to config.yaml alone:

    version_policy                       -> version_policy
    max_batch_size + dynamic_batching    -> batching (max_batch_size, max_queue_delay_s, allowed_batch_sizes
                                            padded to, from preferred_batch_size; priority_levels,
                                            default_priority_level; default_queue_policy -> queue_policy,
                                            priority_queue_policy); no dynamic_batching: batching off, and
                                            max_batch_size (if any) the most rows a request may carry
    instance_group                       -> replicas and batching.batches_per_replica (one KIND_CPU group's
                                            count: replicas on up to that many CPU devices, the rest batches
                                            at once on each; one KIND_GPU group without gpus: every GPU, its
                                            count batches at once on each), re-placing loaded versions
    response_cache.enable                -> response_cache

The rest of a ModelConfig describes what kerve takes from the SavedModel (inputs, outputs, platform) or decides
itself (other instance groups). A config may repeat what kerve's ModelConfig reports for them, so a config read,
edited and sent back loads; any other value is refused with the field named, never ignored. So is a field outside
the ModelConfig subset kerve speaks (the parser's error names it). No TensorFlow here: the caller passes the
model's current ModelConfig, if it has one.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format

from kerve.protos import grpc_service_pb2 as pb

from .batcher import MAX_BATCHES_PER_REPLICA
from .errors import invalid
from .v2_codec import BACKEND


def overrides(model: str, text: str, platform: str, current: pb.ModelConfig | None, devices: int = 1) -> dict[str, Any]:
    """config.yaml keys for a load of `model` with Triton config JSON `text`; INVALID_ARGUMENT when kerve cannot
    apply it. `current` is what ModelConfig reports for the model now (None when no version is loaded); `devices`,
    the server's devices (a KIND_CPU count is spread over its CPU devices)."""
    where = f"load config for model {model!r}"
    try:
        config = json_format.Parse(text, pb.ModelConfig())
    except json_format.ParseError as exc:
        raise invalid(
            f"{where}: {exc} (kerve applies version_policy, max_batch_size and dynamic_batching's "
            "max_queue_delay_microseconds, preferred_batch_size, priority_levels, default_priority_level, "
            "default_queue_policy, priority_queue_policy; instance_group; response_cache)"
        ) from None
    for field, want in (("name", model), ("platform", platform), ("backend", BACKEND)):
        got = getattr(config, field)
        if got and got != want:
            raise invalid(f"{where}: {field} must be {want!r} (or left out), got {got!r}")
    for field in ("input", "output"):
        given = list(getattr(config, field))
        if given and (current is None or given != list(getattr(current, field))):
            raise invalid(f"{where}: {field} {_unchangeable(field, current)}")
    result: dict[str, Any] = {"batching": _batching(where, config)}
    groups = list(config.instance_group)
    if groups and (current is None or groups != list(current.instance_group)):
        placement, per_replica = _placement(where, groups, current, devices)
        if result["batching"]["enabled"]:
            result["batching"]["batches_per_replica"] = per_replica
        elif per_replica > 1:
            raise invalid(
                f"{where}: instance_group count {groups[0].count} runs {per_replica} batches at once on each device, "
                "which needs dynamic_batching (without it requests already run side by side, one model call each)"
            )
        result.update(placement)
    if config.HasField("version_policy"):
        result["version_policy"] = _version_policy(config.version_policy)
    if config.HasField("response_cache"):
        result["response_cache"] = config.response_cache.enable
    return result


def _placement(
    where: str, groups: list[pb.ModelInstanceGroup], current: pb.ModelConfig | None, devices: int
) -> tuple[dict[str, Any], int]:
    """An instance group kerve can honour: its placement keys, and the batches at once on each replica
    (`batches_per_replica`).
    Triton runs `count` instances side by side: on "the CPU" in all, on each GPU of a KIND_GPU group. So a
    KIND_CPU count on a server of `devices` CPU devices is one replica on each of up to `devices` of them, each
    running an equal share of the count; a KIND_GPU count is one replica on every GPU running `count` batches.
    KIND_AUTO is the kind the server serves on. `gpus` pins devices; kerve picks the least occupied ones itself, so
    that, and anything else, is refused rather than approximated."""
    kind = pb.ModelInstanceGroup.Kind
    served = {group.kind for group in current.instance_group} if current is not None else set()
    if len(groups) != 1 or groups[0].gpus:
        raise invalid(f"{where}: instance_group {_unchangeable('instance_group', current)}")
    group = groups[0]
    count = max(group.count, 1)  # Triton reads a count of 0 as 1
    chosen = group.kind
    if chosen == kind.KIND_AUTO and served in ({kind.KIND_CPU}, {kind.KIND_GPU}):
        (chosen,) = served  # Triton's AUTO: the GPUs where there are any, else the CPU; kerve serves on one kind
    if chosen == kind.KIND_CPU and served == {kind.KIND_CPU}:
        replicas = min(count, max(devices, 1))
        if count % replicas:
            raise invalid(
                f"{where}: instance_group count {count} on {devices} CPU devices: kerve runs the same number of "
                f"batches on each replica, so a KIND_CPU count is at most {devices} or a multiple of it"
            )
        placement, per_replica = {"replicas": replicas, "device_mode": "replica"}, count // replicas
    elif chosen == kind.KIND_GPU and served == {kind.KIND_GPU}:
        placement, per_replica = {"replicas": None, "device_mode": "replica"}, count
    else:
        raise invalid(f"{where}: instance_group {_unchangeable('instance_group', current)}")
    if per_replica > MAX_BATCHES_PER_REPLICA:
        raise invalid(
            f"{where}: instance_group count {count} is {per_replica} batches at once on each device, above the "
            f"{MAX_BATCHES_PER_REPLICA} kerve runs on one"
        )
    return placement, per_replica


def _unchangeable(field: str, current: pb.ModelConfig | None) -> str:
    why = (
        "comes from the SavedModel's signature"
        if field != "instance_group"
        else "is kerve's placement: a KIND_CPU group's count on a CPU server (replicas x batches at once), a "
        "KIND_GPU group without gpus (every GPU, count batches at once on each), or config.yaml's `replicas` and "
        "`batching: {batches_per_replica}` (loaded versions are re-placed)"
    )
    if current is None:
        return f"{why}: leave it out (no version of the model is loaded to compare it with)"
    return f"{why}: leave it out, or send what ModelConfig reports"


def _batching(where: str, config: pb.ModelConfig) -> dict[str, Any]:
    """Triton batches dynamically only with a dynamic_batching section; max_batch_size alone bounds a request."""
    if not config.HasField("dynamic_batching"):  # max_batch_size alone still bounds a request's rows
        return {"enabled": False, **({"max_batch_size": config.max_batch_size} if config.max_batch_size > 0 else {})}
    if config.max_batch_size <= 0:
        raise invalid(f"{where}: dynamic_batching needs max_batch_size > 0, got {config.max_batch_size}")
    dynamic = config.dynamic_batching
    preferred = sorted(set(dynamic.preferred_batch_size))
    if preferred and preferred[-1] > config.max_batch_size:
        raise invalid(f"{where}: preferred_batch_size {preferred[-1]} is above max_batch_size {config.max_batch_size}")
    if preferred and preferred[-1] != config.max_batch_size:
        preferred.append(config.max_batch_size)  # kerve pads up to these sizes: a full batch must be one of them
    return {
        "enabled": True,
        "max_batch_size": config.max_batch_size,
        "max_queue_delay_s": dynamic.max_queue_delay_microseconds / 1e6,
        "allowed_batch_sizes": preferred,
        "pad_to_allowed": True,
        "priority_levels": dynamic.priority_levels,
        "default_priority_level": dynamic.default_priority_level,
        "queue_policy": _queue_policy(dynamic.default_queue_policy),
        "priority_queue_policy": {level: _queue_policy(p) for level, p in dynamic.priority_queue_policy.items()},
    }


def _queue_policy(policy: pb.ModelQueuePolicy) -> dict[str, Any]:
    """config.yaml's queue policy keys (queue_policy.QueuePolicy) for a Triton ModelQueuePolicy."""
    return {
        "timeout_s": policy.default_timeout_microseconds / 1e6,
        "timeout_action": "delay" if policy.timeout_action == pb.ModelQueuePolicy.DELAY else "reject",
        "allow_timeout_override": policy.allow_timeout_override,
        "max_queue_size": policy.max_queue_size,
    }


def _version_policy(policy: pb.ModelVersionPolicy) -> Any:
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return "all"
    if choice == "specific":
        return {"specific": list(policy.specific.versions)}
    return {"latest": policy.latest.num_versions}
