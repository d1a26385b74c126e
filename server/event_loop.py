"""Which event loop runs the server: asyncio's own, or uvloop (libuv, in Cython).

grpc.aio runs every RPC's callbacks, and kerve its request path, on the event-loop thread, which is what saturates
first on a light model (docs/benchmarks.md); uvloop does the loop's own share of that work (scheduling callbacks,
waking tasks, cross-thread wake-ups) in C. On the 2-core benchmark machine five back-to-back pairs of runs did not
show a consistent difference (from -13% to +38% at concurrency 64, c1 latency no better), so asyncio stays the
default and uvloop is a flag to measure on your own hosts. No TensorFlow here.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

EVENT_LOOPS = ("auto", "asyncio", "uvloop")


def resolve(kind: str = "auto") -> str:
    """ "asyncio" or "uvloop": what `kind` means on this install; ValueError for an unknown or missing loop."""
    if kind not in EVENT_LOOPS:
        raise ValueError(f"--event-loop must be one of {', '.join(EVENT_LOOPS)}, got {kind!r}")
    if kind == "asyncio":
        return kind
    if importlib.util.find_spec("uvloop") is not None:
        return "uvloop"
    if kind == "uvloop":
        raise ValueError("--event-loop uvloop: uvloop is not installed (pip install 'kerve[server]')")
    return "asyncio"


def runner(kind: str = "auto") -> tuple[str, Callable[[Coroutine[Any, Any, T]], T]]:
    """(name, run): `run(coro)` runs coro to completion on a fresh loop of that kind, like `asyncio.run`."""
    if resolve(kind) == "uvloop":
        import uvloop

        return f"uvloop {uvloop.__version__}", uvloop.run
    return "asyncio", asyncio.run
