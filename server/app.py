"""Assemble and run the server: one grpc.aio port for V2 + health + reflection, metrics on another.

Lifecycle: bind and start (live, not ready) -> load models -> health SERVING (ready) -> on SIGTERM/SIGINT
health NOT_SERVING, stop accepting, let in-flight RPCs finish within the grace period -> exit 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from concurrent.futures import ThreadPoolExecutor

import grpc
from google.protobuf import descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from kerve.protos import grpc_service_pb2 as pb
from kerve.protos import grpc_service_pb2_grpc as pb_grpc

from .inference import InferenceEngine
from .manager import ModelManager
from .metrics import Metrics
from .model import load_servable
from .settings import ServerSettings
from .v2_service import V2Servicer

log = logging.getLogger("kerve.server")

V2_SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name


def _reflection_pool() -> descriptor_pool.DescriptorPool:
    """Our protos live in a private pool (see tools/gen_protos.py); reflection needs every served file."""
    pool = descriptor_pool.DescriptorPool()
    for module in (pb, health_pb2, reflection_pb2):
        pool.AddSerializedFile(module.DESCRIPTOR.serialized_pb)
    return pool


class KerveServer:
    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.executor = ThreadPoolExecutor(settings.workers, thread_name_prefix="kerve-infer")
        self.manager = ModelManager(settings.model_repository, load_servable, self.executor, self.metrics)
        self.engine = InferenceEngine(self.manager, self.executor, self.metrics)
        self.health = health.aio.HealthServicer()
        self.draining = False
        self.port = 0
        options = [
            ("grpc.max_send_message_length", settings.max_message_bytes),
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ]
        self.server = grpc.aio.server(options=options)
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(
            V2Servicer(self.manager, self.engine, self.ready), self.server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            [V2_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME], self.server, pool=_reflection_pool()
        )

    def ready(self) -> bool:
        return self.manager.initial_load_done and not self.draining

    async def _set_health(self, status: int) -> None:
        for service in ("", V2_SERVICE):
            await self.health.set(service, status)

    async def start(self) -> None:
        address = f"{self.settings.host}:{self.settings.port}"
        self.port = self.server.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"could not bind {address}")
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.start()
        if self.settings.metrics_port:
            self.metrics.serve(self.settings.host, self.settings.metrics_port)
        log.info(
            "listening on %s:%d; loading models from %s",
            self.settings.host,
            self.port,
            self.settings.model_repository,
        )
        await self.manager.load_all()
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        ready = [f"{e.model}:{e.version}" for e in self.manager.entries() if e.servable is not None]
        log.info("ready on port %d serving %s", self.port, ", ".join(ready) or "no models")

    async def stop(self) -> None:
        self.draining = True
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        log.info("draining: finishing in-flight requests (grace %.1fs)", self.settings.grace_s)
        await self.server.stop(self.settings.grace_s)
        self.executor.shutdown(wait=True, cancel_futures=False)
        log.info("stopped")


async def serve(settings: ServerSettings) -> int:
    server = KerveServer(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    await stop.wait()
    await server.stop()
    return 0


def main(settings: ServerSettings) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return asyncio.run(serve(settings))
