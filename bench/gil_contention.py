"""What sharing one process with a busy event loop costs a model call, and what moving the model out would save.

    .venv/bin/python -m bench.gil_contention --models seed_cnn --batch 8 --busy 0,0.5,0.8

Inside kerve a `seed_cnn` batch takes about twice its in-process time (kerve's `/metrics`), and the loop thread
spends more per request than the bare gRPC server does: the two share a process, so they share the GIL (the TF
call has Python around its C++ part, the loop is Python between its waits). This reproduces that without gRPC:

- a *loop* thread alternates pure-Python work and sleeps (waits release the GIL, as `epoll` does) so that it is
  busy `--busy` of the time when alone, like an event loop at that load;
- a *model* thread calls the signature back to back at `--batch` rows, either in the same process (`thread`, what
  kerve does) or through a child process that owns TensorFlow (`process`: inputs and outputs through shared
  memory, one pipe message each way per call, the parent thread blocked in the pipe read with the GIL released).

Per placement and busy level it prints the model's calls/s and p50 call time (as its caller sees it, IPC
included) and the loop's work rate relative to the loop alone. Each placement runs in a fresh process, so the
`process` one has no TF runtime beside its loop, like a server whose models live elsewhere.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from multiprocessing import shared_memory
from pathlib import Path
from typing import Any

import numpy as np

from bench.models import MODELS

PERIOD_S = 0.001  # one loop "turn": busy * PERIOD_S of Python, the rest waiting
ROUNDS = 5


def _loop_work(busy: float, stop: threading.Event, counter: list[int]) -> None:
    """Units of pure-Python work in bursts, with GIL-releasing sleeps between them."""
    while not stop.is_set():
        if busy > 0:
            end = time.perf_counter() + busy * PERIOD_S
            while time.perf_counter() < end:
                total = 0
                for i in range(50):
                    total += i * i
                counter[0] += 1
        if busy < 1:
            time.sleep((1 - busy) * PERIOD_S)


def _in_process_caller(path: str, inputs: dict[str, np.ndarray]) -> Any:
    import tensorflow as tf

    from bench.inprocess import caller

    return caller(tf.saved_model.load(path).signatures["serving_default"], inputs)


def _child(path: str, names: list[str], shm_name: str, conn: Any) -> None:
    """The model's own process: reads inputs from shared memory, writes outputs after them, answers on the pipe."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    fn = tf.saved_model.load(path).signatures["serving_default"]
    shm = shared_memory.SharedMemory(name=shm_name)
    try:
        while (message := conn.recv()) is not None:
            layout, out_offset = message
            tensors = {}
            for name, (offset, dtype, shape) in zip(names, layout, strict=True):
                tensors[name] = tf.convert_to_tensor(np.ndarray(shape, dtype=dtype, buffer=shm.buf, offset=offset))
            offset, reply = out_offset, []
            for key, tensor in sorted(fn(**tensors).items()):
                array = tensor.numpy()
                np.ndarray(array.shape, array.dtype, buffer=shm.buf, offset=offset)[...] = array
                reply.append((key, offset, array.dtype.str, array.shape))
                offset += array.nbytes
            conn.send(reply)
    finally:
        shm.close()


def _process_caller(path: str, inputs: dict[str, np.ndarray]) -> tuple[Any, Any]:
    names = list(inputs)
    size = 64 << 20
    shm = shared_memory.SharedMemory(create=True, size=size)
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_child, args=(path, names, shm.name, child), daemon=True)
    proc.start()
    layout, offset = [], 0
    for name in names:
        array = np.ascontiguousarray(inputs[name])
        np.ndarray(array.shape, array.dtype, buffer=shm.buf, offset=offset)[...] = array
        layout.append((offset, array.dtype.str, array.shape))
        offset += array.nbytes

    def call() -> None:
        parent.send((layout, offset))
        for _key, out_offset, dtype, shape in parent.recv():
            np.ndarray(shape, dtype, buffer=shm.buf, offset=out_offset).copy()  # what a server would encode

    def close() -> None:
        parent.send(None)
        proc.join(30)
        shm.close()
        shm.unlink()

    call()  # waits for the child's TF import and model load
    return call, close


