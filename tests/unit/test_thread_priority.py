"""Model threads below the event loop: the auto rule, and per-thread nice on this (Linux) machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable

import pytest

from kerve.server import thread_priority

linux_only = pytest.mark.skipif(not thread_priority.supported(), reason="per-thread nice is Linux-only")


def _nice(tid: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, tid)


def _in_thread(work: Callable[[], object]) -> object:
    """Run `work` in a fresh thread (nice values only ever go up without privilege: never lower the test's own)."""
    box: list[object] = []
    thread = threading.Thread(target=lambda: box.append(work()))
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive() and box
    return box[0]


def test_auto_lowers_model_threads_only_with_two_or_more_cores() -> None:
    assert thread_priority.resolve(None, 2) == thread_priority.resolve(None, 64) == thread_priority.AUTO_NICE == 10
    assert thread_priority.resolve(None, 1) == 0  # one core: a flooded loop would starve the model
    assert thread_priority.resolve(3, 1) == 3 and thread_priority.resolve(0, 8) == 0  # explicit values win


@linux_only
def test_lowering_the_current_thread_is_relative_and_capped() -> None:
    def lowered_twice() -> tuple[int, int, int]:
        tid = threading.get_native_id()
        start = _nice(tid)
        thread_priority.lower_current_thread(4)
        once = _nice(tid)
        thread_priority.lower_current_thread(40)
        return start, once, _nice(tid)

    start, once, capped = _in_thread(lowered_twice)
    assert (once, capped) == (min(19, start + 4), 19)
    assert _nice(threading.get_native_id()) == start  # the calling thread's own value is untouched


@linux_only
def test_zero_changes_nothing() -> None:
    def untouched() -> tuple[int, int]:
        tid = threading.get_native_id()
        before = _nice(tid)
        thread_priority.lower_current_thread(0)
        return before, _nice(tid)

    before, after = _in_thread(untouched)
    assert before == after
    assert thread_priority.lower_other_threads(0) == 0


# in a child process: lowering every other thread would lower pytest's own main thread for good
OTHERS = """
import json, os, threading
from kerve.server import thread_priority

nice = lambda tid: os.getpriority(os.PRIO_PROCESS, tid)
ready, release, tids = threading.Barrier(2), threading.Event(), {}

def bystander():
    tids["bystander"] = threading.get_native_id()
    ready.wait(30)
    release.wait(30)

def caller():
    me = threading.get_native_id()
    ready.wait(30)
    before = {"main": nice(tids["main"]), "bystander": nice(tids["bystander"]), "caller": nice(me)}
    lowered = thread_priority.lower_other_threads(3)
    after = {"main": nice(tids["main"]), "bystander": nice(tids["bystander"]), "caller": nice(me)}
    print(json.dumps({"lowered": lowered, "before": before, "after": after}))

tids["main"] = threading.get_native_id()
threads = [threading.Thread(target=bystander), threading.Thread(target=caller)]
threads[0].start()
threads[1].start()
threads[1].join(30)
release.set()
threads[0].join(30)
"""


@linux_only
def test_other_threads_are_lowered_and_the_caller_is_not() -> None:
    done = subprocess.run([sys.executable, "-c", OTHERS], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["lowered"] == 2  # the main thread and the bystander
    before, after = result["before"], result["after"]
    assert after == {
        "main": min(19, before["main"] + 3),
        "bystander": min(19, before["bystander"] + 3),
        "caller": before["caller"],
    }


def test_other_platforms_do_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    assert not thread_priority.supported()
    assert thread_priority.lower_thread(threading.get_native_id(), 5) is False
    assert thread_priority.lower_other_threads(5) == 0
