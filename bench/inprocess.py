"""Build the benchmark models into a repository and measure the in-process limit (run as a child process).

    python -m bench.inprocess --repository DIR --models seed_cnn,resnet --batches 1,8,32 --seconds 1.5 --out FILE
    python -m bench.inprocess ... --reuse-exported --as-served '["--max-batch-size=32"]'   # as the server calls them

For each model: export a SavedModel with random weights (or, with `--reuse-exported`, take the one an earlier run
exported into the repository), load it (`tf.saved_model.load(path).signatures["serving_default"]`), then call that
signature directly at each batch size: numpy in (`tf.convert_to_tensor`), numpy out (`.numpy()`), with no RPC and
no batching queue, and TensorFlow's defaults. The best samples/s over the batch sizes is the "in-process best" that
kerve is compared with.

With `--as-served ARGS` each model is instead loaded and called by the server's own code as `kerve serve ARGS` sets
it up (`ServedCalls`): its thread counts, its pool threads sleeping between tasks (unless `--tf-thread-spinning`),
the session call path on CPU and its choice of the calling thread for small batches. The server's model call
differs from the plain signature call in all four, so what kerve's own cost and its model call in the server are
measured against (`bench.ideal`) is this run; `bench.run` makes both and joins them (`bench.inprocess_report`).

Kept in its own process so the orchestrator and the load generator never import TensorFlow, and so the
measurement runs on an otherwise idle machine (no server is up yet); a second process for the second run, because
TensorFlow's threads are set once per process, before its runtime starts."""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.loadgen import machine_busy_s
from bench.models import MODELS, BenchModel

MIN_CALLS = 3
MAX_CALLS = 100_000


Runner = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


def signature_runner(fn: Any) -> Runner:
    """Signature `fn` called directly, as the server's function path calls it: numpy in via `tf.convert_to_tensor`,
    numpy out via `.numpy()`."""
    import tensorflow as tf

    def run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = fn(**{name: tf.convert_to_tensor(value) for name, value in inputs.items()})
        return {name: tensor.numpy() for name, tensor in outputs.items()}

    return run


def caller(fn: Any, inputs: dict[str, np.ndarray]) -> Callable[[], object]:
    """One call of signature `fn` on `inputs` (`signature_runner`). Every bench that times "the in-process call"
    uses this one, so they all time the same thing."""
    return functools.partial(signature_runner(fn), inputs)


def measure(call: Callable[[], object], batch: int, seconds: float, warmup: int = 2) -> dict[str, float]:
    """Call `call` (one model call on `batch` rows) repeatedly for about `seconds` (at least MIN_CALLS calls) after
    `warmup` unmeasured calls."""
    for _ in range(warmup):
        call()
    durations: list[float] = []
    busy_before, own_before = machine_busy_s(), time.process_time()
    started = time.perf_counter()
    while len(durations) < MAX_CALLS and (len(durations) < MIN_CALLS or time.perf_counter() - started < seconds):
        t0 = time.perf_counter()
        call()
        durations.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - started
    other = max(0.0, machine_busy_s() - busy_before - (time.process_time() - own_before)) / elapsed
    return {
        "samples_per_s": batch * len(durations) / elapsed,
        "p50_ms": statistics.median(durations) * 1e3,
        "mean_ms": elapsed / len(durations) * 1e3,
        "ms_per_sample": elapsed / len(durations) / batch * 1e3,
        "calls": len(durations),
        "cpu_cores": round((time.process_time() - own_before) / elapsed, 3),
        "other_cpu_cores": round(other, 3),  # CPU used by anything else on the machine meanwhile
    }


def server_settings(server_args: Sequence[str]) -> Any:
    """`kerve serve <server_args>`'s settings, read by the server's own parser (and its `KERVE_*` environment rule,
    from this process's environment): a `kerve.server.settings.ServerSettings`."""
    from kerve.server import settings

    parser = argparse.ArgumentParser(add_help=False)
    settings.add_arguments(parser)
    parsed, _ = parser.parse_known_args(["--model-repository", ".", *server_args])
    return settings.from_args(parsed)


class DirectCalls:
    """The reference: each model's signature called directly with TensorFlow's defaults (`signature_runner`)."""

    how: dict[str, Any] | None = None  # ServedCalls says how it calls; the reference needs no words

    def load(self, path: Path) -> tuple[Runner, Any]:
        """(inputs -> outputs, nothing to close)."""
        import tensorflow as tf

        return signature_runner(tf.saved_model.load(str(path)).signatures["serving_default"]), None


class ServedCalls:
    """A model called the way `kerve serve <server_args>` calls it, without the server: the same device set up
    (TensorFlow's thread counts, whether its pool threads spin), the same loader and call path, and on the session
    path the same choice for small batches between the calling thread and the pool (`--caller-thread-max-batch`).
    Only one process may set TensorFlow's runtime up, and it must be before anything starts it."""

    def __init__(self, server_args: Sequence[str]) -> None:
        from kerve.server.devices import configure_devices, thread_counts
        from kerve.server.model import ReplicaLoader

        settings = server_settings(server_args)
        devices = configure_devices(
            settings.devices, settings.cpu_replicas, settings.intra_op_threads, settings.inter_op_threads,
            processes=settings.processes, spinning=settings.tf_thread_spinning,
        )  # fmt: skip
        self._loader = ReplicaLoader(devices, settings.call_path, settings.caller_thread_max_batch)
        intra, inter = thread_counts()
        self.how = {
            "server_args": list(server_args),
            "call_path": self._loader.call_path,
            "caller_thread_max_batch": "auto" if settings.caller_thread_max_batch is None else
            settings.caller_thread_max_batch,
            "intra_op_threads": intra,
            "inter_op_threads": inter,
        }  # fmt: skip

    def load(self, path: Path) -> tuple[Runner, Any]:
        """(inputs -> outputs through the first replica, the servable to close when done)."""
        from kerve.server.model_config import ModelConfig

        servable = self._loader(path, ModelConfig())
        return servable.runners("serving_default")[0], servable


