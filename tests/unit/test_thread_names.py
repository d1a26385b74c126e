"""Kernel names for Python threads (server/thread_names.py): the name rule, and naming on this (Linux) machine."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest

from kerve.server import thread_names

linux_only = pytest.mark.skipif(not thread_names.supported(), reason="thread names through /proc are Linux-only")


def _comm(native_id: int) -> str:
    return Path(f"/proc/self/task/{native_id}/comm").read_text().strip()


def test_a_target_names_an_unnamed_thread_and_names_are_cut_to_15_bytes() -> None:
    assert thread_names.os_name("Thread-3 (_poll_wrapper)") == "_poll_wrapper"
    assert thread_names.os_name("kerve-infer_0") == "kerve-infer_0"
    assert thread_names.os_name("kerve-infer_1234567") == "kerve-infer_123"
    assert thread_names.os_name("Thread-12") == "Thread-12"  # no target: the name as is
    assert len(thread_names.os_name("é" * 10).encode()) == 14  # never half a character


def _run(target: object, name: str) -> None:
    thread = threading.Thread(target=target, name=name)  # type: ignore[arg-type]
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive()


@linux_only
def test_a_worker_names_itself() -> None:
    seen: list[str] = []
    _run(lambda: (thread_names.name_current_thread(), seen.append(_comm(threading.get_native_id()))), "kerve-infer_7")
    assert seen == ["kerve-infer_7"]


@linux_only
def test_every_thread_but_the_main_one_is_named() -> None:
    main_before = _comm(threading.main_thread().native_id or 0)
    started, release = threading.Event(), threading.Event()
    seen: list[str] = []

    def bystander() -> None:
        started.set()
        release.wait(30)
        seen.append(_comm(threading.get_native_id()))

    thread = threading.Thread(target=bystander)  # Python names it "Thread-N (bystander)"
    thread.start()
    try:
        assert started.wait(30)
        assert thread_names.name_threads() >= 1
    finally:
        release.set()
        thread.join(timeout=30)
    assert seen == ["bystander"]
    assert _comm(threading.main_thread().native_id or 0) == main_before


@linux_only
def test_a_thread_that_has_gone_is_not_named() -> None:
    box: list[int] = []
    _run(lambda: box.append(threading.get_native_id()), "short-lived")
    # join() returns once the thread's Python part ended; the kernel task leaves /proc a moment later
    task = Path(f"/proc/self/task/{box[0]}")
    deadline = time.monotonic() + 30
    while task.exists() and time.monotonic() < deadline:
        time.sleep(0.001)
    assert thread_names.set_name(box[0], "gone") is False


def test_other_platforms_do_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    assert not thread_names.supported()
    assert thread_names.set_name(threading.get_native_id(), "x") is False
