"""Assemble and run the server: one grpc.aio port for V2 + health + reflection, metrics on another.

Lifecycle: bind and start (live, not ready) -> load models -> health SERVING (ready) -> on SIGTERM/SIGINT
health NOT_SERVING, stop accepting, let in-flight RPCs finish within the grace period -> exit 0.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2
from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

from kerve.protos import grpc_service_pb2 as pb
from kerve.protos import grpc_service_pb2_grpc as pb_grpc

from . import (
    event_loop,
    group_settings,
    heap,
    host_metrics,
    processes,
    tfs_service,
    thread_names,
    thread_priority,
    warmup,
)
from .cpus import usable_cores
from .devices import configure_devices, spinning_text, thread_counts
from .group_control import JOURNAL_READ_S, GroupChanges, ModelControl
from .group_settings import SettingsJournal
from .group_stats import GroupStats
from .inference import InferenceEngine
from .log_settings import LogSettings
from .manager import ModelManager, VersionState
from .metrics import Metrics
from .model import ReplicaLoader
from .otel import OtelExporter, parse_resource
from .response_cache import ResponseCache
from .security import SecurityConfigError, server_credentials, server_interceptors
from .settings import ServerSettings, apply_gil_switch_interval, batch_slots, workers_for
from .shared_memory import SystemSharedMemory
from .trace import Tracer
from .triton_metrics import TritonMetrics
from .v2_service import V2Servicer

log = logging.getLogger("kerve.server")
METRICS_PUSH_S = 1.0  # how far a --processes group's /metrics may lag its processes (one process: not at all)


class StartupError(Exception):
    """The server cannot start as configured (its port is taken, say); reported in one line, exit code 2."""


V2_SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name


def _reflection_pool() -> descriptor_pool.DescriptorPool:
    """Our protos live in a private pool (see tools/gen_protos.py); reflection needs every served file, and the
    TF Serving ones bring their TensorFlow and google.protobuf imports along (added first, once each)."""
    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()

    def add(file: Any) -> None:
        if file.name not in added:
            added.add(file.name)
            for dependency in file.dependencies:
                add(dependency)
            pool.AddSerializedFile(file.serialized_pb)

    for file in (pb.DESCRIPTOR, health_pb2.DESCRIPTOR, reflection_pb2.DESCRIPTOR, *tfs_service.PROTO_FILES):
        add(file)
    return pool


NO_GRACE_LIMIT_MS = 2**31 - 1  # gRPC's "infinite" for its millisecond options


def _connection_age_options(age_s: float) -> list[tuple[str, int]]:
    """An old connection gets GOAWAY (new calls go to a new connection, after a DNS re-resolve) but is never cut
    under a call: with a bounded grace, gRPC closes it at age + grace, which killed every long-lived
    ModelStreamInfer stream, and the calls pending on it, every few minutes."""
    if age_s <= 0:
        return []
    return [("grpc.max_connection_age_ms", int(age_s * 1000)), ("grpc.max_connection_age_grace_ms", NO_GRACE_LIMIT_MS)]


def _start_worker(nice: int) -> None:
    """An inference worker's first act: its name at the OS level, then its priority below the loop's."""
    thread_names.name_current_thread()
    thread_priority.lower_current_thread(nice)


class KerveServer:
    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        # the threads that run models (these workers, TF's pools) yield the cores to the event loop first
        nice = thread_priority.resolve(settings.model_thread_nice, usable_cores())
        # before any model loads: TensorFlow fixes its device list when its runtime starts
        self.devices = configure_devices(
            settings.devices,
            settings.cpu_replicas,
            settings.intra_op_threads,
            settings.inter_op_threads,
            processes=settings.processes,
            spinning=settings.tf_thread_spinning,
        )
        # TF's threads so far (the rest start in the workers and inherit their priority); gRPC's start later
        thread_priority.lower_other_threads(nice)
        if thread_priority.supported():
            log.info("model threads' nice: +%d relative to the event loop", nice)
        names = ", ".join(self.devices.names)
        workers = workers_for(settings, len(self.devices.names))
        log.info("serving on %d %s device(s): %s; %d inference workers", len(self.devices.names), self.devices.kind,
                 names, workers)  # fmt: skip
        slots = batch_slots(settings, len(self.devices.names))
        if workers < slots:
            log.warning("--workers %d runs fewer batches at once than the %d a model's replicas take "
                        "(devices x --batches-per-replica): raise --workers", workers, slots)  # fmt: skip
        self.executor = ThreadPoolExecutor(
            workers, thread_name_prefix="kerve-infer", initializer=_start_worker, initargs=(nice,)
        )
        log.info("TensorFlow threads per op: %d, for independent ops: %d (0: one per core); between tasks they %s",
                 *thread_counts(), spinning_text())  # fmt: skip
        loader = ReplicaLoader(self.devices, settings.call_path, settings.caller_thread_max_batch)
        log.info("models are called through the %s path (--call-path %s)", loader.call_path, settings.call_path)
        if settings.caller_thread_max_batch and loader.call_path != "session":
            log.warning("--caller-thread-max-batch is for the session call path; the %s path ignores it",
                        loader.call_path)  # fmt: skip
        self.stopping = threading.Event()  # set on SIGTERM: a load in a worker thread stops warming up
        self.manager = ModelManager(
            settings.model_repository,
            loader,
            self.executor,
            self.metrics,
            warmup=functools.partial(warmup.replay, stop=self.stopping),
            control=settings.model_control,
            after_change=heap.settle if settings.gc_freeze else None,
        )
        self.tracer = Tracer(_trace_file(settings), settings.trace_level, settings.trace_rate, _otel(settings))
        cache = ResponseCache(settings.response_cache_bytes) if settings.response_cache_bytes else None
        self.engine = InferenceEngine(
            self.manager,
            self.executor,
            self.metrics,
            settings.batching,
            self.devices.pad_batches,
            self.tracer,
            cache,
            inline_call_max_s=settings.inline_call_max_s,
            workers=workers,
        )
        self.manager.forget = self.engine.forget
        self.manager.check_config = self.engine.check_config
        self.manager.has_response_cache = cache is not None
        if settings.triton_metrics:
            self.metrics.add_pusher(TritonMetrics(self.metrics.registry, self.manager.snapshot).update)
            if host_metrics.available():  # nv_cpu_*: Linux's /proc
                self.metrics.add_pusher(host_metrics.HostMetrics(self.metrics.registry).update)
        self.health = health.aio.HealthServicer()
        self.draining = False
        self.port = 0
        self._metrics_pusher: asyncio.Task[None] | None = None
        self._journal_reader: asyncio.Task[None] | None = None
        self._stats_publisher: asyncio.Task[None] | None = None
        options = [
            ("grpc.max_send_message_length", settings.max_message_bytes),
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            # off when standalone, so a second server on a taken port fails instead of silently sharing it;
            # on for the processes of one --processes group, which share the port on purpose
            ("grpc.so_reuseport", 0 if settings.process_index is None else 1),
            # accept client keepalive pings (kerve.client keepalive, at least 10 s apart) on idle connections too
            ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
            *_connection_age_options(settings.max_connection_age_s),
        ]
        # read certificates, keys and tokens now, so a bad file fails the start before the port opens
        self.credentials = server_credentials(settings.tls_cert, settings.tls_key, settings.tls_client_ca)
        self.server = grpc.aio.server(options=options, interceptors=server_interceptors(settings.auth_token_file))
        self.shared_memory = SystemSharedMemory() if settings.shared_memory else None
        logs = LogSettings(log_format(settings.process_index))
        self.journal = _journal(settings)
        # a --processes group's process shares its ModelStatistics counts with the others, beside the journal
        self.group_stats = (
            GroupStats(self.journal.path.parent, self.journal.origin) if self.journal is not None else None
        )
        group = GroupChanges(self.journal, settings.processes) if self.journal is not None else None
        control = ModelControl(self.manager, group)
        v2 = V2Servicer(
            self.manager,
            self.engine,
            self.ready,
            self.shared_memory,
            logs,
            len(self.devices.names),
            self.group_stats,
            control,
        )
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(v2, self.server)
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            tfs_service.PredictionServicer(self.manager, self.engine), self.server
        )
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(
            tfs_service.ModelServicer(self.manager, control), self.server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            [V2_SERVICE, *tfs_service.SERVICES, health.SERVICE_NAME, reflection.SERVICE_NAME],
            self.server,
            pool=_reflection_pool(),
        )

    def _transport(self) -> str:
        if self.credentials is None:
            return "plaintext"
        return "mutual TLS (client certificates required)" if self.settings.tls_client_ca else "TLS"

    def _auth(self) -> str:
        return "none" if self.settings.auth_token_file is None else "bearer token (health checks exempt)"

    def ready(self) -> bool:
        return self.manager.initial_load_done and not self.draining

    async def _set_health(self, status: int) -> None:
        for service in ("", V2_SERVICE, *tfs_service.SERVICES):
            await self.health.set(service, status)

    async def start(self) -> None:
        grouped = self.settings.process_index is not None
        if grouped:
            # One of several processes on the port: the kernel hands each new connection to any process that
            # listens, and a connection stays where it landed. So every process loads first and all start
            # listening together: no connection lands on a loading process, none piles onto the first one ready.
            await self.manager.load_all(self.settings.load_models)
            if self.settings.group_fds is not None:
                await processes.wait_for_group(*self.settings.group_fds, self.settings.process_index or 0)
        await self._listen()
        if not grouped:
            await self.manager.load_all(self.settings.load_models)
        self.manager.start_polling(self.settings.poll_interval_s)
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        thread_names.name_threads()  # gRPC's poller, the metrics endpoint's: told apart by top -H, ps -L, perf
        ready = [f"{e.model}:{e.version}" for e in self.manager.entries() if e.servable is not None]
        log.info("ready on port %d serving %s", self.port, ", ".join(ready) or "no models")
        if self.settings.model_control == "explicit":
            log.info("model control: explicit (load/unload through the repository RPCs only)")
        elif self.settings.poll_interval_s > 0:
            log.info("model control: polling the repository every %gs", self.settings.poll_interval_s)

    async def _listen(self) -> None:
        """Bind and start the gRPC server (live; ready once models are loaded) and the metrics endpoint."""
        host = self.settings.host
        address = f"[{host}]:{self.settings.port}" if ":" in host else f"{host}:{self.settings.port}"
        try:
            if self.credentials is not None:
                self.port = self.server.add_secure_port(address, self.credentials)
            else:
                self.port = self.server.add_insecure_port(address)
        except RuntimeError:  # grpc's "Failed to bind": say what the operator can do about it
            self.port = 0
        if self.port == 0:
            raise StartupError(f"cannot listen on {address}: another process holds the port, or the host is not local")
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.start()
        self._metrics_pusher = asyncio.create_task(self.metrics.push_every(METRICS_PUSH_S))
        if self.journal is not None:
            self._journal_reader = asyncio.create_task(_every(JOURNAL_READ_S, self.journal.catch_up))
        if self.group_stats is not None:
            self._stats_publisher = asyncio.create_task(_every(METRICS_PUSH_S, self._publish_stats))
        if self.settings.metrics_port:
            try:
                self.metrics.serve(self.settings.host, self.settings.metrics_port)
            except OSError as exc:  # a setting's problem (the port taken): one line and exit 2, not a traceback
                raise StartupError(f"cannot serve metrics on port {self.settings.metrics_port}: {exc}") from None
        log.info(
            "listening on %s:%d; %s models from %s",
            self.settings.host,
            self.port,
            "serving" if self.manager.initial_load_done else "loading",
            self.settings.model_repository,
        )
        log.info("transport: %s; auth: %s", self._transport(), self._auth())
        if self.settings.auth_token_file is not None and self.credentials is None:
            log.warning("bearer tokens travel in plaintext: serve with --tls-cert/--tls-key")

    async def close_after_failed_start(self) -> None:
        """Release what a start that failed half-way opened (the port, the poller, the threads): nothing to drain."""
        await self.manager.close()
        await self.server.stop(None)
        self._stop_metrics_pusher()
        self.executor.shutdown(wait=False, cancel_futures=True)
        if self.shared_memory is not None:
            self.shared_memory.close()

    async def stop(self) -> None:
        """Drain within the grace period, whatever is loading: health turns NOT_SERVING and new calls are refused
        at once; in-flight calls, and model loads an RPC asked for, get the grace to finish; a load still warming
        up stops at its next warmup request (SIGTERM waited for a whole load or warmup before)."""
        self.draining = True
        self.stopping.set()
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        log.info("draining: finishing in-flight requests (grace %.1fs)", self.settings.grace_s)
        await asyncio.gather(self.server.stop(self.settings.grace_s), self.manager.close(self.settings.grace_s))
        self.executor.shutdown(wait=True, cancel_futures=True)
        self._stop_metrics_pusher()
        self.tracer.close()
        if self.shared_memory is not None:
            self.shared_memory.close()
        log.info("stopped")

    def _publish_stats(self) -> None:
        assert self.group_stats is not None
        ready = (e for e in self.manager.entries() if e.state is VersionState.READY)
        self.group_stats.publish((e.model, e.version, e.stats) for e in ready)

    def _stop_metrics_pusher(self) -> None:
        """After the last request: push what it counted (a group's parent reads it after this process exits)."""
        for task in (self._metrics_pusher, self._journal_reader, self._stats_publisher):
            if task is not None:
                task.cancel()
        self.metrics.push()


async def serve(settings: ServerSettings) -> int:
    server = KerveServer(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    starting = asyncio.ensure_future(server.start())
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({starting, stopped}, return_when=asyncio.FIRST_COMPLETED)
    if not starting.done():  # SIGTERM while the first load runs: no reason to finish it before draining
        log.info("stop requested while starting: stopping the initial load")
        server.stopping.set()
        starting.cancel()
    try:
        await starting
    except asyncio.CancelledError:
        pass
    except BaseException:  # e.g. a --load-model name the repository lacks: close the port before exiting
        stopped.cancel()
        await server.close_after_failed_start()
        raise
    await stopped
    await server.stop()
    return 0


def _journal(settings: ServerSettings) -> SettingsJournal | None:
    """A --processes group's process shares its model, shared memory and settings changes through the supervisor's
    journal (group_settings.py, group_control.py); a lone server has none."""
    path = os.environ.get(group_settings.ENV)
    if settings.process_index is None or not path:
        return None
    return SettingsJournal(Path(path), settings.process_index)


async def _every(interval_s: float, action: Any) -> None:
    """Run `action` every `interval_s` seconds on the event loop until cancelled (a failure is logged)."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            action()
        except Exception:
            log.exception("periodic %s failed", getattr(action, "__qualname__", action))


def _otel(settings: ServerSettings) -> OtelExporter | None:
    """The span exporter of --trace-mode opentelemetry; a --processes group's processes export on their own, each
    tagged with its index (resource attribute kerve.process)."""
    if settings.trace_mode != "opentelemetry":
        return None
    resource = parse_resource(settings.trace_otel_resource)
    if settings.process_index is not None:
        resource.setdefault("kerve.process", str(settings.process_index))
    try:
        return OtelExporter(settings.trace_otel_url, resource)
    except ImportError as exc:
        raise StartupError(f"--trace-mode opentelemetry needs opentelemetry-sdk and its OTLP exporter: {exc}") from None


def _trace_file(settings: ServerSettings) -> Path | None:
    """The processes of a --processes group write their own files (<file>.p0, <file>.p1, ...)."""
    path = settings.trace_file
    if path is None or settings.process_index is None:
        return path
    return path.with_name(f"{path.name}.p{settings.process_index}")


def log_format(process_index: int | None) -> str:
    """Processes of a --processes group tag their lines (p0, p1, ...): they share one stdout."""
    tag = "" if process_index is None else f"[p{process_index}] "
    return f"%(asctime)s %(levelname)s {tag}%(name)s: %(message)s"


def main(settings: ServerSettings) -> int:
    logging.basicConfig(level=logging.INFO, format=log_format(settings.process_index))
    apply_gil_switch_interval(settings.gil_switch_interval_us)
    loop_name, run = event_loop.runner(settings.event_loop)
    log.info("event loop: %s", loop_name)
    try:
        return run(serve(settings))
    except (SecurityConfigError, StartupError, FileNotFoundError) as exc:  # a bad setting: one line, no traceback
        log.error("%s", exc)
        return 2
