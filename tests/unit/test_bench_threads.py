"""bench.threads: a server's counters per thread role and per request, from /proc text and from this process."""

from __future__ import annotations

import os
import threading

import pytest

from bench import report, threads
from bench.threads import Counters

SCHEDSTAT = "5000000 2000000 40\n"
STATUS = "Name:\tkerve\nvoluntary_ctxt_switches:\t30\nnonvoluntary_ctxt_switches:\t4\n"
IO = "rchar: 10\nwchar: 5\nsyscr: 12\nsyscw: 3\nread_bytes: 0\n"


def test_parse_reads_run_wait_switches_and_syscalls() -> None:
    assert threads.parse(SCHEDSTAT, STATUS, IO) == Counters(5_000_000, 2_000_000, 30, 4, 15)
    assert threads.parse(SCHEDSTAT, STATUS, "").syscalls == 0  # io not readable: no syscall count


def test_roles_come_from_the_main_thread_and_kernel_names() -> None:
    assert threads.role_of(100, 100, "kerve", "kerve") == "loop"
    assert threads.role_of(100, 101, "kerve-infer_0", "kerve") == "batch"
    assert threads.role_of(100, 102, "tf_Compute", "kerve") == "tf"
    for name in ("event_engine", "grpc_global_tim", "_poll_wrapper", "lifeguard"):
        assert threads.role_of(100, 103, name, "kerve") == "grpc"
    assert threads.role_of(100, 104, "kerve", "kerve") == "native"  # never named: TF's intra-op pool, OpenBLAS
    assert threads.role_of(100, 105, "serve_forever", "kerve") == "other"
    assert threads.role_of(100, 106, "python", "kerve") == "other"


def test_per_request_sums_a_role_over_its_threads_and_counts_new_threads_from_zero() -> None:
    before = {
        (1, 1): ("loop", Counters(1_000_000, 0, 10, 1, 20)),
        (1, 2): ("grpc", Counters(0, 0, 5, 0, 0)),
    }
    after = {
        (1, 1): ("loop", Counters(5_000_000, 1_000_000, 30, 3, 60)),
        (1, 2): ("grpc", Counters(2_000_000, 0, 15, 0, 0)),
        (1, 3): ("grpc", Counters(2_000_000, 0, 5, 0, 0)),  # started inside the window
    }
    got = threads.per_request(before, after, 10)
    loop = {"cpu_ms": 0.4, "wait_ms": 0.1, "wakeups": 2.0, "preempted": 0.2, "syscalls": 4.0, "threads": 1}
    assert got["loop"] == loop
    assert got["grpc"]["cpu_ms"] == 0.4 and got["grpc"]["wakeups"] == 1.5 and got["grpc"]["threads"] == 2
    assert set(got) == {"loop", "grpc"}  # roles without threads are left out
    assert threads.per_request(before, after, 0) == {}


@pytest.mark.skipif(not threads.available(), reason="per-thread schedstat is Linux-only")
def test_snapshot_of_this_process_sees_a_busy_thread_run() -> None:
    pid = os.getpid()
    spun, release = threading.Event(), threading.Event()
    box: list[int] = []

    def spin() -> None:
        box.append(threading.get_native_id())
        n = 0
        while n < 2_000_000:
            n += 1
        spun.set()
        release.wait(30)

    thread = threading.Thread(target=spin)  # unnamed at the OS level: it carries the process's name
    before = threads.snapshot([pid])
    thread.start()
    try:
        assert spun.wait(60)
        after = threads.snapshot([pid])
    finally:
        release.set()
        thread.join(timeout=30)
    assert before[(pid, pid)][0] == "loop"
    role, counters = after[(pid, box[0])]
    assert role == "native" and counters.run_ns > 1_000_000  # two million Python steps: well over a millisecond
    totals = threads.by_role(before, after)
    assert totals["native"][1].run_ns >= counters.run_ns  # counted from zero: it started inside the window
    assert threads.snapshot([2**22 + 12345]) == {}  # no such process


def test_report_renders_kerve_and_bare_loop_side_by_side() -> None:
    roles = {"loop": {"cpu_ms": 0.31, "wait_ms": 0.05, "wakeups": 2.0, "preempted": 0.1, "syscalls": 3.5, "threads": 1}}
    model = {
        "tf": {"cpu_ms": 0.5, "wakeups": 3.0},
        "native": {"cpu_ms": 1.25, "wakeups": 1.0},  # TF's intra-op pool: summed with its pools in one column
    }
    results = {
        "seed_cnn/c8": {"samples_per_s": 1.0, "threads": {**roles, **model}},
        "streaming": {},
        "grpc_ceiling": {"unary": {"seed_cnn/c8": {"threads": roles}}},
    }
    lines = report.threads(results)
    assert len(lines) == 3
    assert lines[2].startswith("| seed_cnn | unary | 8 | 0.31 / 0.05, 2.00 / 3.50 | – | 1.75 / 4.00 | – | 0.31")
    assert report.threads({"grpc_ceiling": {}, "seed_cnn/c8": {"samples_per_s": 1.0}}) == []
