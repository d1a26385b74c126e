"""How much a model call costs through each of the server's call paths, in process (no RPC): `--call-path`'s input.

    .venv/bin/python -m bench.call_paths --models tiny,seed_cnn,lstm --batches 1,32
    .venv/bin/python -m bench.call_paths --models seed_cnn,lstm --batches 1,4,8 --gap-ms 1 [--no-tf-thread-spinning]

Both columns call the server's own code (`server/model.py`'s `SavedModelServable(...).signatures[...].run`, numpy
in and out), so the figures are what a batch costs in the server, less the request path:

- `function`: `tf.saved_model.load(p).signatures["serving_default"]`, an eager ConcreteFunction call.
- `session`: the SavedModel's graph in a TF1 Session called through the session's C++ callable (the default on
  CPU): one `Session::RunCallable` per call, far less Python (and GIL) per call.
- `caller`: the same session callable with every op run on the calling thread instead of TensorFlow's inter-op
  pool (`--caller-thread-max-batch`); `vs session` is its time over the pool's (under 1: the caller's thread is
  faster at that batch size, which `--caller-thread-max-batch auto` finds in the server by timing both).

`ulps` is the largest difference between the function's outputs and the session's (either thread) in units in the
last place (0: bit-identical; the seed LSTM's differ by 1-2 at some batch sizes); more than 8 stops the run. The
paths are timed in alternating rounds (noise on a shared host hits all alike); wall time and the calling process's
CPU time per call are printed (TF's own threads count in the CPU time), with the best round of each.

`--gap-ms` sleeps that long after each call, as a server's calls are apart (the gap is timed neither in the wall
nor, beyond what threads burn in it, in the CPU column): TensorFlow's pool threads spin-wait for work after a call,
CPU that back-to-back calls never show. `--no-tf-thread-spinning` makes them sleep at once, as the server's do by
default (its `--tf-thread-spinning`); compare a run with it against one without.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.models import MODELS

PATHS = ("function", "session", "caller")


def _time(call: Callable[[], Any], seconds: float, gap_s: float = 0.0) -> tuple[float, float]:
    """(wall ms, process CPU ms) per call; with a gap, the wall excludes the sleeps and the CPU includes whatever
    TensorFlow's threads burn during them."""
    calls, slept, started, cpu = 0, 0.0, time.perf_counter(), time.process_time()
    while calls < 3 or time.perf_counter() - started < seconds:
        call()
        calls += 1
        if gap_s:
            before = time.perf_counter()
            time.sleep(gap_s)
            slept += time.perf_counter() - before
    return (time.perf_counter() - started - slept) / calls * 1e3, (time.process_time() - cpu) / calls * 1e3


def _ulps(want: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> int:
    if sorted(want) != sorted(got):
        raise SystemExit(f"the two call paths return different outputs: {sorted(want)} vs {sorted(got)}")
    worst = 0
    for name, value in want.items():
        if value.dtype.kind != "f":
            worst = max(worst, 0 if np.array_equal(value, got[name]) else 1 << 30)
            continue
        spacing = np.spacing(np.maximum(np.abs(value), np.abs(got[name])).astype(value.dtype))
        worst = max(worst, int(np.max(np.abs(value.astype(np.float64) - got[name]) / spacing, initial=0)))
    return worst


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny,seed_cnn")
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--seconds", type=float, default=1.5, help="per path per batch size, split over the rounds")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--gap-ms", type=float, default=0.0, help="sleep after each call (a server's calls are apart)")
    parser.add_argument(
        "--tf-thread-spinning",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="TensorFlow's pool threads spin-wait between tasks (TensorFlow's default; the server's is off)",
    )
    args = parser.parse_args()
    if args.gap_ms < 0:
        parser.error("--gap-ms must be >= 0")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

    from kerve.server.devices import configure_spinning, spinning_text

    configure_spinning(args.tf_thread_spinning)  # before anything starts TensorFlow's runtime

    from bench.models import export
    from kerve.server.model import SavedModelServable

    gap = args.gap_ms / 1e3
    repo = Path(tempfile.mkdtemp(prefix="kerve-call-paths-"))
    print(f"TensorFlow's pool threads {spinning_text()} between tasks; "
          f"{args.gap_ms:g} ms between calls")  # fmt: skip
    print(
        f"{'model':11s} {'batch':>5s} {'function ms':>11s} {'(cpu)':>7s} {'session ms':>10s} {'(cpu)':>7s} "
        f"{'saved':>6s} {'ulps':>5s} {'caller ms':>9s} {'(cpu)':>7s} {'vs session':>10s}"
    )
    for name in [n for n in args.models.split(",") if n]:
        path = export(MODELS[name], repo)
        servables = {
            "function": SavedModelServable(path, None, "function"),
            "session": SavedModelServable(path, None, "session"),
            "caller": SavedModelServable(path, None, "session", caller_thread_max_rows=1 << 30),
        }
        runs = {call_path: servable.signature().run for call_path, servable in servables.items()}
        rng = np.random.default_rng(0)
        for batch in [int(b) for b in args.batches.split(",") if b]:
            inputs = {s.name: s.sample(rng, batch) for s in MODELS[name].inputs}
            ulps = max(_ulps(runs["function"](inputs), runs[other](inputs)) for other in ("session", "caller"))
            if ulps > 8:
                raise SystemExit(f"{name}: the two call paths disagree by {ulps} ulps")
            best: dict[str, tuple[float, float]] = {}
            for _ in range(args.rounds):
                for call_path, run in runs.items():
                    run(inputs)  # warm: the first call after the other path's may pay for cold caches
                    timed = _time(lambda run=run, inputs=inputs: run(inputs), args.seconds / args.rounds, gap)
                    best[call_path] = min(best.get(call_path, timed), timed)
            (fn_ms, fn_cpu), (ses_ms, ses_cpu), (own_ms, own_cpu) = best["function"], best["session"], best["caller"]
            print(
                f"{name:11s} {batch:5d} {fn_ms:11.3f} {fn_cpu:7.3f} {ses_ms:10.3f} {ses_cpu:7.3f} "
                f"{1 - ses_ms / fn_ms:6.0%} {ulps:5d} {own_ms:9.3f} {own_cpu:7.3f} {own_ms / ses_ms:10.2f}",
                flush=True,
            )
        for servable in servables.values():
            servable.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
