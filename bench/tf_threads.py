"""How TensorFlow's intra-op thread count changes a model call, in process (no RPC): a server design input.

    .venv/bin/python -m bench.tf_threads --models seed_cnn,resnet --batch 32

Two questions behind kerve's thread defaults (`--intra-op-threads`, `--cpu-replicas`, `--processes`):

- **Batch-1 call with gaps.** `bench.inprocess` calls the model back to back, so TF's pool threads never go idle.
  A server's calls are separated by the RPC round trip; between them the pool threads stop spinning and sleep, and
  the next call pays for waking them. Here the batch-1 signature call is timed back to back and with a sleep of
  `--gaps` ms between calls.
- **Batches side by side.** Throughput at `--batch` with 1 and 2 caller threads calling the same signature at once
  (what two replicas or two server processes do), against one caller using every core.

Each intra-op setting runs in its own child process (TF fixes its thread pools when its runtime starts); `0` is
TF's default, one thread per core. The model is exported once, by the parent, into a temporary repository.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.inprocess import caller
from bench.models import MODELS


def _gapped_p50_ms(call: Any, gap_s: float, seconds: float) -> float:
    times: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 5:
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
        if gap_s:
            time.sleep(gap_s)
    return statistics.median(times) * 1e3


def _side_by_side(call: Any, callers: int, batch: int, seconds: float) -> dict[str, float]:
    counts = [0] * callers
    end = time.perf_counter() + seconds

    def work(index: int) -> None:
        while time.perf_counter() < end:
            call()
            counts[index] += 1

    started, cpu = time.perf_counter(), time.process_time()
    threads = [threading.Thread(target=work, args=(i,)) for i in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    return {"samples_per_s": sum(counts) * batch / elapsed, "cpu_cores": (time.process_time() - cpu) / elapsed}


def child(path: str, model: str, batch: int, gaps_ms: list[float], seconds: float) -> dict[str, Any]:
    import tensorflow as tf

    fn = tf.saved_model.load(path).signatures["serving_default"]
    rng = np.random.default_rng(0)
    one = caller(fn, {s.name: s.sample(rng, 1) for s in MODELS[model].inputs})
    many = caller(fn, {s.name: s.sample(rng, batch) for s in MODELS[model].inputs})
    for _ in range(20):
        one()
    many()
    gapped = {str(gap): _gapped_p50_ms(one, gap / 1e3, seconds) for gap in gaps_ms}
    side = {str(n): _side_by_side(many, n, batch, seconds) for n in (1, 2)}
    return {"batch1_p50_ms_by_gap_ms": gapped, "by_callers": side}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="seed_cnn,resnet")
    parser.add_argument("--batch", type=int, default=32, help="batch size of the side-by-side callers")
    parser.add_argument("--intra", default="0,1", help="intra-op thread counts to compare (0 = TF's default)")
    parser.add_argument("--gaps", default="0,0.5,2", help="sleep between batch-1 calls, ms")
    parser.add_argument("--seconds", type=float, default=2.0, help="per measurement")
    parser.add_argument("--out", type=Path, default=None, help="also write the figures as JSON")
    parser.add_argument("--child", nargs=2, metavar=("PATH", "MODEL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    gaps = [float(g) for g in args.gaps.split(",") if g]
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args.batch, gaps, args.seconds)))
        return 0

    from bench.models import export

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    repo = Path(tempfile.mkdtemp(prefix="kerve-tf-threads-"))
    results: dict[str, dict[str, Any]] = {}
    gap_cols = " ".join(f"{'b1 p50 gap ' + str(g):>15s}" for g in gaps)
    print(f"{'model':9s} {'intra':>5s} {gap_cols} {'b' + str(args.batch) + ' x1 /s':>11s} {'x2 /s':>8s} {'x2/x1':>6s}")
    for model in [m for m in args.models.split(",") if m]:
        path = export(MODELS[model], repo)
        for intra in [int(i) for i in args.intra.split(",") if i]:
            env = {**os.environ}
            if intra:
                env["TF_NUM_INTRAOP_THREADS"] = str(intra)
            command = [sys.executable, "-m", "bench.tf_threads", "--child", str(path), model]
            command += ["--batch", str(args.batch), "--gaps", args.gaps, "--seconds", str(args.seconds)]
            done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
            figures = json.loads(done.stdout.strip().splitlines()[-1])
            results.setdefault(model, {})[str(intra)] = figures
            by_gap, side = figures["batch1_p50_ms_by_gap_ms"], figures["by_callers"]
            one, two = side["1"]["samples_per_s"], side["2"]["samples_per_s"]
            cells = " ".join(f"{by_gap[str(g)]:15.3f}" for g in gaps)
            print(f"{model:9s} {intra:5d} {cells} {one:11.0f} {two:8.0f} {two / one:6.2f}", flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
