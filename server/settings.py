"""Server settings: one typed object, built from flags (and KERVE_* environment variables), validated once."""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import event_loop, otel, thread_priority
from .batcher import AUTO, BatchingConfig
from .call_choice import AUTO_MAX_ROWS
from .event_loop import EVENT_LOOPS
from .types import CALL_PATHS


@dataclass(frozen=True)
class ServerSettings:
    model_repository: Path
    host: str = "0.0.0.0"
    port: int = 8500
    metrics_port: int = 8501  # 0 disables the Prometheus endpoint
    workers: int | None = None  # None: workers_for(...) once the devices are known
    grace_s: float = 15.0
    max_connection_age_s: float = 0.0  # >0: close connections this old (with a grace) so clients re-resolve DNS
    max_message_bytes: int = 256 * 1024 * 1024
    tls_cert: Path | None = None  # PEM; with tls_key the gRPC port speaks TLS
    tls_key: Path | None = None
    tls_client_ca: Path | None = None  # PEM CA bundle: require and verify client certificates (mutual TLS)
    auth_token_file: Path | None = None  # accepted bearer tokens, one per line
    batching: BatchingConfig | None = BatchingConfig(batches_per_replica=AUTO)  # None turns dynamic batching off
    devices: str = "auto"  # auto | cpu | gpu | tpu
    cpu_replicas: int = 1  # >1 splits the CPU into that many logical devices, one replica each
    intra_op_threads: int = 0  # TF threads per op; 0: usable cores (server/cpus.py) // (cpu_replicas * processes)
    inter_op_threads: int = 0  # TF threads running independent ops; 0: usable cores
    tf_thread_spinning: bool = False  # TF's pool threads spin-wait for work between tasks (server/devices.py)
    model_thread_nice: int | None = None  # nice increment of the model threads (server/thread_priority.py); None: auto
    call_path: str = "auto"  # session | function | auto (session on CPU): how models are called (server/model.py)
    caller_thread_max_batch: int | None = None  # session path: batches up to this many rows run ops on the calling
    # thread; None (auto): each replica times both ways on its small batches and keeps the faster (call_choice.py)
    poll_interval_s: float = 30.0  # seconds between repository polls; 0 disables (model_control poll)
    model_control: str = "poll"  # poll | explicit (load/unload only through the repository RPCs)
    load_models: tuple[str, ...] | None = None  # explicit control: the models loaded at start (None: all)
    processes: int = 1  # >1: that many server processes share the port (server/processes.py), children included
    process_index: int | None = None  # set by the supervisor in each of those processes, None when standalone
    group_fds: tuple[int, int] | None = None  # (loaded, go) pipe ends of the supervisor's start barrier
    gil_switch_interval_us: int = 0  # >0: sys.setswitchinterval for this process; 0 keeps Python's 5000 us
    inline_call_max_s: float = 0.0  # serial traffic: 1-row calls this fast run on the event loop (serial_traffic.py)
    event_loop: str = "asyncio"  # asyncio | uvloop | auto (uvloop when installed)
    gc_freeze: bool = True  # one full collection per model change, then freeze the survivors (server/heap.py)
    shared_memory: bool = True  # Triton's system shared memory RPCs and tensors (server/shared_memory.py)
    trace_file: Path | None = None  # where traces go (server/trace.py); None: the log
    trace_level: str = "OFF"  # OFF | TIMESTAMPS | TENSORS | TIMESTAMPS,TENSORS at start; TraceSetting changes it
    trace_rate: int = 1000  # trace every Nth request of a model
    trace_mode: str = "triton"  # triton (Triton's JSON) | opentelemetry (spans over OTLP/HTTP: server/otel.py)
    trace_otel_url: str | None = None  # OTLP/HTTP traces endpoint; None: OTEL_EXPORTER_OTLP_* or localhost:4318
    trace_otel_resource: tuple[str, ...] = ()  # KEY=VALUE resource attributes
    response_cache_bytes: int = 0  # the response cache's size (server/response_cache.py); 0: no cache
    triton_metrics: bool = False  # also export Triton's nv_inference_* metrics (server/triton_metrics.py)

    def __post_init__(self) -> None:
        if not (0 <= self.port <= 65535) or not (0 <= self.metrics_port <= 65535):
            raise ValueError(f"ports must be in 0..65535, got port={self.port} metrics_port={self.metrics_port}")
        if self.metrics_port and self.metrics_port == self.port:
            raise ValueError("--metrics-port must differ from --port")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {self.workers}")
        if self.devices not in ("auto", "cpu", "gpu", "tpu"):
            raise ValueError(f"--devices must be auto, cpu, gpu or tpu, got {self.devices!r}")
        if self.cpu_replicas < 1:
            raise ValueError(f"--cpu-replicas must be >= 1, got {self.cpu_replicas}")
        for flag, threads in (
            ("--intra-op-threads", self.intra_op_threads),
            ("--inter-op-threads", self.inter_op_threads),
        ):
            if threads < 0:
                raise ValueError(f"{flag} must be >= 0, got {threads}")
        if self.call_path not in CALL_PATHS:
            raise ValueError(f"--call-path must be one of {', '.join(CALL_PATHS)}, got {self.call_path!r}")
        if self.caller_thread_max_batch is not None and self.caller_thread_max_batch < 0:
            raise ValueError(f"--caller-thread-max-batch must be >= 0, got {self.caller_thread_max_batch}")
        if self.model_thread_nice is not None and not (0 <= self.model_thread_nice <= 19):
            raise ValueError(f"--model-thread-nice must be auto or 0..19, got {self.model_thread_nice}")
        if not (self.poll_interval_s >= 0):  # also rejects NaN
            raise ValueError(f"--poll-interval must be >= 0 seconds, got {self.poll_interval_s}")
        if self.model_control not in ("poll", "explicit"):
            raise ValueError(f"--model-control must be poll or explicit, got {self.model_control!r}")
        if self.processes < 1:
            raise ValueError(f"--processes must be >= 1, got {self.processes}")
        if self.load_models is not None and self.model_control != "explicit":
            raise ValueError("--load-model needs --model-control explicit (poll mode serves the whole repository)")
        event_loop.resolve(self.event_loop)  # unknown, or uvloop without uvloop installed: ValueError
        levels = self.trace_level.split(",")
        if not set(levels) <= {"TIMESTAMPS", "TENSORS"} and levels != ["OFF"]:
            raise ValueError(f"--trace-level must be OFF, or TIMESTAMPS and/or TENSORS (comma-separated), got "
                             f"{self.trace_level!r}")  # fmt: skip
        if self.trace_mode not in ("triton", "opentelemetry"):
            raise ValueError(f"--trace-mode must be triton or opentelemetry, got {self.trace_mode!r}")
        if self.trace_rate < (0 if self.trace_mode == "opentelemetry" else 1):
            raise ValueError(f"--trace-rate must be >= 1 (>= 0 with --trace-mode opentelemetry: 0 traces only "
                             f"requests that carry a traceparent), got {self.trace_rate}")  # fmt: skip
        if self.trace_mode != "opentelemetry" and (self.trace_otel_url or self.trace_otel_resource):
            raise ValueError("--trace-otel-url and --trace-otel-resource need --trace-mode opentelemetry")
        if self.trace_mode == "opentelemetry" and self.trace_file is not None:
            raise ValueError("--trace-file is for --trace-mode triton (opentelemetry sends spans to --trace-otel-url)")
        otel.parse_resource(self.trace_otel_resource)  # KEY=VALUE each, or ValueError
        if self.response_cache_bytes < 0:
            raise ValueError(f"--response-cache-mb must be >= 0, got {self.response_cache_bytes / 2**20:g}")
        if self.gil_switch_interval_us < 0:
            raise ValueError(f"--gil-switch-interval-us must be >= 0, got {self.gil_switch_interval_us}")
        if not (0 <= self.inline_call_max_s <= 1):  # also rejects NaN
            raise ValueError(f"--inline-call-max-ms must be in 0..1000, got {self.inline_call_max_s * 1000:g}")
        if not self.grace_s >= 0 or math.isinf(self.grace_s):  # NaN fails every comparison
            raise ValueError(f"--grace-period must be a number of seconds >= 0, got {self.grace_s}")
        if not self.max_connection_age_s >= 0 or math.isinf(self.max_connection_age_s):
            age = self.max_connection_age_s
            raise ValueError(f"--max-connection-age-s must be a number of seconds >= 0, got {age}")
        if not self.model_repository.is_dir():
            raise ValueError(f"--model-repository {self.model_repository} is not a directory")
        if not 1 <= self.max_message_bytes < 2**31:  # gRPC's limits are 32-bit signed
            raise ValueError(f"--max-message-mb must be from 1 to 2047, got {self.max_message_bytes // (1024 * 1024)}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")
        for flag, path in (
            ("--tls-cert", self.tls_cert),
            ("--tls-key", self.tls_key),
            ("--tls-client-ca", self.tls_client_ca),
            ("--auth-token-file", self.auth_token_file),
        ):
            if path is not None and not path.is_file():
                raise ValueError(f"{flag} {path} is not a file")


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"KERVE_{name}", default)


