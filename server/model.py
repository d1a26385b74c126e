"""A loaded SavedModel version: its signatures as typed specs and a numpy-in, numpy-out call.

Serving goes through `tf.saved_model.load(path).signatures[...]`, never `keras.Model.predict` (which costs ~70x
more per call on small batches). This is the only server module that loads or calls a model.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from . import sharding
from .devices import DeviceSet
from .errors import ErrorCode, ServingError, first_line, not_found
from .model_config import ModelConfig
from .placement import Placer
from .types import TensorSpec

log = logging.getLogger("kerve.server.model")

DEFAULT_SIGNATURE = "serving_default"
PLATFORM = "tensorflow_savedmodel"


def _spec(name: str, tf_spec: tf.TensorSpec) -> TensorSpec:
    dtype = np.dtype(object) if tf_spec.dtype == tf.string else np.dtype(tf_spec.dtype.as_numpy_dtype)
    shape = None if tf_spec.shape.rank is None else tuple(tf_spec.shape.as_list())
    return TensorSpec(name=name, dtype=dtype, shape=shape)


@dataclass
class Signature:
    key: str
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]
    _fn: Any
    _device: str | None = None

    def run(self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Call the concrete function; runs in a worker thread (TensorFlow releases the GIL)."""
        ctx = tf.device(self._device) if self._device else contextlib.nullcontext()
        with ctx:
            try:
                result = self._fn(**{name: tf.convert_to_tensor(value) for name, value in inputs.items()})
            except (tf.errors.InvalidArgumentError, ValueError, TypeError) as exc:
                raise _rejected(exc) from None
            except tf.errors.ResourceExhaustedError as exc:
                raise ServingError(ErrorCode.RESOURCE_EXHAUSTED, first_line(exc) or type(exc).__name__) from None
        names = output_names or sorted(result)
        return {name: result[name].numpy() for name in names}


def _rejected(exc: BaseException) -> ServingError:
    reason = first_line(exc) or type(exc).__name__
    return ServingError(ErrorCode.INVALID_ARGUMENT, f"model rejected the inputs: {reason}")


class SavedModelServable:
    """One version of one model on one device."""

    platform = PLATFORM

    def __init__(self, path: str | Path, device: str | None = None) -> None:
        self.path = Path(path)
        self.device = device
        ctx = tf.device(device) if device else contextlib.nullcontext()
        with ctx:
            self._loaded = tf.saved_model.load(str(self.path))
        self.signatures: dict[str, Signature] = {}
        for key, fn in self._loaded.signatures.items():
            _args, kwargs = fn.structured_input_signature
            inputs = {name: _spec(name, spec) for name, spec in kwargs.items()}
            outputs = {name: _spec(name, spec) for name, spec in fn.structured_outputs.items()}
            self.signatures[key] = Signature(key, inputs, outputs, fn, device)
        if not self.signatures:
            raise ServingError(ErrorCode.FAILED_PRECONDITION, f"{self.path} has no serving signatures")

    def signature(self, key: str | None = None) -> Signature:
        """The named signature, or serving_default (or the only one) when no name is given."""
        if not key:
            if DEFAULT_SIGNATURE in self.signatures:
                return self.signatures[DEFAULT_SIGNATURE]
            if len(self.signatures) == 1:
                return next(iter(self.signatures.values()))
            raise not_found(f"no {DEFAULT_SIGNATURE!r} signature; name one of {sorted(self.signatures)}")
        try:
            return self.signatures[key]
        except KeyError:
            raise not_found(f"signature {key!r} not found; available: {sorted(self.signatures)}") from None


class ReplicatedServable:
    """The same version loaded once per device (device_mode: replica); specs come from the first replica.

    The batcher gets one runner per device and sends each batch to an idle one. ``on_close`` runs once, when the
    manager unloads the version (the placer takes its devices back).
    """

    platform = PLATFORM

    def __init__(self, path: str | Path, devices: Sequence[str], on_close: Callable[[], None] | None = None) -> None:
        if not devices:
            raise ValueError("at least one device is needed")
        self.path = Path(path)
        self.replicas = [SavedModelServable(path, device) for device in devices]
        self.signatures = self.replicas[0].signatures
        self.runner_devices = [replica.device or "default" for replica in self.replicas]
        self._on_close = on_close

    def close(self) -> None:
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close()

    def signature(self, key: str | None = None) -> Signature:
        return self.replicas[0].signature(key)

    def runners(self, key: str) -> list[Any]:
        """One callable per device for the batcher: inputs with a batch dim -> all outputs."""
        return [replica.signatures[key].run for replica in self.replicas]


