"""How much a model call costs through each TensorFlow call path, in process (no RPC): a server design input.

    .venv/bin/python -m bench.call_paths --models tiny,seed_cnn --batches 1,32

- `signature`: what kerve does today, `tf.saved_model.load(p).signatures["serving_default"](**tensors)` with
  `tf.convert_to_tensor` on the way in and `.numpy()` on the way out (TF2 eager ConcreteFunction call).
- `session`: the same SavedModel loaded into a TF1-style graph (`tf.compat.v1.saved_model.loader.load`) and called
  through `Session.make_callable(fetches, feeds)` with numpy arrays: one C++ `Session::Run` per call, far less
  Python (and GIL) per call.

Both paths are checked to give bit-identical outputs. Wall time and the calling process's CPU time per call are
printed (TF's own threads count in the CPU time).
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


def _time(call: Callable[[], Any], seconds: float) -> tuple[float, float]:
    for _ in range(3):
        call()
    calls, started, cpu = 0, time.perf_counter(), time.process_time()
    while calls < 3 or time.perf_counter() - started < seconds:
        call()
        calls += 1
    return (time.perf_counter() - started) / calls * 1e3, (time.process_time() - cpu) / calls * 1e3


def _signature_caller(fn: Any, inputs: dict[str, np.ndarray], out_names: list[str]) -> Callable[[], Any]:
    import tensorflow as tf

    def call() -> dict[str, np.ndarray]:
        result = fn(**{k: tf.convert_to_tensor(v) for k, v in inputs.items()})
        return {k: result[k].numpy() for k in out_names}

    return call


def _session_caller(
    run: Any, inputs: dict[str, np.ndarray], in_names: list[str], out_names: list[str]
) -> Callable[[], Any]:
    def call() -> dict[str, np.ndarray]:
        return dict(zip(out_names, run(*[inputs[i] for i in in_names]), strict=True))

    return call


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny,seed_cnn")
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--seconds", type=float, default=1.5)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    from bench.models import export

    repo = Path(tempfile.mkdtemp(prefix="kerve-call-paths-"))
    print(
        f"{'model':9s} {'batch':>5s} {'signature ms':>12s} {'(cpu)':>7s} {'session ms':>10s} {'(cpu)':>7s} "
        f"{'saved':>6s}"
    )
    for name in [n for n in args.models.split(",") if n]:
        path = export(MODELS[name], repo)
        fn = tf.saved_model.load(str(path)).signatures["serving_default"]
        graph = tf.Graph()
        with graph.as_default():
            session = tf.compat.v1.Session(graph=graph)
            meta = tf.compat.v1.saved_model.loader.load(session, ["serve"], str(path))
        sig = meta.signature_def["serving_default"]
        in_names = [s.name for s in MODELS[name].inputs]
        out_names = sorted(sig.outputs)
        run = session.make_callable([sig.outputs[o].name for o in out_names], [sig.inputs[i].name for i in in_names])
        rng = np.random.default_rng(0)
        for batch in [int(b) for b in args.batches.split(",") if b]:
            inputs = {s.name: s.sample(rng, batch) for s in MODELS[name].inputs}

            signature_call = _signature_caller(fn, inputs, out_names)
            session_call = _session_caller(run, inputs, in_names, out_names)
            a, b = signature_call(), session_call()
            if not all(np.array_equal(a[k], b[k]) for k in out_names):
                raise SystemExit(f"{name}: the two call paths disagree")
            sig_ms, sig_cpu = _time(signature_call, args.seconds)
            ses_ms, ses_cpu = _time(session_call, args.seconds)
            print(
                f"{name:9s} {batch:5d} {sig_ms:12.3f} {sig_cpu:7.3f} {ses_ms:10.3f} {ses_cpu:7.3f} "
                f"{1 - ses_ms / sig_ms:6.0%}",
                flush=True,
            )
        session.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
