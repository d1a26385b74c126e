"""`kerve serve --processes N`: several server processes on one port.

Python gRPC runs every RPC's callbacks on one event-loop thread, so one server process tops out near one core of
RPC work however many cores the machine has (docs/benchmarks.md, "Where the time goes"). N processes, each a
complete kerve server (its own event loop, model replicas, batchers and inference threads), listen on the same
port with SO_REUSEPORT and the kernel spreads incoming *connections* over them. A connection stays with the
process that accepted it, so a client with one channel uses one process; many clients (or channels) use them all.

This parent imports neither TensorFlow nor grpc. It reserves the port (so `--port 0` means one free port for the
whole group), starts the children with the same flags, holds them back until all have loaded their models (a
start barrier over two pipes) so that they begin listening together, serves the Prometheus metrics they all write
to a shared directory (prometheus_client's multiprocess mode: counters and histograms are summed over the
processes), and forwards SIGTERM/SIGINT so every child drains. If a child dies on its own, the parent stops the
others and exits non-zero: the orchestrator restarts the group as a whole, as it would a single server.
"""

from __future__ import annotations

import asyncio
import glob
import logging
import math
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from types import FrameType
from typing import Any

from .group_settings import ENV
from .settings import ServerSettings

log = logging.getLogger("kerve.server.processes")

KILL_AFTER_GRACE_S = 30.0  # a child still running this long after its drain grace period is killed
WAIT_STEP_S = 0.5  # how often the supervisor looks at the clock while its children run


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound (not listening) to host:port with SO_REUSEPORT: it fixes the port number for `--port 0`
    and fails early when a process outside the group holds the port. It never accepts connections: the kernel
    only hands connections to sockets that listen."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        # as gRPC's own listeners: a connection of the previous server on this port still in TIME_WAIT after
        # a restart must not make the bind fail
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot bind {host}:{port}: {exc.strerror or exc}") from None
    return sock


def child_command(argv: Sequence[str], index: int, port: int, fds: tuple[int, int]) -> list[str]:
    """The parent's own `serve` arguments with the group's overrides appended (argparse keeps the last value).
    `--processes N` stays: a child knows it is one of N (it splits the cores with the others) and, having a
    `--process-index`, serves instead of supervising."""
    return [
        sys.executable, "-m", "kerve", *argv,
        "--process-index", str(index), "--port", str(port), "--metrics-port", "0",
        "--group-fds", f"{fds[0]},{fds[1]}",
    ]  # fmt: skip


async def wait_for_group(loaded_fd: int, go_fd: int, index: int) -> None:
    """The start barrier, child side: report this process loaded, then wait until every process is (the parent
    closes the `go` pipe, so the read sees end-of-file; it does the same when the group stops or dies)."""
    os.write(loaded_fd, f"{index}\n".encode())
    os.close(loaded_fd)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, os.read, go_fd, 1)
    os.close(go_fd)


class _Barrier:
    """The start barrier, parent side: closes `go` once all `count` children have written their index to
    `loaded`, or when the group stops first."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.loaded_r, self.loaded_w = os.pipe()
        self.go_r, self.go_w = os.pipe()
        self._lock = threading.Lock()
        self._open = True

    @property
    def child_fds(self) -> tuple[int, int]:
        return self.loaded_w, self.go_r

    def start(self) -> None:
        """After the children started: drop the parent's copies of their ends, collect the reports in a thread."""
        os.close(self.loaded_w)
        os.close(self.go_r)
        threading.Thread(target=self._collect, name="kerve-barrier", daemon=True).start()

    def _collect(self) -> None:
        seen: set[str] = set()
        with os.fdopen(self.loaded_r, "r") as reports:
            for line in reports:  # ends when every child has closed its end (reported, or died)
                seen.add(line.strip())
                if len(seen) == self.count:
                    log.info("all %d server processes loaded their models: listening", self.count)
                    self.release()
                    return

    def release(self) -> None:
        with self._lock:
            if self._open:
                self._open = False
                os.close(self.go_w)


def _serve_metrics(host: str, port: int, directory: str) -> None:
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry()
    registry.register(GroupCollector(directory))
    start_http_server(port, addr=host, registry=registry)