def _measure(call: Any, busy: float, seconds: float, with_model: bool) -> dict[str, float]:
    stop = threading.Event()
    counter = [0]
    loop = threading.Thread(target=_loop_work, args=(busy, stop, counter))
    times: list[float] = []

    def model() -> None:
        while not stop.is_set():
            started = time.perf_counter()
            call()
            times.append(time.perf_counter() - started)

    worker = threading.Thread(target=model) if with_model else None
    loop.start()
    if worker:
        worker.start()
    time.sleep(seconds)
    stop.set()
    loop.join()
    if worker:
        worker.join()
    return {
        "loop_units_per_s": counter[0] / seconds,
        "calls_per_s": len(times) / seconds,
        "call_p50_ms": statistics.median(times) * 1e3 if times else 0.0,
    }


def run_placement(placement: str, path: str, batch: int, model: str, busy_levels: list[float], seconds: float) -> dict:
    rng = np.random.default_rng(0)
    inputs = {spec.name: spec.sample(rng, batch) for spec in MODELS[model].inputs}
    close = None
    if placement == "thread":
        call = _in_process_caller(path, inputs)
    else:
        call, close = _process_caller(path, inputs)
    for _ in range(20):
        call()
    out: dict[str, Any] = {}
    try:
        for busy in busy_levels:
            # Alone and with the model in alternation, ROUNDS times, medians: this VM's speed drifts by tens of
            # percent over seconds, so only neighbouring windows compare.
            ratios, calls, p50s = [], [], []
            for _ in range(ROUNDS):
                alone = _measure(call, busy, seconds / ROUNDS, with_model=False) if busy > 0 else None
                both = _measure(call, busy, seconds / ROUNDS, with_model=True)
                if alone:
                    ratios.append(both["loop_units_per_s"] / alone["loop_units_per_s"])
                calls.append(both["calls_per_s"])
                p50s.append(both["call_p50_ms"])
            out[str(busy)] = {
                "calls_per_s": round(statistics.median(calls), 1),
                "call_p50_ms": round(statistics.median(p50s), 3),
                "loop_work_vs_alone": round(statistics.median(ratios), 3) if ratios else None,
            }
    finally:
        if close:
            close()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="seed_cnn")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--busy", default="0,0.5,0.8", help="the loop thread's busy fraction when alone, 0..1")
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    parser.add_argument("--placements", default="thread,process")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--child", nargs=2, metavar=("PLACEMENT", "PATH"), help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    busy = [float(b) for b in args.busy.split(",") if b]
    if args.child:
        placement, path = args.child
        print(json.dumps(run_placement(placement, path, args.batch, args.model, busy, args.seconds)))
        return 0

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    results: dict[str, dict[str, Any]] = {}
    print(f"{'model':9s} {'placement':9s} {'busy':>4s} {'model calls/s':>13s} {'call p50 ms':>11s} {'loop work':>9s}")
    with tempfile.TemporaryDirectory(prefix="kerve-gil-") as tmp:
        for name in (m for m in args.models.split(",") if m):
            subprocess.run(
                [sys.executable, "-c", f"from bench.models import MODELS, export; from pathlib import Path; "
                 f"export(MODELS[{name!r}], Path({tmp!r}))"],
                check=True,
            )  # fmt: skip
            path = str(Path(tmp) / name / "1")
            for placement in (p for p in args.placements.split(",") if p):
                cmd = [
                    sys.executable, "-m", "bench.gil_contention", "--child", placement, path, "--model", name,
                    "--batch", str(args.batch), "--busy", args.busy, "--seconds", str(args.seconds),
                ]  # fmt: skip
                done = subprocess.run(cmd, check=True, capture_output=True, text=True)
                rows = json.loads(done.stdout.strip().splitlines()[-1])
                results.setdefault(name, {})[placement] = rows
                for level, row in rows.items():
                    work = "-" if row["loop_work_vs_alone"] is None else f"{row['loop_work_vs_alone']:.2f}"
                    print(
                        f"{name:9s} {placement:9s} {float(level):4.1f} {row['calls_per_s']:13.1f} "
                        f"{row['call_p50_ms']:11.3f} {work:>9s}",
                        flush=True,
                    )
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