def _env_flag(name: str, default: bool) -> bool:
    text = _env(name)
    if text is None or text == "":
        return default
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"KERVE_{name} must be 1/0 (true/false, yes/no, on/off), got {text!r}")


def _flag(given: bool | None, name: str, default: bool) -> bool:
    """A boolean flag: given on the command line (`--x` / `--no-x`), else `KERVE_<name>`, else the default."""
    return _env_flag(name, default) if given is None else given


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model-repository",
        type=Path,
        default=_env("MODEL_REPOSITORY") or None,  # empty: unset (not the current directory)
        required=not _env("MODEL_REPOSITORY"),
        help="directory holding <model>/<version>/saved_model.pb (env KERVE_MODEL_REPOSITORY)",
    )
    parser.add_argument("--host", default=_env("HOST", "0.0.0.0"), help="address to bind (default 0.0.0.0)")
    parser.add_argument("--port", type=int, default=_env("PORT") or "8500", help="gRPC port (8500)")
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=_env("METRICS_PORT") or "8501",
        help="Prometheus port; 0 = off",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="inference threads (default: the larger of the cores, 2, and devices x --batches-per-replica)",
    )
    parser.add_argument("--grace-period", type=float, default=15.0, help="seconds to drain on SIGTERM")
    parser.add_argument(
        "--max-connection-age-s",
        type=float,
        default=_env("MAX_CONNECTION_AGE_S") or "0",
        help="close client connections after this many seconds (no new calls on them; calls and streams in flight "
        "finish first), so round_robin clients re-resolve DNS and find pods added by a scale-up; 0 = never "
        "(env KERVE_MAX_CONNECTION_AGE_S)",
    )
    parser.add_argument(
        "--poll-interval",
        type=float,
        default=_env("POLL_INTERVAL") or "30",
        help="seconds between model repository polls for new/removed versions and config.yaml changes; "
        "0 = off (env KERVE_POLL_INTERVAL)",
    )
    parser.add_argument(
        "--model-control",
        choices=["poll", "explicit"],
        default=_env("MODEL_CONTROL", "poll"),
        help="poll: follow the repository; explicit: load what is there at start (or the --load-model ones), then "
        "change models only through RepositoryModelLoad/Unload and HandleReloadConfigRequest (env KERVE_MODEL_CONTROL)",
    )
    parser.add_argument(
        "--load-model",
        action="append",
        default=None,
        metavar="NAME",
        help="with --model-control explicit: load only this model at start (repeatable; '*' = all, the default), "
        "the others wait for RepositoryModelLoad, as Triton's --load-model (env KERVE_LOAD_MODELS, comma-separated)",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=_env("PROCESSES") or "1",
        help="server processes sharing the gRPC port (SO_REUSEPORT), each with its own event loop and model "
        "replicas: Python gRPC uses about one core per process (env KERVE_PROCESSES)",
    )
    parser.add_argument(
        "--inline-call-max-ms",
        type=float,
        default=_env("INLINE_CALL_MAX_MS") or "0",
        help="when requests arrive one at a time (each after the previous answer), run a batched model's batch-1 "
        "call whose recent calls took at most this long on the event loop thread instead of a worker, saving two "
        "thread hops of latency; never under concurrent load; 0 = off (env KERVE_INLINE_CALL_MAX_MS)",
    )
    parser.add_argument(
        "--gil-switch-interval-us",
        type=int,
        default=_env("GIL_SWITCH_INTERVAL_US") or "0",
        help="longest a Python thread keeps the GIL while another waits for it (sys.setswitchinterval); the event "
        "loop and the inference threads hand requests to each other, so a shorter interval cuts latency; "
        "0 = Python's default, 5000 (env KERVE_GIL_SWITCH_INTERVAL_US)",
    )
    parser.add_argument(
        "--event-loop",
        choices=EVENT_LOOPS,
        default=_env("EVENT_LOOP", "asyncio"),
        help="the server's event loop: asyncio's own (default) or uvloop (libuv); auto = uvloop when installed "
        "(env KERVE_EVENT_LOOP)",
    )
    parser.add_argument(
        "--gc-freeze",
        action=argparse.BooleanOptionalAction,
        default=None,  # None: KERVE_GC_FREEZE, else on
        help="after each model load or unload, run one full garbage collection and exclude what survives (the "
        "models, TensorFlow) from later ones (gc.freeze), so Python's full passes, 160-250 ms stalls of the event "
        "loop on a 2-core VM, do not land on requests (default on; env KERVE_GC_FREEZE=0 turns it off)",
    )
    parser.add_argument(
        "--shared-memory",
        action=argparse.BooleanOptionalAction,
        default=None,  # None: KERVE_SHARED_MEMORY, else on
        help="serve Triton's system shared memory extension: clients on this host register regions of POSIX shared "
        "memory objects (/dev/shm) and pass tensors through them (default on, as in Triton; --no-shared-memory or "
        "env KERVE_SHARED_MEMORY=0 answers those RPCs FAILED_PRECONDITION and such tensors INVALID_ARGUMENT)",
    )
    parser.add_argument(
        "--trace-file",
        type=Path,
        default=_env("TRACE_FILE"),
        help="write request traces (Triton's JSON, see TraceSetting) to this file; default: one JSON line per trace "
        "in the log. A --processes group's process N writes <file>.pN (env KERVE_TRACE_FILE)",
    )
    parser.add_argument(
        "--trace-level",
        default=_env("TRACE_LEVEL", "OFF"),
        help="trace requests from the start (TIMESTAMPS, TENSORS or TIMESTAMPS,TENSORS) or not until the "
        "TraceSetting RPC says so (OFF, default; env KERVE_TRACE_LEVEL)",
    )
    parser.add_argument(
        "--trace-rate",
        type=int,
        default=_env("TRACE_RATE") or "1000",
        help="trace every Nth request of a model (1000; env KERVE_TRACE_RATE); with --trace-mode opentelemetry, 0 "
        "traces only the requests that carry a W3C traceparent (those are traced at any rate)",
    )
    parser.add_argument(
        "--trace-mode",
        choices=("triton", "opentelemetry"),
        default=_env("TRACE_MODE", "triton"),
        help="triton: Triton's JSON traces (--trace-file or the log); opentelemetry: OpenTelemetry spans over "
        "OTLP/HTTP to --trace-otel-url, joining the trace of a request that carries a traceparent "
        "(env KERVE_TRACE_MODE)",
    )
    parser.add_argument(
        "--trace-otel-url",
        default=_env("TRACE_OTEL_URL"),
        help="OTLP/HTTP traces endpoint, e.g. http://otel-collector:4318/v1/traces (default: "
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, else OTEL_EXPORTER_OTLP_ENDPOINT, else http://localhost:4318/v1/traces; "
        "env KERVE_TRACE_OTEL_URL)",
    )
    parser.add_argument(
        "--trace-otel-resource",
        action="append",
        metavar="KEY=VALUE",
        default=None,
        help="a resource attribute of the spans, repeatable (default service.name=kerve; OTEL_RESOURCE_ATTRIBUTES "
        "adds more)",
    )
    parser.add_argument(
        "--response-cache-mb",
        type=float,
        default=_env("RESPONSE_CACHE_MB") or "0",
        help="MiB for Triton's response cache: models whose config.yaml sets response_cache: true answer repeated "
        "requests from it without running (0, default: no cache; env KERVE_RESPONSE_CACHE_MB). Per process",
    )
    parser.add_argument(
        "--triton-metrics",
        action=argparse.BooleanOptionalAction,
        default=None,  # None: KERVE_TRITON_METRICS, else off
        help="also export Triton's per-model metrics under Triton's names (nv_inference_request_success, "
        "nv_inference_queue_duration_us, ...), so dashboards and alerts made for Triton work unchanged "
        "(env KERVE_TRITON_METRICS=1)",
    )
    # set by the --processes supervisor in its children (server/processes.py)
    parser.add_argument("--process-index", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--group-fds", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--max-message-mb", type=int, default=256, help="max gRPC message size in MiB")
    parser.add_argument(
        "--tls-cert", type=Path, default=_env("TLS_CERT"), help="PEM certificate chain: serve TLS (env KERVE_TLS_CERT)"
    )
    parser.add_argument("--tls-key", type=Path, default=_env("TLS_KEY"), help="PEM private key (env KERVE_TLS_KEY)")
    parser.add_argument(
        "--tls-client-ca",
        type=Path,
        default=_env("TLS_CLIENT_CA"),
        help="PEM CA bundle: require client certificates signed by it, mutual TLS (env KERVE_TLS_CLIENT_CA)",
    )
    parser.add_argument(
        "--auth-token-file",
        type=Path,
        default=_env("AUTH_TOKEN_FILE"),
        help="file of accepted bearer tokens, one per line; calls need 'authorization: Bearer <token>' "
        "metadata, health checks stay open (env KERVE_AUTH_TOKEN_FILE)",
    )
    _add_batching_arguments(parser)


