"""The threads that run models are scheduled below the event loop (Linux per-thread nice).

Why: on a CPU host the event loop thread is the one serial stage every request passes through (decode and enqueue
on the way in, delivery and the response on the way out), while TensorFlow's pool threads and the batch workers
wake and sleep thousands of times a second. Linux favours a thread that has just woken from sleep, so each of
those wake-ups can preempt the loop, and requests wait in its backlog while the cores run model threads that
the loop has not yet fed. Measured on a 2-core host (docs/benchmarks.md, "model threads below the event loop"):
at `seed_cnn` c64 the loop thread waited for a core a quarter of the time; with the model threads at nice +10,
over nine alternating pairs, the light model's unary c64 case served 1.17x, `resnet` streamed 1.11x, `lstm`
1.17-1.21x, the other cases level. A lower priority does not take CPU from the model when the loop has nothing to
do: it only decides who runs first when both want the same core.

On a single usable core that same rule would let a flooded loop take ~90% of the only core from the model, so
the default (`auto`) leaves priorities alone there. Threads inherit their creator's nice value: lowering the
inference workers as they start, and every thread that exists once TensorFlow's runtime is up, covers TF's pools
whichever thread created them. No TensorFlow here, so this is testable on its own; elsewhere than Linux, where a
thread's nice cannot be set through a thread id, it does nothing.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
import threading

log = logging.getLogger("kerve.server.thread_priority")

MAX_NICE = 19
AUTO_NICE = 10  # the measured setting (module docstring); weight 110 against the loop's 1024


def supported() -> bool:
    return sys.platform.startswith("linux") and hasattr(os, "setpriority")


def resolve(requested: int | None, usable_cores: int) -> int:
    """The nice increment to apply: an explicit request as is, `None` (auto) AUTO_NICE on two or more cores."""
    if requested is not None:
        return requested
    return AUTO_NICE if usable_cores >= 2 else 0


def lower_thread(tid: int, increment: int) -> bool:
    """Raise thread `tid`'s nice value by `increment` (capped at 19); False if the thread has gone or it failed.

    Relative to the thread's current value, so a server started under `nice -n 5` keeps its loop at 5 and its
    model threads at 15: lowering needs no privilege, raising back would.
    """
    if increment <= 0 or not supported():
        return False
    try:
        current = os.getpriority(os.PRIO_PROCESS, tid)
        target = min(MAX_NICE, current + increment)
        if target != current:
            os.setpriority(os.PRIO_PROCESS, tid, target)
    except OSError as exc:
        if exc.errno != errno.ESRCH:  # ESRCH: the thread exited meanwhile
            log.warning("could not lower the priority of thread %d: %s", tid, exc)
        return False
    return True


def lower_current_thread(increment: int) -> None:
    """A ThreadPoolExecutor initializer: the worker lowers itself before it runs anything."""
    lower_thread(threading.get_native_id(), increment)


def lower_other_threads(increment: int) -> int:
    """Lower every thread of this process except the calling one (the event loop's); how many were lowered.

    Call it once TensorFlow's runtime is up and before the gRPC server starts its own threads, which stay at the
    loop's priority: they carry every request to and from it.
    """
    if increment <= 0 or not supported():
        return 0
    me = threading.get_native_id()
    try:
        tids = [int(name) for name in os.listdir("/proc/self/task")]
    except OSError as exc:
        log.warning("could not list this process's threads: %s", exc)
        return 0
    return sum(lower_thread(tid, increment) for tid in tids if tid != me)
