"""Which devices serve: TPU cores, GPUs or CPU, one model replica per device.

Device configuration must happen before TensorFlow initialises its runtime (before the first model loads),
so KerveServer calls `configure_devices` once at start-up.

A TPU is looked for only when asked (`--devices tpu`) or when the environment names one (TPU_NAME, or a
local TPU VM's /dev/accel0): TPUClusterResolver otherwise probes the cloud metadata server over the network.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tensorflow as tf
from tensorflow.core.protobuf import config_pb2
from tensorflow.python.eager import context
from tensorflow.python.framework import ops

from .cpus import schedulable_cores, usable_cores

log = logging.getLogger("kerve.server.devices")

DEVICE_KINDS = ("auto", "cpu", "gpu", "tpu")


@dataclass(frozen=True)
class DeviceSet:
    kind: str  # "tpu" | "gpu" | "cpu"
    names: tuple[str, ...]  # logical device names, e.g. "/device:GPU:0"
    resolver: Any = field(default=None, compare=False, repr=False)  # the TPU's cluster resolver

    @property
    def pad_batches(self) -> bool:
        """XLA on TPU compiles one program per shape: pad batches to a few fixed sizes there."""
        return self.kind == "tpu"

    def mirrored_strategy(self) -> tf.distribute.Strategy:
        """The strategy that splits one batch over every device (config.yaml ``device_mode: mirrored``).

        A TPU's cores take TPUStrategy over the resolver the server connected with: MirroredStrategy drives GPUs
        and CPUs, not TPU cores, and a TPU program must be compiled for the whole TPU system at once.
        """
        if self.kind == "tpu":
            return tf.distribute.TPUStrategy(self.resolver)
        return tf.distribute.MirroredStrategy(list(self.names))


def _tpu_wanted(kind: str) -> bool:
    return kind == "tpu" or (kind == "auto" and (bool(os.environ.get("TPU_NAME")) or Path("/dev/accel0").exists()))


def _connect_tpu() -> DeviceSet | None:
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=os.environ.get("TPU_NAME", "local"))
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as exc:
        log.warning("no TPU available: %s", exc)
        return None
    names = tuple(d.name for d in tf.config.list_logical_devices("TPU"))
    return DeviceSet("tpu", names, resolver) if names else None


def configure_spinning(spinning: bool) -> bool:
    """Whether TensorFlow's pool threads spin-wait for work after a task instead of sleeping; only before its
    runtime starts. Returns whether the runtime has the setting asked for.

    Spinning buys a faster hand-off of the next op with CPU that, in a server, belongs to the event loop, gRPC and
    the other batches (and counts against a container's CPU quota). On the 2-core VM, in process (`bench.call_paths
    --gap-ms 1`), the light CNN's calls cost 20-35% less CPU without it and ran 10-20% faster, while the seed LSTM's,
    a chain of 200 steps handed between threads, took 1.4-1.6x as long. In the server, turning it off cut the CPU
    per request by 2-28% and served 1.09x the ResNet's samples/s, 1.07x the light CNN's and 0.96x the LSTM's
    (docs/benchmarks.md, twentieth session), so the server's default is off.
    The eager context is created with the setting, so the process's one intra-op pool is made with it; the session
    call path copies the context's configuration, so the session's inter-op pool gets it too.
    """
    if context.context_safe() is None:
        config = config_pb2.ConfigProto()
        config.experimental.disable_thread_spinning = not spinning
        ops.enable_eager_execution_internal(config=config)
    return thread_spinning() == spinning


def thread_spinning() -> bool:
    """Whether TensorFlow's pool threads spin-wait between tasks (its default)."""
    return not context.context().config.experimental.disable_thread_spinning


def spinning_text() -> str:
    """What the pool threads do between tasks, in the words every log line about it uses: "spin" or "sleep"."""
    return "spin" if thread_spinning() else "sleep"


def configure_threads(intra_op: int, inter_op: int) -> None:
    """TensorFlow's thread pools (0 leaves TF's default, one thread per core); only before its runtime starts."""
    if intra_op > 0:
        tf.config.threading.set_intra_op_parallelism_threads(intra_op)
    if inter_op > 0:
        tf.config.threading.set_inter_op_parallelism_threads(inter_op)


def thread_counts() -> tuple[int, int]:
    """(intra-op, inter-op) threads as TensorFlow holds them; 0 is its default, one per core."""
    return (
        tf.config.threading.get_intra_op_parallelism_threads(),
        tf.config.threading.get_inter_op_parallelism_threads(),
    )


def configure_devices(
    kind: str = "auto",
    cpu_replicas: int = 1,
    intra_op_threads: int = 0,
    inter_op_threads: int = 0,
    processes: int = 1,
    spinning: bool = True,
) -> DeviceSet:
    """Pick the serving devices. On CPU, cpu_replicas > 1 splits the CPU into that many logical devices,
    each with its own replica, so that several batches run at once.

    Thread counts left at 0 are sized from the cores this process may use (`cpus.usable_cores`: a container's CPU
    quota caps the host's cores, which TF alone would not notice). Serving on CPU, several replicas (and several
    server processes, `--processes`) also split those cores unless intra_op_threads says otherwise: each op gets
    cores // (cpu_replicas * processes) threads instead of every core each. Batches side by side on a thread each
    beat one batch at a time on all cores (no hand-off to a thread pool inside every op, which dominates small
    batches; no pool threads spinning between ops), and several TF runtimes each sized for the whole host would
    oversubscribe it (docs/benchmarks.md).
    """
    if kind not in DEVICE_KINDS:
        raise ValueError(f"unknown device kind {kind!r}; choose from {DEVICE_KINDS}")
    if cpu_replicas < 1:
        raise ValueError(f"cpu replicas must be >= 1, got {cpu_replicas}")
    if not configure_spinning(spinning):
        log.warning(
            "TensorFlow's runtime started before the server configured it: its threads %s between tasks",
            spinning_text(),
        )
    cores = usable_cores()
    default = cores if cores < schedulable_cores() else 0  # under a CPU quota TF's default would oversubscribe
    configure_threads(intra_op_threads or default, inter_op_threads or default)
    if _tpu_wanted(kind):
        tpu = _connect_tpu()
        if tpu is not None:
            return tpu
        if kind == "tpu":
            raise RuntimeError("--devices tpu was requested but no TPU could be initialised")
    if kind in ("auto", "gpu"):
        gpus = tf.config.list_physical_devices("GPU")
        for gpu in gpus:
            tf.config.experimental.set_memory_growth(gpu, True)  # replicas of several models share the card
        if gpus:
            return DeviceSet("gpu", tuple(d.name for d in tf.config.list_logical_devices("GPU")))
        if kind == "gpu":
            raise RuntimeError("--devices gpu was requested but TensorFlow sees no GPU")
    if intra_op_threads == 0 and cpu_replicas * processes > 1:
        configure_threads(max(1, cores // (cpu_replicas * processes)), 0)
    if cpu_replicas > 1:
        (cpu,) = tf.config.list_physical_devices("CPU")[:1]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * cpu_replicas)
    return DeviceSet("cpu", tuple(d.name for d in tf.config.list_logical_devices("CPU")))