def _add_batching_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("dynamic batching and devices (a model's config.yaml can override batching)")
    group.add_argument(
        "--batching", action=argparse.BooleanOptionalAction, default=True, help="dynamic batching (default on)"
    )
    group.add_argument("--max-batch-size", type=int, default=64, help="rows per model execution (64)")
    group.add_argument(
        "--batch-timeout-us", type=int, default=1000, help="longest a request waits for others to join its batch"
    )
    group.add_argument(
        "--allowed-batch-sizes", default="", help="comma-separated sizes to pad batches up to (default: TPU only)"
    )
    group.add_argument("--max-queued", type=int, default=4096, help="queued rows per model before RESOURCE_EXHAUSTED")
    group.add_argument(
        "--batches-per-replica",
        type=_batches_per_replica,
        default=_env("BATCHES_PER_REPLICA") or AUTO,
        help="batches one model replica runs at once (TF Serving's --num_batch_threads per model): 2 uses the cores "
        "a model's call leaves idle, at the cost of smaller batches; auto (default): 1 or 2 on CPU replicas, "
        "whichever each model's batcher measures serving more, 1 on GPU and TPU (env KERVE_BATCHES_PER_REPLICA)",
    )
    group.add_argument("--devices", default="auto", choices=["auto", "cpu", "gpu", "tpu"], help="serving devices")
    group.add_argument(
        "--cpu-replicas",
        type=int,
        default=_env("CPU_REPLICAS") or "1",
        help="logical CPU devices, one model replica each, so that batches run side by side; with the default "
        "--intra-op-threads they split the cores between them (env KERVE_CPU_REPLICAS)",
    )
    group.add_argument(
        "--intra-op-threads",
        type=int,
        default=_env("INTRA_OP_THREADS") or "0",
        help="TensorFlow threads per op (TF Serving's --tensorflow_intra_op_parallelism); 0 = one per usable core "
        "(affinity capped by a container CPU quota), or cores / (--cpu-replicas x --processes) on CPU when that is "
        "> 1 (env KERVE_INTRA_OP_THREADS)",
    )
    group.add_argument(
        "--inter-op-threads",
        type=int,
        default=_env("INTER_OP_THREADS") or "0",
        help="TensorFlow threads for independent ops (TF Serving's --tensorflow_inter_op_parallelism); "
        "0 = one per usable core (env KERVE_INTER_OP_THREADS)",
    )
    group.add_argument(
        "--tf-thread-spinning",
        action=argparse.BooleanOptionalAction,
        default=None,  # None: KERVE_TF_THREAD_SPINNING, else off
        help="let TensorFlow's pool threads spin-wait for the next task before they sleep (TensorFlow's own "
        "default): a faster hand-off between a model's ops, paid in CPU that the event loop, gRPC and other batches "
        "need, and that counts against a container's CPU quota. Off by default (ConfigProto.experimental."
        "disable_thread_spinning); on helps a model whose call is a long chain of small ops (an LSTM's steps) at "
        "low concurrency (env KERVE_TF_THREAD_SPINNING)",
    )
    group.add_argument(
        "--model-thread-nice",
        type=_nice,
        default=_env("MODEL_THREAD_NICE", "auto") or "auto",  # a string: argparse converts and checks it
        help="how far below the event loop the threads that run models are scheduled (Linux nice increment for "
        "TensorFlow's pools and the inference workers), so a waking model thread does not preempt the loop every "
        f"request passes through; auto = {thread_priority.AUTO_NICE} on 2+ usable cores, 0 (off) on one "
        "(env KERVE_MODEL_THREAD_NICE)",
    )
    group.add_argument(
        "--call-path",
        choices=CALL_PATHS,
        default=_env("CALL_PATH", "auto") or "auto",
        help="how a model is called: session (the SavedModel's graph in a TF1 Session, one Session::RunCallable "
        "per batch, as TF Serving does; the least Python per call), function (an eager call of the signature's "
        "ConcreteFunction); auto = session on CPU, function on GPU and TPU; mirrored models always use function "
        "(env KERVE_CALL_PATH)",
    )
    group.add_argument(
        "--caller-thread-max-batch",
        type=_auto_or_count,
        default=_env("CALLER_THREAD_MAX_BATCH", "auto") or "auto",  # a string: argparse converts and checks it
        help="session call path: a batch of at most this many rows runs its ops on the thread that calls the "
        "model instead of handing each to TensorFlow's inter-op pool (RunOptions.inter_op_thread_pool = -1), "
        "which saves a thread hop per op on small batches but runs independent ops one after another; auto = "
        f"each replica times both ways on its batches of up to {AUTO_MAX_ROWS} rows (per bucket 1, 2, 3-4, ...) "
        "and keeps the faster (default); 0 = off, every op on the pool (env KERVE_CALLER_THREAD_MAX_BATCH)",
    )