class MirroredServable:
    """One copy whose variables a distribution strategy mirrors on every device (device_mode: mirrored):
    MirroredStrategy over GPUs or logical CPUs, TPUStrategy over a TPU's cores (`DeviceSet.mirrored_strategy`).

    Each batch is split into one equal shard per device (padded up to a multiple of the device count:
    server/sharding.py) and run on all of them at once: for large batches of a compute-heavy model, latency drops
    with the number of devices instead of only throughput rising.
    """

    platform = PLATFORM

    def __init__(self, path: str | Path, strategy: tf.distribute.Strategy, devices: Sequence[str]) -> None:
        self.path = Path(path)
        self.strategy = strategy
        with strategy.scope():
            self._model = SavedModelServable(path)
        self.signatures = self._model.signatures
        self.runner_devices = ["mirrored:" + ",".join(devices)]

    def signature(self, key: str | None = None) -> Signature:
        return self._model.signature(key)

    def runners(self, key: str) -> list[Any]:
        return [self._sharded_runner(self.signatures[key])]

    def _sharded_runner(self, signature: Signature) -> Any:
        strategy = self.strategy
        shards = strategy.num_replicas_in_sync
        fn = signature._fn

        @tf.function(reduce_retracing=True)
        def step(values: Any) -> Any:
            return strategy.run(lambda v: fn(**v), args=(values,))

        def run(inputs: Mapping[str, np.ndarray], output_names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
            parts, rows = sharding.shard(inputs, shards)  # equal shards: one shape per batch size on every device
            values = strategy.experimental_distribute_values_from_function(
                lambda ctx: {name: tf.constant(v) for name, v in parts[ctx.replica_id_in_sync_group].items()}
            )
            try:
                per_replica = strategy.experimental_local_results(step(values))
            except (tf.errors.InvalidArgumentError, ValueError, TypeError) as exc:
                raise _rejected(exc) from None
            names = output_names or sorted(per_replica[0])
            outputs = [{name: part[name].numpy() for name in names} for part in per_replica]
            return sharding.unshard(outputs, names, rows)

        return run


class ReplicaLoader:
    """The manager's loader: (path, model config) -> a servable over the configured devices.

    Replica mode puts one copy on each device, or with config.yaml's ``replicas: N`` on the N devices holding
    the fewest copies at that moment (server/placement.py); unloading the version gives them back. Mirrored mode
    loads one copy under the device set's strategy (MirroredStrategy, or TPUStrategy on a TPU).
    """

    def __init__(self, devices: DeviceSet) -> None:
        self.placer = Placer(devices.names)
        self._mirrored_strategy = devices.mirrored_strategy

    def placement(self, config: ModelConfig) -> tuple[str, int]:
        """Where a load with `config` puts a version: mirrored, or copies on how many devices (none given, or more
        than there are, is every device), so that a config change that places nothing differently reloads
        nothing (the manager re-places loaded versions when this changes)."""
        devices = len(self.placer.devices)
        if config.device_mode == "mirrored":
            return "mirrored", devices
        return "replica", devices if config.replicas is None else min(config.replicas, devices)

    def __call__(self, path: Path, config: ModelConfig) -> ReplicatedServable | MirroredServable:
        if config.device_mode == "mirrored":
            return MirroredServable(path, self._mirrored_strategy(), self.placer.devices)
        if config.replicas is not None and config.replicas > len(self.placer.devices):
            log.warning(
                "%s: replicas: %d but the server has %d device(s); one replica per device",
                path.parent.name,
                config.replicas,
                len(self.placer.devices),
            )
        chosen = self.placer.acquire(config.replicas)
        try:
            return ReplicatedServable(path, chosen, on_close=functools.partial(self.placer.release, chosen))
        except BaseException:
            self.placer.release(chosen)
            raise
