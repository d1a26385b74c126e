"""A lean multi-process gRPC load generator: closed loop, fixed concurrency, warm-up, fixed measurement window.

Each worker process runs one asyncio loop with `channels` grpc.aio channels (one TCP connection each) and drives its
share of the concurrency as `slots` closed-loop slots, each keeping exactly one request in flight: a coroutine per
slot for unary calls; for streaming, a coroutine per stream carrying `stream_depth` slots (messages in flight).
Requests are serialized once up front; calls go through `channel.unary_unary(path)` /
`channel.stream_stream(path)` with no serializers, so the bytes go to the wire as they are and responses come back
as bytes: no protobuf work per request on the client side (a response is only checked by its length against the
first, fully parsed, one).

Timeline of one run: workers connect and prime every slot (one request each, fully checked) -> the parent gives a
common start -> warm-up (not counted) -> the measurement window (completions inside it are counted and their
latencies kept) -> each slot stops sending at the end of the window. Every run is bounded in time (a request still
unanswered `timeout_s` after the window is cancelled and counted as an error; no per-call deadline, which would
cost client CPU on every call) and in count (`max_requests` per worker).

Workers are started once with the "spawn" method (nothing of the parent, such as TensorFlow, is inherited) and
reused for every run. Only grpc, numpy and the generated protobuf module are imported here.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import os
import time
from array import array
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

UNARY = "unary"
STREAM = "stream"
MODES = (UNARY, STREAM)
UNARY_METHOD = "/inference.GRPCInferenceService/ModelInfer"
STREAM_METHOD = "/inference.GRPCInferenceService/ModelStreamInfer"
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
MAX_ERRORS = 1000  # per worker and run: then the worker stops sending, and the run is reported as failed


@dataclass
class Job:
    target: str
    mode: str
    payloads: list[bytes]
    slots: int
    offset: int  # first payload index for this worker, so workers do not send in lockstep
    timeout_s: float
    max_requests: int
    channels: int = 1  # TCP connections of this worker; slots take them in turn
    stream_depth: int = 1  # stream mode: messages in flight per stream (slots per stream)


@dataclass
class LoadResult:
    mode: str
    concurrency: int
    procs: int
    duration_s: float
    requests: int  # completed inside the window
    errors: int
    first_error: str
    latencies_s: np.ndarray = field(repr=False)
    client_cpu_s: float  # CPU time of the load generator processes inside the window
    observed_cpu_s: dict[int, float]  # pid -> CPU time inside the window (the server under test)
    machine_busy_s: float  # CPU time of the whole machine inside the window (all processes, /proc/stat)
    machine_idle_s: float = 0.0  # time the machine's cores sat idle inside the window (idle + iowait, /proc/stat)

    @property
    def per_s(self) -> float:
        return self.requests / self.duration_s

    def mean_ms(self) -> float:
        return float(self.latencies_s.mean() * 1e3) if len(self.latencies_s) else float("nan")

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.latencies_s, q) * 1e3) if len(self.latencies_s) else float("nan")


# ------------------------------------------------------------------------------------------------ worker side


class _Counters:
    def __init__(self, max_requests: int) -> None:
        self.latencies = array("d")
        self.sent = 0
        self.errors = 0
        self.first_error = ""
        self.max_requests = max_requests

    def error(self, message: str) -> None:
        self.errors += 1
        if not self.first_error:
            self.first_error = message


def _check_first(mode: str, raw: bytes) -> None:
    """Parse a priming response fully: it must carry outputs (a stream carries errors in-band)."""
    from kerve.protos import grpc_service_pb2 as pb

    if mode == STREAM:
        message = pb.ModelStreamInferResponse.FromString(raw)
        if message.error_message:
            raise RuntimeError(f"stream response carries an error: {message.error_message}")
        response = message.infer_response
    else:
        response = pb.ModelInferResponse.FromString(raw)
    if not response.outputs:
        raise RuntimeError(f"response has no outputs: {response}")


async def _unary_slot(
    call: Any, job: Job, index: int, expected_len: int, window: tuple[float, float], c: _Counters
) -> None:
    t_measure, t_end = window
    payloads, n, k = job.payloads, len(job.payloads), job.offset + index
    append, now = c.latencies.append, time.monotonic
    while c.sent < c.max_requests and c.errors < MAX_ERRORS:
        t0 = now()
        if t0 >= t_end:
            return
        c.sent += 1
        try:
            # No per-call deadline (it costs ~5% of the client's CPU per call): the whole run is bounded instead,
            # see _run_job.
            response = await call(payloads[k % n])
        except Exception as exc:  # grpc.aio.AioRpcError and friends: counted, never fatal
            c.error(f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(0.01)
            continue
        t1 = now()
        if len(response) != expected_len:
            c.error(f"response of {len(response)} bytes, expected {expected_len}")
        elif t_measure <= t1 < t_end:
            append(t1 - t0)
        k += 1


async def _stream_slot(
    stream: Any, job: Job, index: int, depth: int, expected_len: int, window: tuple[float, float], c: _Counters
) -> None:
    """`depth` closed-loop slots on one stream: up to `depth` messages in flight, a new one sent as each response
    (they come back in request order) arrives."""
    t_measure, t_end = window
    payloads, n, k = job.payloads, len(job.payloads), job.offset + index + 1
    append, now = c.latencies.append, time.monotonic
    sent: deque[float] = deque()
    try:
        while True:
            while len(sent) < depth and c.sent < c.max_requests and c.errors < MAX_ERRORS and now() < t_end:
                c.sent += 1
                sent.append(now())
                await stream.write(payloads[k % n])
                k += 1
            if not sent:
                break
            response = await stream.read()
            t1, t0 = now(), sent.popleft()
            if not isinstance(response, bytes) or len(response) != expected_len:
                c.error(f"stream response {response!r:.200}, expected {expected_len} bytes")
            elif t_measure <= t1 < t_end:
                append(t1 - t0)
        await stream.done_writing()
    except Exception as exc:
        c.error(f"{type(exc).__name__}: {exc}")
        stream.cancel()


async def _sample_cpu(window: tuple[float, float], out: list[float]) -> None:
    for t in window:
        await asyncio.sleep(max(0.0, t - time.monotonic()))
        out.append(time.process_time())


async def _run_job(job: Job, conn: Connection) -> dict[str, Any]:
    import grpc

    options = [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        # a connection per channel (grpc would otherwise share one between channels with the same target and
        # options): a server of several processes sharing its port gets connections, not requests, spread over it
        ("grpc.use_local_subchannel_pool", 1),
    ]
    depths = [min(job.stream_depth, job.slots - start) for start in range(0, job.slots, job.stream_depth)]
    units = job.slots if job.mode == UNARY else len(depths)  # unary slots or streams, spread over the channels
    async with contextlib.AsyncExitStack() as stack:
        channels = [
            await stack.enter_async_context(grpc.aio.insecure_channel(job.target, options=options))
            for _ in range(max(1, min(job.channels, units)))
        ]
        for channel in channels:
            await asyncio.wait_for(channel.channel_ready(), timeout=30)
        # Priming: one full round trip per unary slot or per stream, checked, before the clock starts.
        streams: list[tuple[Any, int]] = []  # (stream, depth)
        expected: list[int] = []
        calls = [channel.unary_unary(UNARY_METHOD) for channel in channels]
        if job.mode == UNARY:
            for i in range(job.slots):
                raw = await calls[i % len(calls)](
                    job.payloads[(job.offset + i) % len(job.payloads)], timeout=job.timeout_s
                )
                _check_first(job.mode, raw)
                expected.append(len(raw))
        else:
            for i, depth in enumerate(depths):
                stream = channels[i % len(channels)].stream_stream(STREAM_METHOD)()
                await stream.write(job.payloads[(job.offset + i) % len(job.payloads)])
                raw = await asyncio.wait_for(stream.read(), timeout=job.timeout_s)
                _check_first(job.mode, raw)
                streams.append((stream, depth))
                expected.append(len(raw))
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, conn.send, ("ready", None))
        message = await loop.run_in_executor(None, conn.recv)
        if message[0] != "go":
            return {"requests": 0, "latencies": b"", "errors": 0, "first_error": "", "cpu_s": 0.0}
        window = (float(message[1]), float(message[2]))
        counters = _Counters(job.max_requests)
        cpu: list[float] = []
        sampler = asyncio.create_task(_sample_cpu(window, cpu))
        if job.mode == UNARY:
            slots = [
                _unary_slot(calls[i % len(calls)], job, i, expected[i], window, counters) for i in range(job.slots)
            ]
        else:
            slots = [
                _stream_slot(s, job, i, depth, expected[i], window, counters) for i, (s, depth) in enumerate(streams)
            ]
        tasks = [asyncio.ensure_future(slot) for slot in slots]
        _, pending = await asyncio.wait(tasks, timeout=window[1] - time.monotonic() + job.timeout_s)
        for task in pending:  # a request still unanswered `timeout_s` after the window: cancelled and counted
            task.cancel()
            counters.error(f"request unanswered {job.timeout_s:g}s after the window closed")
        await asyncio.gather(*pending, return_exceptions=True)
        for task in tasks:
            if not task.cancelled() and task.exception() is not None:
                counters.error(f"{type(task.exception()).__name__}: {task.exception()}")
        await sampler
    return {
        "requests": len(counters.latencies),
        "latencies": counters.latencies.tobytes(),
        "errors": counters.errors,
        "first_error": counters.first_error,
        "cpu_s": cpu[1] - cpu[0] if len(cpu) == 2 else 0.0,
    }


def _worker_main(conn: Connection) -> None:
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message[0] == "exit":
            return
        try:
            result = asyncio.run(_run_job(message[1], conn))
            conn.send(("result", result))
        except Exception as exc:
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


# ------------------------------------------------------------------------------------------------ parent side


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a process (all its threads) from /proc, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_line() -> list[int]:
    """The machine's `cpu` line of /proc/stat in clock ticks: user, nice, system, idle, iowait, irq, softirq."""
    try:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:8]]
    except OSError:
        return [0] * 7
    return (values + [0] * 7)[:7]