def _auto_or_int(expected: str) -> Callable[[str], int | None]:
    """An argparse type: `auto` -> None, else an integer; the usage error names what is `expected` beside auto."""

    def parse(text: str) -> int | None:
        if text == "auto":
            return None
        try:
            return int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected auto or {expected}, got {text!r}") from None

    return parse


_auto_or_count = _auto_or_int("a number of rows >= 0")
_nice = _auto_or_int("an integer 0..19")


def batching_from_args(args: argparse.Namespace) -> BatchingConfig | None:
    if not args.batching:
        return None
    sizes = tuple(int(x) for x in args.allowed_batch_sizes.split(",") if x.strip())
    return BatchingConfig(
        max_batch_size=args.max_batch_size,
        max_queue_delay_s=args.batch_timeout_us / 1e6,
        allowed_batch_sizes=sizes,
        max_queued=args.max_queued,
        batches_per_replica=args.batches_per_replica,
    )


def _path(value: str | Path | None) -> Path | None:
    return None if value is None or str(value) == "" else Path(value)


def _batches_per_replica(value: str) -> int | str:
    """`auto` or a number (checked by BatchingConfig, whose message names the setting)."""
    if value.strip().lower() == AUTO:
        return AUTO
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or {AUTO!r}, got {value!r}") from None


