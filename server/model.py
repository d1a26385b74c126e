"""A loaded SavedModel version: its signatures as typed specs and a numpy-in, numpy-out call.

Serving goes through the SavedModel's signatures, never `keras.Model.predict` (which costs ~70x more per call on
small batches). A signature is called through one of two paths (`--call-path`):

- ``session``: the SavedModel's graph imported into a TF1 ``Session`` and called through the session's C++
  callable: one ``Session::RunCallable`` per batch, numpy in and out, as TF Serving runs a batch. It runs the
  least Python (and holds the GIL least) per call, which is what a 2-core host serving small batches is short of.
  Small batches can run their ops on the calling thread instead of TF's inter-op pool (`--caller-thread-max-batch`).
- ``function``: ``tf.saved_model.load(path).signatures[key]``, an eager call of the signature's ConcreteFunction.
  Mirrored models (MirroredStrategy/TPUStrategy) need it, and ``auto`` keeps it on GPU and TPU, where the session
  path has not been measured.

Both give the same signatures and specs, and the same outputs to the last bit or within a few ulps (the seed LSTM's
differ by 1-2 ulps at some batch sizes: the loop's function is optimized differently; the batch size a batcher
forms moves oneDNN's results as much): tests/integration/test_call_paths.py. This is the only server module that loads
or calls a model.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.protobuf import config_pb2, meta_graph_pb2, rewriter_config_pb2, saved_model_pb2
from tensorflow.python.eager import context
from tensorflow.python.util import deprecation

from . import call_choice, sharding
from .devices import DeviceSet
from .errors import ErrorCode, ServingError, first_line, not_found
from .model_config import ModelConfig
from .placement import Placer
from .types import CALL_PATHS, TensorSpec

log = logging.getLogger("kerve.server.model")

DEFAULT_SIGNATURE = "serving_default"
PLATFORM = "tensorflow_savedmodel"
SERVE_TAG = "serve"
_MAX_CALLABLES = 32  # per signature: one Session callable per distinct set of requested outputs


def resolve_call_path(requested: str, device_kind: str) -> str:
    """`auto` is the session path on CPU and the function path on GPU and TPU (the session path is unmeasured there)."""
    if requested not in CALL_PATHS:
        raise ValueError(f"call path must be one of {', '.join(CALL_PATHS)}, got {requested!r}")
    if requested != "auto":
        return requested
    return "session" if device_kind == "cpu" else "function"


class Runner(Protocol):
    def __call__(
        self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]: ...


def _spec(name: str, tf_spec: tf.TensorSpec) -> TensorSpec:
    dtype = np.dtype(object) if tf_spec.dtype == tf.string else np.dtype(tf_spec.dtype.as_numpy_dtype)
    shape = None if tf_spec.shape.rank is None else tuple(tf_spec.shape.as_list())
    return TensorSpec(name=name, dtype=dtype, shape=shape)


def _dense(value: Any) -> bool:
    """Whether a function's input spec or output (a TensorSpec, or a graph tensor of a TF1 model) is dense."""
    if isinstance(value, tf.TensorSpec):
        return True
    return not isinstance(value, tf.TypeSpec | tf.SparseTensor | tf.RaggedTensor)


def _not_dense(path: Path, key: str) -> None:
    """A signature with a sparse or ragged tensor is not served (both wire protocols carry dense tensors), and the
    version's other signatures are: TF Serving serves such a model's dense signatures too."""
    log.warning("%s: signature %r is not served: its inputs or outputs are not all dense tensors (sparse or ragged)",
                path, key)  # fmt: skip


def _info_spec(name: str, info: meta_graph_pb2.TensorInfo) -> TensorSpec:
    return _spec(name, tf.TensorSpec(tf.TensorShape(info.tensor_shape), tf.as_dtype(info.dtype)))


@dataclass
class Signature:
    key: str
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]
    run: Runner  # runs in a worker thread (TensorFlow releases the GIL): inputs -> the named (or all) outputs
    fn: Any = None  # the ConcreteFunction on the function path (MirroredServable calls it under its strategy)


def _rejected(exc: BaseException) -> ServingError:
    reason = first_line(exc) or type(exc).__name__
    return ServingError(ErrorCode.INVALID_ARGUMENT, f"model rejected the inputs: {reason}")


@contextlib.contextmanager
def _model_errors() -> Iterator[None]:
    """What a model raises on a call, as the status a client gets (both call paths raise the same classes)."""
    try:
        yield
    except (tf.errors.InvalidArgumentError, ValueError, TypeError) as exc:
        raise _rejected(exc) from None
    except tf.errors.UnimplementedError as exc:  # a kernel that cannot take these inputs (a conv given the wrong
        # channel count on CPU): the call's inputs are at fault, not the server, and a batch refused for them is
        # re-run one request at a time like any other refusal
        raise _rejected(exc) from None
    except tf.errors.ResourceExhaustedError as exc:
        raise ServingError(ErrorCode.RESOURCE_EXHAUSTED, first_line(exc) or type(exc).__name__) from None