def machine_busy_s() -> float:
    """CPU time the whole machine has been busy (all cores: user, nice, system, irq, softirq), in seconds.

    Idle, iowait and steal (time the hypervisor gave to another guest) do not count.
    """
    user, nice, system, _idle, _iowait, irq, softirq = _cpu_line()
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def machine_idle_s() -> float:
    """Time the machine's cores have sat idle (idle + iowait, all cores), in seconds. A case that leaves cores idle
    is not bound by the CPU but by a serial stage (the event loop, the GIL, one replica) or by its closed loop."""
    values = _cpu_line()
    return (values[3] + values[4]) / os.sysconf("SC_CLK_TCK")


class LoadGenerator:
    """A pool of worker processes, started once and reused for every run."""

    def __init__(self, procs: int) -> None:
        if procs < 1:
            raise ValueError(f"load generator processes must be >= 1, got {procs}")
        self.procs = procs
        self._ctx = mp.get_context("spawn")
        self._workers: list[tuple[Any, Connection]] = []

    def start(self, n: int) -> None:
        """Start `n` worker processes now (they are otherwise started on first use)."""
        self._ensure(min(n, self.procs))

    def _ensure(self, n: int) -> None:
        while len(self._workers) < n:
            parent, child = self._ctx.Pipe()
            proc = self._ctx.Process(target=_worker_main, args=(child,), daemon=True, name="kerve-bench-load")
            proc.start()
            child.close()
            self._workers.append((proc, parent))

    @property
    def pids(self) -> list[int]:
        return [p.pid for p, _ in self._workers if p.pid is not None]

    def _recv(self, conn: Connection, deadline: float, what: str) -> Any:
        if not conn.poll(max(0.0, deadline - time.monotonic())):
            raise TimeoutError(f"load generator worker did not report {what} in time")
        kind, payload = conn.recv()
        if kind == "error":
            raise RuntimeError(f"load generator worker failed: {payload}")
        return payload

    def run(
        self,
        target: str,
        mode: str,
        payloads: Sequence[bytes],
        concurrency: int,
        warmup_s: float,
        duration_s: float,
        *,
        timeout_s: float = 30.0,
        max_requests: int = 2_000_000,
        observe_pids: Sequence[int] = (),
        on_window_start: Callable[[], None] | None = None,
        on_window_end: Callable[[], None] | None = None,
        channels: int = 1,
        stream_depth: int = 1,
    ) -> LoadResult:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if channels < 1 or stream_depth < 1:
            raise ValueError(f"channels and stream_depth must be >= 1, got {channels} and {stream_depth}")
        procs = min(self.procs, concurrency)
        self._ensure(procs)
        try:
            return self._run(target, mode, payloads, concurrency, procs, warmup_s, duration_s, timeout_s,
                             max_requests, observe_pids, on_window_start, on_window_end, channels,
                             stream_depth)  # fmt: skip
        except BaseException:
            self._kill()  # a worker may be mid-job: start afresh next time
            raise

    def _run(
        self,
        target: str,
        mode: str,
        payloads: Sequence[bytes],
        concurrency: int,
        procs: int,
        warmup_s: float,
        duration_s: float,
        timeout_s: float,
        max_requests: int,
        observe_pids: Sequence[int],
        on_window_start: Callable[[], None] | None,
        on_window_end: Callable[[], None] | None,
        channels: int,
        stream_depth: int,
    ) -> LoadResult:
        workers = self._workers[:procs]
        shares = [concurrency // procs + (1 if i < concurrency % procs else 0) for i in range(procs)]
        for i, ((_, conn), slots) in enumerate(zip(workers, shares, strict=True)):
            job = Job(target, mode, list(payloads), slots, i * 7919, timeout_s, max_requests, channels, stream_depth)
            conn.send(("job", job))
        setup_deadline = time.monotonic() + 60 + timeout_s
        for _, conn in workers:
            self._recv(conn, setup_deadline, "ready")
        t_measure = time.monotonic() + warmup_s
        t_end = t_measure + duration_s
        for _, conn in workers:
            conn.send(("go", t_measure, t_end))
        time.sleep(max(0.0, t_measure - time.monotonic()))
        before = {pid: proc_cpu_s(pid) for pid in observe_pids}
        busy_before, idle_before = machine_busy_s(), machine_idle_s()
        if on_window_start is not None:
            on_window_start()
        time.sleep(max(0.0, t_end - time.monotonic()))
        observed = {pid: proc_cpu_s(pid) - before[pid] for pid in observe_pids}
        busy, idle = machine_busy_s() - busy_before, machine_idle_s() - idle_before
        if on_window_end is not None:
            on_window_end()
        results = [self._recv(conn, t_end + timeout_s + 30, "results") for _, conn in workers]
        latencies = np.concatenate([np.frombuffer(r["latencies"], dtype=np.float64) for r in results])
        errors = sum(r["errors"] for r in results)
        first_error = next((r["first_error"] for r in results if r["first_error"]), "")
        return LoadResult(
            mode=mode,
            concurrency=concurrency,
            procs=procs,
            duration_s=duration_s,
            requests=sum(r["requests"] for r in results),
            errors=errors,
            first_error=first_error,
            latencies_s=latencies,
            client_cpu_s=sum(r["cpu_s"] for r in results),
            observed_cpu_s=observed,
            machine_busy_s=busy,
            machine_idle_s=idle,
        )

    def _kill(self) -> None:
        for proc, conn in self._workers:
            proc.terminate()
            proc.join(timeout=5)
            conn.close()
        self._workers.clear()

    def close(self) -> None:
        for _, conn in self._workers:
            with contextlib.suppress(OSError):
                conn.send(("exit",))
        for proc, conn in self._workers:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
            conn.close()
        self._workers.clear()

    def __enter__(self) -> LoadGenerator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
