"""The server's Python threads carry their names at the OS level too, so `top -H`, `ps -L`, perf and /proc tell
them apart.

Why: before Python 3.14 a thread started from Python keeps its process's name in the kernel ("kerve" for every one
of them), so the inference workers, gRPC's completion-queue poller and the event loop look alike to every tool
outside the interpreter; TensorFlow's and gRPC's native threads name themselves (`tf_Compute`, `event_engine`).
bench.threads reads these names to charge a server's CPU, wake-ups and system calls per request to its stages.

The main thread (the event loop's) keeps the process's name, which `ps`, `pgrep` and `top` show for the process.
A thread's kernel name holds 15 bytes; a Python name `Thread-3 (target)` becomes its target's name. Elsewhere
than Linux this does nothing. No TensorFlow here, so this is testable on its own.
"""

from __future__ import annotations

import logging
import re
import sys
import threading

log = logging.getLogger("kerve.server.thread_names")

MAX_BYTES = 15  # TASK_COMM_LEN - 1
_UNNAMED = re.compile(r"^Thread-\d+ \((?P<target>.+)\)$")


def supported() -> bool:
    return sys.platform.startswith("linux")


def os_name(python_name: str) -> str:
    """The kernel name for a Python thread name: its target's for `Thread-N (target)`, cut to 15 bytes whole
    characters."""
    match = _UNNAMED.match(python_name)
    name = match.group("target") if match else python_name
    raw = name.encode()[:MAX_BYTES]
    return raw.decode(errors="ignore")


def set_name(native_id: int, name: str) -> bool:
    """Name thread `native_id` of this process; False when the thread has gone or the name cannot be set."""
    if not supported():
        return False
    try:
        with open(f"/proc/self/task/{native_id}/comm", "w") as f:
            f.write(os_name(name))
    except OSError:  # the thread exited meanwhile, or /proc is not mounted
        return False
    return True


def name_current_thread() -> None:
    """A ThreadPoolExecutor initializer (or the first line of a thread's run): the thread names itself."""
    thread = threading.current_thread()
    set_name(threading.get_native_id(), thread.name)


def name_threads() -> int:
    """Name every running Python thread but the main one after its Python name; how many were named.

    Threads started later (an executor grows on demand) name themselves through `name_current_thread`, or stay
    with the process's name."""
    named = 0
    for thread in threading.enumerate():
        if thread is threading.main_thread() or thread.native_id is None:
            continue
        named += set_name(thread.native_id, thread.name)
    log.debug("named %d threads at the OS level", named)
    return named
