"""Keep the garbage collector's full passes off the request path.

With TensorFlow and its models loaded a server holds some 350k objects that Python's cyclic collector tracks
(354k with the three benchmark models), and a full collection walks every one of them with the GIL held:
160-250 ms on the 2-core VM (160-190 in process, up to 250 in a loaded server), a stall for every request in
flight. Under load, whatever leaves garbage that only the cyclic collector can free sets off young collections,
and the objects of requests in flight that they promote add up to a full pass: with a reference cycle per
request (since fixed in inference.Call) that was 3-4 full passes a minute at 3000 requests/s. Yet none of the
long-lived objects becomes garbage while the loaded models stay the same. So after each change to the loaded
models the server collects once and freezes what survives (`gc.freeze`): later passes walk only what was made
since, 7-16 ms in that measurement (docs/benchmarks.md, seventh session).

Each change unfreezes first, so that the reference cycles of an unloaded version are collected instead of kept for
the life of the process. Reference counting frees everything else as usual, frozen or not; only an object that
was alive at a freeze and later becomes part of a garbage cycle waits for the next model change.
"""

from __future__ import annotations

import gc
import logging
import time

log = logging.getLogger("kerve.server.heap")


def settle() -> float:
    """Collect everything (the one full pass, at a model change instead of under load) and freeze the survivors.

    Returns the seconds it took; runs on the event loop thread, which it holds for that long.
    """
    started = time.perf_counter()
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    took = time.perf_counter() - started
    log.info("froze %d objects after a model change (full collection: %.0f ms)", gc.get_freeze_count(), took * 1e3)
    return took