class GroupCollector:
    """prometheus_client's MultiProcessCollector, less the gauge series a process retired (NaN in its file:
    metrics.retire). Its two steps are prometheus_client's own (private) static methods, with the NaNs dropped in
    between, per process, before the processes' values combine."""

    def __init__(self, directory: str) -> None:
        self._directory = directory

    def collect(self) -> Iterable[Any]:
        from prometheus_client.multiprocess import MultiProcessCollector

        files = glob.glob(os.path.join(self._directory, "*.db"))
        metrics = MultiProcessCollector._read_metrics(files)
        for metric in metrics.values():
            if metric.type == "gauge":
                metric.samples = [s for s in metric.samples if not math.isnan(s.value)]
        return MultiProcessCollector._accumulate_metrics(metrics, True)


def supervise(settings: ServerSettings, argv: Sequence[str]) -> int:
    """Run `settings.processes` children of `kerve serve <argv>` until they exit; the group's exit status."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        reservation = reserve_port(settings.host, settings.port)
    except OSError as exc:  # as a single server: the port taken is a setting's problem, exit 2
        log.error("%s", exc)
        return 2
    port = reservation.getsockname()[1]
    metrics_dir = tempfile.mkdtemp(prefix="kerve-metrics-")
    # the metrics files, and the journal of changes the processes share (group_settings.py), beside which each
    # writes its ModelStatistics counts (group_stats.py)
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": metrics_dir, ENV: os.path.join(metrics_dir, "settings.jsonl")}
    exits: queue.Queue[tuple[int, int]] = queue.Queue()
    children: list[subprocess.Popen[bytes]] = []
    stopping = threading.Event()
    barrier = _Barrier(settings.processes)

    def stop_children(signum: int = signal.SIGTERM, frame: FrameType | None = None) -> None:
        stopping.set()
        barrier.release()  # children still waiting to listen go on, see SIGTERM and stop
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    def wait_for(index: int, child: subprocess.Popen[bytes]) -> None:
        exits.put((index, child.wait()))

    previous = {sig: signal.signal(sig, stop_children) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        if settings.metrics_port:
            try:
                _serve_metrics(settings.host, settings.metrics_port, metrics_dir)
            except OSError as exc:
                log.error("cannot serve metrics on port %d: %s", settings.metrics_port, exc)
                return 2
        log.info("starting %d server processes on %s:%d", settings.processes, settings.host, port)
        for index in range(settings.processes):
            command = child_command(argv, index, port, barrier.child_fds)
            child = subprocess.Popen(command, env=env, pass_fds=barrier.child_fds)
            children.append(child)
            threading.Thread(target=wait_for, args=(index, child), name=f"kerve-p{index}", daemon=True).start()
        barrier.start()
        return _wait(settings, children, exits, stopping, stop_children, metrics_dir)
    finally:
        stop_children()
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        reservation.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _wait(
    settings: ServerSettings,
    children: list[subprocess.Popen[bytes]],
    exits: queue.Queue[tuple[int, int]],
    stopping: threading.Event,
    stop_children: Callable[[], None],
    metrics_dir: str,
) -> int:
    from prometheus_client.multiprocess import mark_process_dead

    status = 0
    running = len(children)
    kill_deadline_s = settings.grace_s + KILL_AFTER_GRACE_S
    stopped_at: float | None = None  # when stopping was first seen: the kill deadline counts from there
    while running:
        if stopped_at is None and stopping.is_set():
            stopped_at = time.monotonic()
        try:
            # short waits: a SIGTERM sets `stopping` while this thread waits, and the deadline must start then
            index, code = exits.get(timeout=WAIT_STEP_S)
        except queue.Empty:
            if stopped_at is not None and time.monotonic() - stopped_at > kill_deadline_s:
                log.error("server processes still running %.0fs after SIGTERM: killing them", kill_deadline_s)
                for child in children:
                    if child.poll() is None:
                        child.kill()
                stopped_at = math.inf  # killed once; their exits still arrive
            continue
        running -= 1
        mark_process_dead(children[index].pid, metrics_dir)  # its live gauges (in flight, queue depth) drop out
        if stopping.is_set():
            if code != 0:
                log.error("server process p%d exited with status %d while stopping", index, code)
                status = status or 1
            continue
        log.error("server process p%d exited with status %d: stopping the group", index, code)
        status = code if code > 0 else 1
        stop_children()
    if status == 0:
        log.info("all %d server processes stopped", len(children))
    return status