def warmup_calls(runner: Runner, batch: int) -> int:
    """Unmeasured calls before a batch size is timed: two (the first traces and allocates), and where the runner
    times both ways for small batches (the session path under `--caller-thread-max-batch auto`) enough for its
    first trials at this size, as a server has made them long before a benchmark's window."""
    choice = getattr(runner, "choice", None)  # server/model.py's _SessionSignature; a plain function has none
    if choice is None or not 0 < batch <= choice.max_rows:
        return 2
    return 2 + choice.trial_calls()


def run(
    repository: Path,
    names: list[str],
    batches: list[int],
    seconds: float,
    max_other_cpu: float = 0.25,
    retries: int = 1,
    served_args: Sequence[str] | None = None,
    reuse_exported: bool = False,
) -> dict[str, Any]:
    """The sweep: each signature called directly (`DirectCalls`), or with `served_args` as `kerve serve
    <served_args>` calls it (`ServedCalls`)."""
    calls = ServedCalls(served_args) if served_args is not None else DirectCalls()  # before TF's runtime starts
    import keras
    import tensorflow as tf

    from bench.models import export
    from kerve.server.devices import thread_spinning

    report: dict[str, Any] = {
        "tf_version": tf.__version__,
        "keras_version": keras.__version__,
        "tf_thread_spinning": thread_spinning(),
        "models": {},
    }
    if calls.how is not None:
        report["served"] = calls.how
    rng = np.random.default_rng(0)
    for name in names:
        model = MODELS[name]
        started = time.monotonic()
        path = exported(model, repository) if reuse_exported else export(model, repository)
        export_s = time.monotonic() - started
        runner, closing = calls.load(path)
        outputs = runner({spec.name: spec.sample(rng, 1) for spec in model.inputs})
        per_batch: dict[str, dict[str, float]] = {}
        for batch in batches:
            call = functools.partial(runner, {spec.name: spec.sample(rng, batch) for spec in model.inputs})
            row = measure(call, batch, seconds, warmup_calls(runner, batch))
            for _ in range(retries):  # disturbed by other processes: measure again, keep the least disturbed
                if row["other_cpu_cores"] <= max_other_cpu:
                    break
                again = measure(call, batch, seconds)
                row = again if again["other_cpu_cores"] < row["other_cpu_cores"] else row
            per_batch[str(batch)] = row
            print(
                f"  in-process {name:9s} batch {batch:4d}: {row['samples_per_s']:10.1f} samples/s, "
                f"p50 {row['p50_ms']:8.3f} ms/call, {row['ms_per_sample']:.3f} ms/sample"
                f"{' (as served)' if calls.how is not None else ''}",
                flush=True,
            )
        if closing is not None:
            closing.close()
        best_batch = max(per_batch, key=lambda b: per_batch[b]["samples_per_s"])
        report["models"][name] = {
            "description": model.description,
            "path": str(path),
            "export_s": round(export_s, 2),
            "inputs": [{"name": s.name, "dtype": s.dtype, "shape": list(s.shape)} for s in model.inputs],
            "outputs": [
                {"name": k, "dtype": str(v.dtype), "shape": list(v.shape[1:])} for k, v in sorted(outputs.items())
            ],
            "batches": per_batch,
            "best": {
                "batch": int(best_batch),
                "samples_per_s": per_batch[best_batch]["samples_per_s"],
                "ms_per_sample": per_batch[best_batch]["ms_per_sample"],
            },
        }
    return report


def exported(model: BenchModel, repository: Path) -> Path:
    """The version an earlier run exported (`bench.models.export`'s layout), so both runs call the same weights."""
    path = repository / model.name / "1"
    if not (path / "saved_model.pb").is_file():
        raise FileNotFoundError(f"--reuse-exported: no SavedModel at {path}")
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--models", required=True, help="comma-separated names from bench.models.MODELS")
    parser.add_argument("--batches", default="1,8,32,128,512")
    parser.add_argument("--seconds", type=float, default=1.5, help="measurement time per batch size")
    parser.add_argument("--max-other-cpu", type=float, default=0.25, help="re-measure a batch size above this")
    parser.add_argument("--retries", type=int, default=1)
    parser.add_argument(
        "--as-served",
        default=None,
        metavar="JSON",
        help="call each model as `kerve serve` with these arguments (a JSON list) calls it, not the signature directly",
    )
    parser.add_argument(
        "--reuse-exported", action="store_true", help="call the models an earlier run exported into --repository"
    )
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    names = [n for n in args.models.split(",") if n]
    batches = [int(b) for b in args.batches.split(",") if b]
    report = run(
        args.repository, names, batches, args.seconds, args.max_other_cpu, args.retries,
        None if args.as_served is None else json.loads(args.as_served), args.reuse_exported,
    )  # fmt: skip
    args.out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