def batch_slots(settings: ServerSettings, devices: int) -> int:
    """The most batches a model's replicas run at once under the server's flags: devices x --batches-per-replica."""
    return devices * (settings.batching.most_batches_per_replica if settings.batching is not None else 1)


def workers_for(settings: ServerSettings, devices: int) -> int:
    """The inference threads: --workers, or by default one per core (at least two) and enough for every batch slot
    the server's flags give its replicas, so that asking for batches at once does not also take a second flag."""
    if settings.workers is not None:
        return settings.workers
    return max(2, os.cpu_count() or 2, batch_slots(settings, devices))


def from_args(args: argparse.Namespace) -> ServerSettings:
    return ServerSettings(
        model_repository=Path(args.model_repository),
        host=args.host.strip("[]"),  # an IPv6 address with or without brackets: kept bare, bracketed where needed
        port=args.port,
        metrics_port=args.metrics_port,
        workers=args.workers,
        grace_s=args.grace_period,
        max_connection_age_s=args.max_connection_age_s,
        max_message_bytes=args.max_message_mb * 1024 * 1024,
        tls_cert=_path(args.tls_cert),
        tls_key=_path(args.tls_key),
        tls_client_ca=_path(args.tls_client_ca),
        auth_token_file=_path(args.auth_token_file),
        batching=batching_from_args(args),
        devices=args.devices,
        cpu_replicas=args.cpu_replicas,
        intra_op_threads=args.intra_op_threads,
        inter_op_threads=args.inter_op_threads,
        tf_thread_spinning=_flag(args.tf_thread_spinning, "TF_THREAD_SPINNING", False),
        model_thread_nice=args.model_thread_nice,
        call_path=args.call_path,
        caller_thread_max_batch=args.caller_thread_max_batch,
        poll_interval_s=args.poll_interval,
        model_control=args.model_control,
        load_models=_load_models(args.load_model),
        processes=args.processes,
        process_index=args.process_index,
        group_fds=_fd_pair(args.group_fds),
        gil_switch_interval_us=args.gil_switch_interval_us,
        inline_call_max_s=args.inline_call_max_ms / 1000,
        event_loop=args.event_loop,
        gc_freeze=_flag(args.gc_freeze, "GC_FREEZE", True),
        shared_memory=_flag(args.shared_memory, "SHARED_MEMORY", True),
        trace_file=_path(args.trace_file),
        trace_level=args.trace_level,
        trace_rate=args.trace_rate,
        trace_mode=args.trace_mode,
        trace_otel_url=args.trace_otel_url or None,
        trace_otel_resource=tuple(args.trace_otel_resource or ()),
        response_cache_bytes=_cache_bytes(args.response_cache_mb),
        triton_metrics=_flag(args.triton_metrics, "TRITON_METRICS", False),
    )


def _cache_bytes(megabytes: float) -> int:
    if not math.isfinite(megabytes):
        raise ValueError(f"--response-cache-mb must be a number of MiB >= 0, got {megabytes}")
    return int(megabytes * 2**20)


def _load_models(flags: list[str] | None) -> tuple[str, ...] | None:
    """--load-model values, else KERVE_LOAD_MODELS; None (every model) when neither names any or one says '*'."""
    names = flags if flags is not None else [n for n in (_env("LOAD_MODELS", "") or "").split(",") if n.strip()]
    names = [n.strip() for n in names]
    if not names or "*" in names:
        return None
    return tuple(dict.fromkeys(names))


def _fd_pair(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    loaded, go = (int(fd) for fd in text.split(","))
    return loaded, go


def apply_gil_switch_interval(interval_us: int) -> None:
    """The event loop and the inference threads share one GIL, and a thread that wants it waits until the holder
    blocks or the switch interval runs out; with Python's 5 ms, a batch-1 request can wait milliseconds at its
    hand-offs between them (measured in docs/benchmarks.md)."""
    if interval_us > 0:
        sys.setswitchinterval(interval_us / 1e6)
