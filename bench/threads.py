"""A server's CPU, time waiting for a core, wake-ups and system calls per request, by thread role, read from
/proc around a measured window.

Why: `server_cpu_ms_per_req` says how much a request costs the server, not which stage pays it, and py-spy samples
Python frames, not how often a thread sleeps and wakes or how long it waits for a core. Linux keeps those per
thread: `schedstat` (nanoseconds on a core, nanoseconds runnable but waiting, slices), `status` (voluntary context
switches: the thread blocked and was woken again; involuntary: it was preempted) and `io` (read- and write-family
system calls). Read at the window's ends and divided by the window's requests, they say, for instance, how many
times the event loop wakes per request at c8 against at c64, and against a bare gRPC server's loop.

Roles come from the kernel's thread names (server/thread_names.py names kerve's Python threads, and bench.ceiling
its own): the main thread is the event loop (kerve's and the bare asyncio servers'), `kerve-infer_*` the batch
workers, `tf_*` TensorFlow's inter-op pools, gRPC's core and poller threads `grpc`. `native` are the threads that
still carry the process's name once the Python ones are named: native threads without a name of their own, where
TensorFlow's intra-op pool is (Eigen's, which runs a convolution's shards; TF asks for `tf_numa_-1_Eigen`, one
byte more than the kernel takes, presumably why it stays unnamed), and OpenBLAS's threads; the rest is `other` (the
metrics endpoint, asyncio's default executor). A thread that exits inside the window takes its counts with it (none
of the roles' threads does in a steady case). Linux only; elsewhere `available()` is False and the bench leaves the
figures out.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, fields
from pathlib import Path

ROLES = ("loop", "batch", "tf", "native", "grpc", "other")
# gRPC core's threads name themselves; `_poll_wrapper` is grpc.aio's completion-queue poller (a Python thread)
_GRPC_PREFIXES = ("grpc", "event_engine", "lifeguard", "_poll_wrapper", "default-execut", "resolver-execut")


@dataclass(frozen=True)
class Counters:
    run_ns: int = 0  # on a core
    wait_ns: int = 0  # runnable, waiting for a core
    wakeups: int = 0  # voluntary context switches: blocked (a lock, the GIL, epoll, a socket) and woken again
    preempted: int = 0  # involuntary context switches
    syscalls: int = 0  # read- and write-family system calls (syscr + syscw)

    def __add__(self, other: Counters) -> Counters:
        return Counters(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def __sub__(self, other: Counters) -> Counters:
        return Counters(*(getattr(self, f.name) - getattr(other, f.name) for f in fields(self)))


def role_of(pid: int, tid: int, name: str, process_name: str) -> str:
    """A thread's role from its kernel name; `process_name` is the main thread's."""
    if tid == pid:
        return "loop"
    if name.startswith("kerve-infer"):
        return "batch"
    if name.startswith("tf_"):
        return "tf"
    if name.startswith(_GRPC_PREFIXES):
        return "grpc"
    return "native" if name == process_name else "other"


def available() -> bool:
    return Path(f"/proc/{os.getpid()}/task/{os.getpid()}/schedstat").exists()


def parse(schedstat: str, status: str, io: str) -> Counters:
    """One thread's counters from the text of its /proc files (io may be empty: not readable)."""
    run_ns, wait_ns = (int(v) for v in schedstat.split()[:2])
    fields_ = dict(line.split(":", 1) for line in (status + "\n" + io).splitlines() if ":" in line)

    def number(key: str) -> int:
        return int(fields_.get(key, "0").strip() or 0)

    return Counters(
        run_ns=run_ns,
        wait_ns=wait_ns,
        wakeups=number("voluntary_ctxt_switches"),
        preempted=number("nonvoluntary_ctxt_switches"),
        syscalls=number("syscr") + number("syscw"),
    )


def _read_thread(pid: int, tid: int) -> tuple[str, Counters] | None:
    base = Path(f"/proc/{pid}/task/{tid}")
    try:
        name = (base / "comm").read_text().strip()
        schedstat = (base / "schedstat").read_text()
        status = (base / "status").read_text()
    except OSError:  # exited meanwhile
        return None
    try:
        io = (base / "io").read_text()
    except OSError:  # not ours to read (another user's process)
        io = ""
    return name, parse(schedstat, status, io)


Snapshot = dict[tuple[int, int], tuple[str, Counters]]


def snapshot(pids: Iterable[int]) -> Snapshot:
    """Every thread of these processes: (pid, tid) -> (role, counters)."""
    out: Snapshot = {}
    for pid in pids:
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
            process_name = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        for tid in tids:
            read = _read_thread(pid, tid)
            if read is not None:
                name, counters = read
                out[(pid, tid)] = (role_of(pid, tid, name, process_name), counters)
    return out


def by_role(before: Snapshot, after: Snapshot) -> dict[str, tuple[int, Counters]]:
    """Each role's thread count and counters over the window (a thread started inside it counts from zero)."""
    totals: dict[str, tuple[int, Counters]] = {}
    for key, (role, end) in after.items():
        start = before.get(key, (role, Counters()))[1]
        count, sum_ = totals.get(role, (0, Counters()))
        totals[role] = (count + 1, sum_ + (end - start))
    return totals


def per_request(before: Snapshot, after: Snapshot, requests: int) -> dict[str, dict[str, float]]:
    """Per role: CPU and waiting-for-a-core milliseconds, wake-ups, preemptions and system calls per request,
    and its threads. Roles with no thread are left out; an empty dict without requests."""
    if requests <= 0:
        return {}
    out: dict[str, dict[str, float]] = {}
    totals = by_role(before, after)
    for role in ROLES:
        if role not in totals:
            continue
        threads, c = totals[role]
        out[role] = {
            "cpu_ms": round(c.run_ns / 1e6 / requests, 4),
            "wait_ms": round(c.wait_ns / 1e6 / requests, 4),
            "wakeups": round(c.wakeups / requests, 3),
            "preempted": round(c.preempted / requests, 3),
            "syscalls": round(c.syscalls / requests, 3),
            "threads": threads,
        }
    return out