def _function_runner(fn: Any, device: str | None) -> Runner:
    def run(inputs: Mapping[str, np.ndarray], output_names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        with tf.device(device) if device else contextlib.nullcontext(), _model_errors():
            result = fn(**{name: tf.convert_to_tensor(value) for name, value in inputs.items()})
        names = output_names or sorted(result)
        return {name: result[name].numpy() for name in names}

    return run


class _SessionSignature:
    """One signature called through the session's C++ callables (`Session::MakeCallable`/`RunCallable`): the feeds
    in sorted input order, one callable per tuple of requested outputs (made once, then reused: making one prunes
    the graph, which costs milliseconds).

    Not `Session.make_callable`: with feeds it runs `Session.run`'s Python feed and fetch handling on every call,
    which cost the seed CNN 0.15 ms of a 0.25-0.4 ms batch-1 call in process (docs/benchmarks.md, eighteenth
    session). Small batches may run their ops on the calling thread (`RunOptions.inter_op_thread_pool = -1`)
    instead of handing each op to TensorFlow's inter-op pool: a second callable per output tuple, and `choice`
    (server/call_choice.py) says per batch which one runs it, learning from timed batches under `auto`.
    """

    def __init__(
        self,
        session: tf.compat.v1.Session,
        signature: meta_graph_pb2.SignatureDef,
        choice: call_choice.CallerThreadChoice | call_choice.FixedCallerThread | None = None,
    ) -> None:
        self._session = session
        self._inputs = sorted(signature.inputs)
        self._feeds = [signature.inputs[name].name for name in self._inputs]
        self._fetches = {name: info.name for name, info in signature.outputs.items()}
        self._all = tuple(sorted(self._fetches))
        self.choice = choice or call_choice.FixedCallerThread(0)
        self._callables: dict[tuple[str, ...], tuple[Callable[..., list[np.ndarray]], ...]] = {}
        self._lock = threading.Lock()
        self._callable(self._all, False)  # built at load, so the first request does not pay for it

    def _options(self, names: tuple[str, ...], caller_thread: bool) -> config_pb2.CallableOptions:
        options = config_pb2.CallableOptions(feed=self._feeds, fetch=[self._fetches[name] for name in names])
        if caller_thread:
            options.run_options.inter_op_thread_pool = -1
        return options

    def _make(self, names: tuple[str, ...], caller_thread: bool) -> Callable[..., list[np.ndarray]]:
        options = self._options(names, caller_thread)
        return self._session._make_callable_from_options(options)  # noqa: SLF001 - the C++ callable, no Python run

    def _callable(self, names: tuple[str, ...], caller_thread: bool) -> Callable[..., list[np.ndarray]]:
        found = self._callables.get(names)
        if found is not None:
            return found[caller_thread]
        unknown = [name for name in names if name not in self._fetches]
        if unknown:
            raise ServingError(
                ErrorCode.INVALID_ARGUMENT, f"unknown output(s) {unknown}; the signature has {list(self._all)}"
            )
        with self._lock:
            found = self._callables.get(names)
            if found is None:
                found = (self._make(names, False),)
                if self.choice.max_rows > 0:
                    found += (self._make(names, True),)
                if len(self._callables) < _MAX_CALLABLES or names == self._all:
                    self._callables[names] = found
            return found[caller_thread]

    def __call__(
        self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        names = tuple(output_names) if output_names else self._all
        if len(inputs) != len(self._inputs) or any(name not in inputs for name in self._inputs):
            raise ServingError(
                ErrorCode.INVALID_ARGUMENT,
                f"model rejected the inputs: expected {self._inputs}, got {sorted(inputs)}",
            )
        values = [inputs[name] for name in self._inputs]
        first = values[0] if values else None
        rows = first.shape[0] if first is not None and first.ndim else 1
        caller_thread, timed = self.choice.choose(rows)
        call = self._callable(names, caller_thread)
        try:
            with _model_errors():
                started = time.perf_counter()
                outputs = call(*values)
                if timed:
                    self.choice.record(rows, caller_thread, time.perf_counter() - started)
        except (RuntimeError, tf.errors.CancelledError) as exc:  # the session was closed: the version unloaded
            raise ServingError(ErrorCode.UNAVAILABLE, f"the model was unloaded: {first_line(exc)}") from None
        return dict(zip(names, outputs, strict=True))


def _meta_graph(path: Path) -> meta_graph_pb2.MetaGraphDef:
    """The MetaGraph a server serves: the one tagged "serve", or the only one."""
    saved = saved_model_pb2.SavedModel()
    binary, text = path / "saved_model.pb", path / "saved_model.pbtxt"
    if text.exists() and not binary.exists():
        text_format.Parse(text.read_text(), saved)
    else:
        saved.ParseFromString(binary.read_bytes())  # none there: FileNotFoundError, as the function path's OSError
    graphs = list(saved.meta_graphs)
    served = [graph for graph in graphs if SERVE_TAG in graph.meta_info_def.tags]
    if served:
        return served[0]
    if len(graphs) == 1:
        return graphs[0]
    tags = [list(graph.meta_info_def.tags) for graph in graphs]
    raise ServingError(ErrorCode.FAILED_PRECONDITION, f"{path}: no MetaGraph tagged {SERVE_TAG!r} among {tags}")


def _session_config() -> config_pb2.ConfigProto:
    """The eager runtime's configuration (threads, logical devices, soft placement, GPU memory growth) with
    Grappler's function optimizer off.

    With it on, Grappler inlines the signature's functions and lowers a model's loops (an LSTM's while) to TF1
    control flow, which measured up to 1.2-1.6x slower per call than the eager function (the seed LSTM at batch 1
    and 32); off, it ran as fast as the eager call or faster (docs/benchmarks.md, thirteenth session).
    """
    config = config_pb2.ConfigProto()
    config.CopyFrom(context.context().config)
    config.graph_options.rewrite_options.function_optimization = rewriter_config_pb2.RewriterConfig.OFF
    return config


class SavedModelServable:
    """One version of one model on one device, called through `call_path` ("session" or "function").

    With `fallback`, a SavedModel the session path cannot load (the TF1 loader cannot import its graph) is loaded
    through the function path instead, with a warning: `--call-path auto` must not refuse a model that loaded
    before the session path was its default. An explicit `--call-path session` fails the load instead.

    `caller_thread_max_rows` (session path: batches up to that many rows run their ops on the calling thread;
    None = `auto`, timed per bucket) is 0 here and in `ReplicaLoader` unless given: every op on TensorFlow's pools,
    TensorFlow's own behaviour, for the tests and benchmarks that build servables to compare call paths. The server
    always passes its `--caller-thread-max-batch` (default `auto`), and `bench.inprocess.ServedCalls` does the same.
    """

    platform = PLATFORM

    def __init__(
        self,
        path: str | Path,
        device: str | None = None,
        call_path: str = "function",
        fallback: bool = False,
        caller_thread_max_rows: int | None = 0,
    ) -> None:
        if call_path not in ("session", "function"):
            raise ValueError(f"call path must be session or function, got {call_path!r}")
        self.path = Path(path)
        self.device = device
        self.call_path = call_path
        self._caller_thread_max_rows = caller_thread_max_rows
        self._session: tf.compat.v1.Session | None = None
        meta_graph = _meta_graph(self.path)  # no SavedModel there: OSError, which neither path could load
        # What TF Serving's GetModelMetadata reports, kept from the file this version loaded: the file may be
        # replaced or deleted while the version serves, and metadata must describe what is served.
        self.signature_defs: dict[str, meta_graph_pb2.SignatureDef] = dict(meta_graph.signature_def)
        if call_path == "function":
            self.signatures: dict[str, Signature] = self._load_function(meta_graph)
        else:
            try:
                self.signatures = self._load_session(meta_graph)
            except OSError:
                raise  # no SavedModel there: the function path would fail alike
            except Exception as exc:
                if not fallback:
                    raise
                log.warning("%s: the session call path cannot load it (%s: %s); calling it through the function path",
                            self.path, type(exc).__name__, first_line(exc))  # fmt: skip
                self.call_path = "function"
                self.signatures = self._load_function(meta_graph)
        if not self.signatures:
            self.close()
            raise ServingError(ErrorCode.FAILED_PRECONDITION, f"{self.path} has no serving signatures")

    def _load_function(self, meta_graph: meta_graph_pb2.MetaGraphDef) -> dict[str, Signature]:
        # the MetaGraph the session path serves too: tf.saved_model.load refuses to guess among several
        tags = list(meta_graph.meta_info_def.tags)
        with tf.device(self.device) if self.device else contextlib.nullcontext():
            self._loaded = tf.saved_model.load(str(self.path), tags=tags)
        signatures = {}
        for key, fn in self._loaded.signatures.items():
            _args, kwargs = fn.structured_input_signature
            if not all(_dense(value) for value in (*kwargs.values(), *fn.structured_outputs.values())):
                _not_dense(self.path, key)
                continue
            inputs = {name: _spec(name, spec) for name, spec in kwargs.items()}
            outputs = {name: _spec(name, spec) for name, spec in fn.structured_outputs.items()}
            signatures[key] = Signature(key, inputs, outputs, _function_runner(fn, self.device), fn)
        return signatures

    def _load_session(self, meta_graph: meta_graph_pb2.MetaGraphDef) -> dict[str, Signature]:
        graph = tf.Graph()
        session = tf.compat.v1.Session(graph=graph, config=_session_config())
        try:
            placed = graph.device(self.device) if self.device else contextlib.nullcontext()
            with graph.as_default(), placed, deprecation.silence():  # silence: this path is the TF1 loader
                loaded = tf.compat.v1.saved_model.load(
                    session, list(meta_graph.meta_info_def.tags), str(self.path), clear_devices=True
                )
            signatures = {}
            for key, signature in loaded.signature_def.items():
                if key.startswith("__"):  # __saved_model_init_op: run by the loader, not a serving signature
                    continue
                tensors = (*signature.inputs.values(), *signature.outputs.values())
                if not all(info.WhichOneof("encoding") == "name" for info in tensors):  # sparse, ragged
                    _not_dense(self.path, key)
                    continue
                inputs = {name: _info_spec(name, info) for name, info in signature.inputs.items()}
                outputs = {name: _info_spec(name, info) for name, info in signature.outputs.items()}
                label = f"{self.path.parent.name}/{self.path.name} {key} on {self.device or 'the default device'}"
                choice = call_choice.policy(self._caller_thread_max_rows, label)
                run = _SessionSignature(session, signature, choice)
                signatures[key] = Signature(key, inputs, outputs, run)
        except BaseException:
            session.close()
            raise
        self._session = session
        return signatures

    def close(self) -> None:
        """Free the session's graph and variables (the function path's are freed with the object)."""
        session, self._session = self._session, None
        if session is not None:
            session.close()

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

    The batcher gets one runner per device and sends each batch to an idle one. ``close`` (the manager unloads
    the version, after its in-flight requests drained) frees every replica and runs ``on_close`` once (the placer
    takes its devices back).
    """

    platform = PLATFORM

    def __init__(
        self,
        path: str | Path,
        devices: Sequence[str],
        on_close: Callable[[], None] | None = None,
        call_path: str = "function",
        fallback: bool = False,
        caller_thread_max_rows: int | None = 0,
    ) -> None:
        if not devices:
            raise ValueError("at least one device is needed")
        self.path = Path(path)
        self.replicas: list[SavedModelServable] = []
        try:
            for device in devices:
                self.replicas.append(SavedModelServable(path, device, call_path, fallback, caller_thread_max_rows))
        except BaseException:
            for replica in self.replicas:
                replica.close()
            raise
        self.signatures = self.replicas[0].signatures
        self.signature_defs = self.replicas[0].signature_defs
        self.runner_devices = [replica.device or "default" for replica in self.replicas]
        self._on_close = on_close

    def close(self) -> None:
        for replica in self.replicas:
            replica.close()
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close()

    def signature(self, key: str | None = None) -> Signature:
        return self.replicas[0].signature(key)

    def runners(self, key: str) -> list[Runner]:
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
            self._model = SavedModelServable(path, call_path="function")  # strategy.run needs the function
        self.signatures = self._model.signatures
        self.signature_defs = self._model.signature_defs
        self.runner_devices = ["mirrored:" + ",".join(devices)]

    def signature(self, key: str | None = None) -> Signature:
        return self._model.signature(key)

    def runners(self, key: str) -> list[Any]:
        return [self._sharded_runner(self.signatures[key])]

    def _sharded_runner(self, signature: Signature) -> Any:
        strategy = self.strategy
        shards = strategy.num_replicas_in_sync
        fn = signature.fn

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
    loads one copy under the device set's strategy (MirroredStrategy, or TPUStrategy on a TPU). Replicas are
    called through ``call_path`` (resolved from ``auto`` by the device kind; under ``auto``, a model the session
    path cannot load falls back to the function); mirrored copies through the function.
    """

    def __init__(self, devices: DeviceSet, call_path: str = "auto", caller_thread_max_rows: int | None = 0) -> None:
        self.placer = Placer(devices.names)
        self.caller_thread_max_rows = caller_thread_max_rows
        self._mirrored_strategy = devices.mirrored_strategy
        self.call_path = resolve_call_path(call_path, devices.kind)
        self._fallback = call_path == "auto"  # auto may fall back to the function path per model; explicit may not

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
            release = functools.partial(self.placer.release, chosen)
            return ReplicatedServable(
                path, chosen, release, self.call_path, self._fallback, self.caller_thread_max_rows
            )
        except BaseException:
            self.placer.release(chosen)
            raise
