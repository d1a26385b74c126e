"""Which tf.distribute strategy a training run uses.

`auto` picks, in order: MultiWorkerMirroredStrategy when TF_CONFIG is set (the CronJob with several
workers), TPUStrategy when a TPU resolves (tried only when TPU_NAME is set or /dev/accel0 exists: the GCE
metadata server is never probed), MirroredStrategy over several GPUs (else over `cpu_devices` logical CPUs,
when the configuration splits the CPU), and the default strategy otherwise. `choose` also decides which devices
a MirroredStrategy runs over, so the reason it gives is what runs. Any of them can be forced with `strategy:`
in the config.

The decision (`choose`) is plain Python so it is testable without TensorFlow; `create` builds the strategy.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TPU_DEVICE = Path("/dev/accel0")


class StrategyError(RuntimeError):
    """The requested strategy cannot run here."""


@dataclass(frozen=True)
class Choice:
    kind: str  # default | mirrored | multiworker | tpu
    reason: str
    devices: str = ""  # mirrored: the device pool it mirrors over, "GPU" or "CPU" (logical devices); else ""


def mirrored_pool(num_gpus: int, cpu_devices: int) -> tuple[str, str]:
    """(device type, description) MirroredStrategy runs over: several GPUs, else the `cpu_devices` logical CPUs
    the configuration splits the CPU into, else the one GPU, else the CPU."""
    if num_gpus > 1:
        return "GPU", f"{num_gpus} GPUs"
    if cpu_devices > 1:
        return "CPU", f"{cpu_devices} logical CPU devices"
    if num_gpus == 1:
        return "GPU", "1 GPU"
    return "CPU", "1 CPU device"


def tpu_hint(env: Mapping[str, str], accel_device: Path = TPU_DEVICE) -> str | None:
    """The TPU to resolve ("local" for an attached one), or None when there is no sign of a TPU at all."""
    if env.get("TPU_NAME"):
        return env["TPU_NAME"]
    if accel_device.exists():
        return "local"
    return None


def choose(requested: str, env: Mapping[str, str], tpu: str | None, num_gpus: int, cpu_devices: int) -> Choice:
    """The strategy kind for `requested` (auto | default | mirrored | multiworker | tpu)."""
    pool, described = mirrored_pool(num_gpus, cpu_devices)
    if requested == "auto":
        if env.get("TF_CONFIG"):
            return Choice("multiworker", "TF_CONFIG is set")
        if tpu is not None:
            return Choice("tpu", f"TPU {tpu!r} (falls back when it does not resolve)")
        if num_gpus > 1 or cpu_devices > 1:
            return Choice("mirrored", described, pool)
        return Choice("default", "one device")
    if requested == "mirrored":
        return Choice("mirrored", f"requested in the configuration; over {described}", pool)
    if requested in ("default", "multiworker", "tpu"):
        return Choice(requested, "requested in the configuration")
    raise StrategyError(f"unknown strategy {requested!r}")


class ClusterError(StrategyError):
    """TF_CONFIG is not a cluster description this run can use."""


def task_of(tf_config: str | None) -> tuple[str, int] | None:
    """(task type, index) from TF_CONFIG's text, or None when it is unset or names no cluster."""
    if not tf_config:
        return None
    try:
        parsed = json.loads(tf_config)
    except json.JSONDecodeError as exc:
        raise ClusterError(f"TF_CONFIG is not JSON: {exc}") from exc
    if not isinstance(parsed, Mapping):
        raise ClusterError(f"TF_CONFIG must be a JSON object, got {type(parsed).__name__}")
    task = parsed.get("task")
    if task is None:
        if any(parsed.get("cluster") or {}):
            raise ClusterError("TF_CONFIG names a cluster but no task: each worker must say which task it is")
        return None  # no cluster either: one local process
    if not isinstance(task, Mapping) or not isinstance(task.get("type"), str):
        raise ClusterError(f"TF_CONFIG task must be {{'type': ..., 'index': ...}}, got {task!r}")
    index = task.get("index", 0)
    if not isinstance(index, int) or isinstance(index, bool) or index < 0:
        raise ClusterError(f"TF_CONFIG task.index must be a non-negative integer, got {index!r}")
    return task["type"], index


def is_chief(tf_config: str | None) -> bool:
    """The task that publishes: `chief` when the cluster names one, else worker 0 (TensorFlow's convention).

    Without TF_CONFIG there is no cluster and the one process is its own chief."""
    task = task_of(tf_config)
    if task is None:
        return True
    kind, index = task
    cluster = json.loads(tf_config or "{}").get("cluster") or {}
    if not isinstance(cluster, Mapping):
        raise ClusterError(f"TF_CONFIG cluster must be a JSON object, got {cluster!r}")
    if kind == "chief":
        return True
    return kind == "worker" and index == 0 and not cluster.get("chief")


def configure_cpu_devices(count: int) -> None:
    """Split the first physical CPU into `count` logical devices; must run before TensorFlow initialises."""
    import tensorflow as tf

    if count <= 1:
        return
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * count)
    except RuntimeError as exc:
        if len(tf.config.list_logical_devices("CPU")) == count:
            return  # this process already configured the same split
        raise StrategyError(
            f"cannot split the CPU into {count} devices: TensorFlow is already initialised in this process ({exc})"
        ) from exc


def create(requested: str, cpu_devices: int = 0, env: Mapping[str, str] | None = None) -> tuple[Any, dict[str, Any]]:
    """(strategy, description for kerve.json)."""
    import tensorflow as tf

    env = os.environ if env is None else env
    configure_cpu_devices(cpu_devices)
    # physical, not logical: listing logical devices starts TensorFlow's runtime, after which a
    # MultiWorkerMirroredStrategy can no longer be made ("Collective ops must be configured at program startup")
    gpus = tf.config.list_physical_devices("GPU")
    tpu = tpu_hint(env)
    choice = choose(requested, env, tpu, len(gpus), cpu_devices)
    if choice.kind == "multiworker":
        is_chief(env.get("TF_CONFIG"))  # a TF_CONFIG that names no task fails here, not in TensorFlow
    strategy: Any = None
    reason = choice.reason
    if choice.kind == "tpu":
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or "local")
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
            strategy = tf.distribute.TPUStrategy(resolver)
        except (ValueError, RuntimeError, tf.errors.OpError) as exc:
            if requested == "tpu":
                raise StrategyError(f"no TPU resolved ({tpu or 'local'}): {exc}") from exc
            reason = f"TPU {tpu!r} did not resolve ({type(exc).__name__}); one device"
            choice = Choice("default", reason)
    if choice.kind == "multiworker":
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    elif choice.kind == "mirrored":  # over the pool `choose` named, so the reason says what runs
        devices = [d.name for d in tf.config.list_logical_devices(choice.devices)]
        if not devices:
            raise StrategyError(f"no logical {choice.devices} device for MirroredStrategy ({choice.reason})")
        strategy = tf.distribute.MirroredStrategy(devices=devices)
    elif choice.kind == "default":
        strategy = tf.distribute.get_strategy()
    described: dict[str, Any] = {
        "name": type(strategy).__name__,
        "kind": choice.kind,
        "requested": requested,
        "reason": reason,
        "replicas": int(strategy.num_replicas_in_sync),
    }
    if choice.kind == "mirrored":
        described["devices"] = list(strategy.extended.worker_devices)
    if choice.kind == "multiworker":
        task = task_of(env.get("TF_CONFIG"))
        described["task"] = f"{task[0]} {task[1]}" if task else "worker 0"
        described["chief"] = is_chief(env.get("TF_CONFIG"))
    return strategy, described
