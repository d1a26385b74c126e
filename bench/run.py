"""kerve benchmark: the in-process limit, the bare-gRPC ceiling and kerve, side by side, in one run.

    .venv/bin/python -m bench.run                      # full run (~5-8 min on 2 cores)
    .venv/bin/python -m bench.run --quick --models tiny --concurrency 1,4 --out /tmp/bench.json
    .venv/bin/python -m bench.run --server-arg=--max-batch-size=64 --server-arg=--batch-timeout-us=500

1. In process: each model's `serving_default` signature called directly at batch 1..512 (child process), with
   TensorFlow's defaults, and in a second child the same models called by kerve's own code as the server under
   test would call them (`bench.inprocess --as-served`: its threads, call path and small-batch choice).
2. Bare gRPC ceiling: `bench.ceiling`, a trivial grpc.aio server answering ModelInfer/ModelStreamInfer with a canned
   response of the model's output size, driven by the same load generator at the same concurrency. At concurrency
   1 also the c1 floor: the same server running each model's batch-1 call in a worker thread before answering
   (`bench.ceiling --model`), i.e. no code of its own between gRPC and the model.
3. kerve: `python -m kerve serve` on a free loopback port (its Prometheus port on another, read for the mean batch
   size; plus any `--server-arg`), batch-1 requests at each concurrency, unary ModelInfer and (unless `--modes
   unary`) ModelStreamInfer.

The ceiling and kerve run at the same time (each idle while the other is measured) and are measured one after the
other for each case, so slow drift on the machine hits both alike. Results: a table on stdout and a JSON file
(default bench/results/latest.json). The load generator runs on the same machine as the servers and shares its
cores: it is part of what is measured, and the CPU it uses is reported next to the server's.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/run.py`: make `bench` and `kerve` importable from the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from bench import h2load, ideal, loadgen, profile, report, threads
from bench.inprocess_report import batch1_p50_ms, merge_as_served, served_figures, sweeps
from bench.models import DEFAULT_MODELS, MODELS, compute_bound_warnings
from kerve.server import event_loop, slot_choice
from kerve.server.call_choice import logged_choices

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "bench" / "results" / "latest.json"
PAYLOADS_PER_MODEL = 16
BARE_MODEL = "bare_model"  # the bare server that runs the model's call in a thread (bench.ceiling --model): c1 only
SHARED_CORES_NOTE = (
    "load generator, servers and (for the in-process rows) TensorFlow all run on the same {cores} core(s): "
    "the client's CPU is taken from the server's, so every RPC figure here is a lower bound for a server "
    "with dedicated cores"
)


# ------------------------------------------------------------------------------------------------ arguments


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def known_names(text: str, known: Iterable[str], what: str) -> list[str]:
    """Comma-separated names, each one of `known` (argparse's error naming the unknown ones otherwise)."""
    choices = list(known)
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in choices]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"unknown {what}(s) {unknown}; choose from {', '.join(choices)}")
    return names


def model_list(text: str) -> list[str]:
    """argparse type for --models: comma-separated benchmark model names, all known."""
    return known_names(text, MODELS, "model")


def _mode_list(text: str) -> list[str]:
    modes = [m.strip() for m in text.split(",") if m.strip()]
    if not modes or any(m not in loadgen.MODES for m in modes):
        raise argparse.ArgumentTypeError(f"modes are {', '.join(loadgen.MODES)}, got {text!r}")
    return modes


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.run",
        description="In-process limit vs bare gRPC vs kerve, side by side.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--models", type=model_list, default=list(DEFAULT_MODELS), help=f"from {', '.join(MODELS)}")
    p.add_argument("--concurrency", type=_int_list, default=[1, 8, 64], help="in-flight batch-1 requests")
    p.add_argument("--modes", type=_mode_list, default=None, help="unary,stream (default both; --quick: unary)")
    p.add_argument("--duration", type=float, default=None, help="measurement window, s (default 5; --quick: 1)")
    p.add_argument("--warmup", type=float, default=None, help="warm-up before each window, s (1; --quick: 0.5)")
    p.add_argument("--batches", type=_int_list, default=None, help="in-process batch sizes (1,8,32,128,512)")
    p.add_argument("--inprocess-seconds", type=float, default=None, help="per batch size (1.5; --quick: 0.3)")
    p.add_argument("--quick", action="store_true", help="short windows and fewer batch sizes, for smoke tests")
    p.add_argument("--client-procs", type=int, default=os.cpu_count() or 1, help="load generator processes (at most c)")
    p.add_argument(
        "--channels",
        type=int,
        default=1,
        help="gRPC connections per load generator process (a `--processes N` server needs several: the kernel "
        "spreads connections, not requests, over its processes)",
    )
    p.add_argument(
        "--stream-depth",
        type=int,
        default=1,
        help="stream mode: requests in flight per stream (c/depth streams, pipelined; 1 = a stream per request)",
    )
    p.add_argument(
        "--event-loop",
        choices=["auto", "asyncio", "uvloop"],
        default="asyncio",
        help="event loop of both servers, kerve (--event-loop) and the bare ceiling (auto: uvloop when installed)",
    )
    p.add_argument(
        "--server-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra `kerve serve` argument, repeatable: --server-arg=--max-batch-size=64",
    )
    p.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="environment variable for the kerve server only, repeatable (--server-env TF_NUM_INTRAOP_THREADS=1)",
    )
    p.add_argument(
        "--model-config",
        action="append",
        default=[],
        metavar="MODEL:YAML",
        help="config.yaml for one benchmark model, repeatable: --model-config 'seed_cnn:replicas: 1'",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        help="priming deadline, and how long after the window a request may stay unanswered, s",
    )
    p.add_argument(
        "--max-other-cpu",
        type=float,
        default=0.25,
        help="a case during which other processes used more cores than this is measured again (see --retries)",
    )
    p.add_argument("--retries", type=int, default=1, help="re-measurements of a disturbed case (least disturbed kept)")
    p.add_argument(
        "--retry-after-s",
        type=float,
        default=360.0,
        help="no more re-measurements once the run is this old (keeps the default run near 8 minutes)",
    )
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        help="before each case, wait up to this many seconds in all for other processes to go below --max-other-cpu",
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file")
    p.add_argument("--keep-work", action="store_true", help="keep the temporary model repository and server logs")
    p.add_argument(
        "--h2load",
        action="store_true",
        help="also drive the unary cases with h2load (C client, if installed) to see what the Python client costs",
    )
    p.add_argument("--profile", action="store_true", help="py-spy the servers during an extra run of --profile-case")
    p.add_argument("--profile-case", default="seed_cnn/c64", help="MODEL/cCONCURRENCY to profile")
    p.add_argument("--profile-mode", choices=loadgen.MODES, default=loadgen.UNARY, help="the profiled case's mode")
    p.add_argument("--profile-seconds", type=float, default=8.0)
    p.add_argument(
        "--profile-native", action="store_true", help="py-spy --native (C frames; pauses the server per sample)"
    )
    return p


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    quick = args.quick
    args.modes = args.modes or ([loadgen.UNARY] if quick else list(loadgen.MODES))
    args.duration = args.duration if args.duration is not None else (1.0 if quick else 5.0)
    args.warmup = args.warmup if args.warmup is not None else (0.5 if quick else 1.0)
    args.batches = args.batches or ([1, 8, 32] if quick else [1, 8, 32, 128, 512])
    args.inprocess_seconds = args.inprocess_seconds if args.inprocess_seconds is not None else (0.3 if quick else 1.5)
    if args.duration <= 0 or args.warmup < 0 or args.inprocess_seconds <= 0:
        raise SystemExit("--duration and --inprocess-seconds must be > 0, --warmup >= 0")
    if args.client_procs < 1 or args.channels < 1 or args.stream_depth < 1:
        raise SystemExit("--client-procs, --channels and --stream-depth must be >= 1")
    bad = [item for item in args.server_env if "=" not in item or not item.split("=", 1)[0]]
    if bad:
        raise SystemExit(f"--server-env expects KEY=VALUE, got {bad}")
    bad = [item for item in args.model_config if item.split(":", 1)[0] not in args.models or ":" not in item]
    if bad:
        raise SystemExit(f"--model-config expects MODEL:YAML for a model in --models, got {bad}")
    return args


# ------------------------------------------------------------------------------------------------ machine


def _cpuinfo() -> dict[str, Any]:
    info: dict[str, Any] = {"cpu_model": platform.processor() or "unknown", "cpu_flags_avx512": False}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name":
            info["cpu_model"] = value.strip()
        elif key == "cpu MHz" and "cpu_mhz" not in info:
            info["cpu_mhz"] = float(value)
        elif key == "flags" and "cpu_flags_avx2" not in info:
            flags = value.split()
            info["cpu_flags_avx2"] = "avx2" in flags
            info["cpu_flags_avx512"] = "avx512f" in flags
    return info


def _git(*args: str) -> str:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def machine_info() -> dict[str, Any]:
    import grpc

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return {
        **_cpuinfo(),
        "cores": cores,
        "memory_gib": mem_gib,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else None,
        "note": SHARED_CORES_NOTE.format(cores=cores),
    }


# ------------------------------------------------------------------------------------------------ processes


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, **(extra or {})}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


class Server:
    """A server subprocess on a free loopback port, with its log in the work directory."""

    def __init__(
        self,
        name: str,
        cmd: list[str],
        port: int,
        log_path: Path,
        env: dict[str, str] | None = None,
        metrics_url: str | None = None,
    ) -> None:
        self.name, self.cmd, self.port, self.log_path = name, cmd, port, log_path
        self.target = f"127.0.0.1:{port}"
        self.metrics_url = metrics_url
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=_env(env), cwd=ROOT)

    def wait_ready(self, deadline_s: float, models: list[str]) -> None:
        from kerve.client import Client
        from kerve.quickstart import wait_until_ready

        try:
            with Client(self.target, timeout=5.0) as client:
                wait_until_ready(client, self.proc, deadline_s)
                for model in models:
                    wait_until_ready(client, self.proc, deadline_s, model)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"{self.name} did not become ready: {exc}\n{self.log_tail()}") from None

    def pids(self) -> list[int]:
        """The server process and its children (the processes of `kerve serve --processes N`)."""
        try:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        except OSError:
            children = []
        return [self.proc.pid, *map(int, children)]

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return "\n".join(f"    | {line}" for line in text)

    def stop(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()


def run_inprocess(
    args: argparse.Namespace, repo: Path, out: Path, *extra: str, env: dict[str, str] | None = None
) -> dict[str, Any]:
    cmd = [
        sys.executable, "-m", "bench.inprocess", "--repository", str(repo), "--models", ",".join(args.models),
        "--batches", ",".join(map(str, args.batches)), "--seconds", str(args.inprocess_seconds), "--out", str(out),
        "--max-other-cpu", str(args.max_other_cpu), "--retries", str(args.retries), *extra,
    ]  # fmt: skip
    subprocess.run(cmd, check=True, env=_env(env), cwd=ROOT, timeout=900)
    return json.loads(out.read_text())


def run_inprocess_both(
    args: argparse.Namespace,
    repo: Path,
    work: Path,
    server_args: list[str],
    server_env: dict[str, str] | None = None,
    between: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Both in-process sweeps as one report (`bench.inprocess_report`): the signature called directly, exporting
    the models into `repo`, then the same models called as `kerve serve <server_args>` calls them (`between` runs
    in between)."""
    direct = run_inprocess(args, repo, work / "inprocess.json")
    print("  again, each model called by kerve's own code as the server under test calls it")
    if between is not None:
        between()
    served = run_inprocess(
        args, repo, work / "inprocess-as-served.json", "--reuse-exported", *as_served(server_args), env=server_env
    )
    return merge_as_served(direct, served)


def as_served(server_args: list[str]) -> list[str]:
    """The `bench.inprocess` / `bench.ceiling --model` arguments that call a model as `kerve serve <server_args>`
    does (run them with the server's `--server-env` too: its `KERVE_*` variables are settings)."""
    return ["--as-served", json.dumps(server_args)]


def build_payloads(model: str, seed: int = 1) -> list[bytes]:
    """Serialized batch-1 ModelInferRequests with random inputs, exactly what the SDK sends (raw contents)."""
    from kerve.client import wire

    rng = np.random.default_rng(seed)
    spec = MODELS[model]
    return [
        wire.build_infer_request(model, {s.name: s.sample(rng, 1) for s in spec.inputs}).SerializeToString()
        for _ in range(PAYLOADS_PER_MODEL)
    ]


# ------------------------------------------------------------------------------------------------ results


def _entry(result: loadgen.LoadResult) -> dict[str, Any]:
    window = result.duration_s
    server_cpu_s = sum(result.observed_cpu_s.values())  # every process of the server under test
    return {
        "samples_per_s": round(result.per_s, 2),  # batch-1 requests: samples/s == requests/s
        "mean_ms": round(result.mean_ms(), 4),
        "p50_ms": round(result.percentile_ms(50), 4),
        "p90_ms": round(result.percentile_ms(90), 4),
        "p99_ms": round(result.percentile_ms(99), 4),
        "requests": result.requests,
        "errors": result.errors,
        "server_cpu_cores": round(server_cpu_s / window, 3),
        "client_cpu_cores": round(result.client_cpu_s / window, 3),
        # Whatever else kept the cores busy in the window (other processes, the kernel's network stack
        # not charged to either side): near 0 on an otherwise idle machine.
        "other_cpu_cores": round(max(0.0, result.machine_busy_s - result.client_cpu_s - server_cpu_s) / window, 3),
        # Cores no process used in the window: well above 0 with the server, generator and model all waiting on
        # each other means a serial stage (the event loop, the GIL, a replica), not the CPU, bounds the case.
        "idle_cores": round(result.machine_idle_s / window, 3),
        "client_procs": result.procs,
        # CPU time per request: what one request costs each side, whatever the concurrency
        "server_cpu_ms_per_req": round(server_cpu_s / max(1, result.requests) * 1e3, 4),
        "client_cpu_ms_per_req": round(result.client_cpu_s / max(1, result.requests) * 1e3, 4),
        **({"first_error": result.first_error} if result.first_error else {}),
    }


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 4) if b > 0 else None


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_inprocess(inprocess: dict[str, Any]) -> None:
    print("\nIn process (direct: the signature called with TF's defaults; served: called by kerve's code as it serves)")
    print(
        f"  {'model':9s} {'run':>6s} {'batch':>5s} {'samples/s':>11s} {'p50 ms/call':>12s} {'ms/sample':>10s} "
        f"{'CPU':>5s} {'other':>6s}"
    )
    for name, m in inprocess.items():
        for run, gave_best, rows in sweeps(m):
            for batch, row in rows.items():
                best = " <- best" if gave_best and int(batch) == m["best"]["batch"] else ""
                print(
                    f"  {name:9s} {run:>6s} {batch:>5s} {row['samples_per_s']:11.1f} {row['p50_ms']:12.3f} "
                    f"{row['ms_per_sample']:10.3f} {row.get('cpu_cores', 0.0):5.2f} "
                    f"{row.get('other_cpu_cores', 0.0):6.2f}{best}"
                )


def print_table(results: dict[str, Any], modes: list[str]) -> None:
    header = (
        f"  {'model':9s} {'mode':6s} {'c':>3s} | {'ceiling/s':>9s} {'p50':>7s} {'p99':>7s} | "
        f"{'kerve/s':>9s} {'p50':>7s} {'p99':>7s} | {'vs ceil':>7s} {'vs inproc':>9s} | "
        f"{'srv CPU':>7s} {'gen CPU':>7s} {'other':>5s} {'idle':>5s} {'batch':>5s} {'busy':>5s} | "
        f"{'ideal':>5s} {'own ms':>6s} | "
        f"{'in srv':>7s} {'outside':>7s}"
    )
    print(
        "\nRPC: batch-1 requests, closed loop (samples/s; latency in ms; CPU in cores busy during the window; "
        "idle = cores nothing used; batch = kerve's mean samples per model execution; busy = the share of the window "
        "a model call ran (summed over replicas); ideal = what a server with no cost of its own could "
        "reach, as a ratio to the ceiling; own ms = kerve's own CPU per request, model and bare gRPC taken out: "
        "bench/ideal.py; in srv / outside = a request's mean time inside kerve's handler, decoded to response "
        "built, and the rest of the client's mean latency)"
    )
    print(header)
    print("  " + "-" * (len(header) - 2))
    for mode in modes:
        kerve_rows = results if mode == loadgen.UNARY else results.get("streaming", {})
        ceiling_rows = results["grpc_ceiling"][mode]
        for key, k in kerve_rows.items():
            if "/c" not in key or not isinstance(k, dict) or "samples_per_s" not in k:
                continue
            model, conc = key.split("/c")
            c = ceiling_rows.get(key, {})
            print(
                f"  {model:9s} {mode:6s} {conc:>3s} | {_fmt(c.get('samples_per_s'), '9.0f')} "
                f"{_fmt(c.get('p50_ms'), '7.3f')} {_fmt(c.get('p99_ms'), '7.3f')} | "
                f"{k['samples_per_s']:9.0f} {k['p50_ms']:7.3f} {k['p99_ms']:7.3f} | "
                f"{_fmt(k['ratio_vs_grpc_ceiling'], '7.3f')} {_fmt(k['ratio_vs_inprocess_best'], '9.3f')} | "
                f"{k['server_cpu_cores']:7.2f} {k['client_cpu_cores']:7.2f} {k['other_cpu_cores']:5.2f} "
                f"{_fmt(k.get('idle_cores'), '5.2f')} {_fmt(k.get('mean_batch'), '5.1f')} "
                f"{_fmt(k.get('model_busy'), '5.2f')} | {_fmt(k.get('ideal_ratio_vs_grpc_ceiling'), '5.2f')} "
                f"{_fmt(k.get('kerve_own_cpu_ms_per_req'), '6.3f')} | "
                f"{_fmt(k.get('server_ms_per_req'), '7.2f')} {_fmt(k.get('outside_server_ms_per_req'), '7.2f')}"
                + (f"  ERRORS {k['errors']}" if k["errors"] else "")
                + ("  (disturbed by other processes)" if k.get("disturbed") else "")
            )


# ------------------------------------------------------------------------------------------------ main


def _profile_case(
    args: argparse.Namespace,
    gen: loadgen.LoadGenerator,
    servers: dict[str, Server],
    payloads: dict[str, list[bytes]],
    work: Path,
) -> dict[str, Any]:
    exe = profile.find_py_spy()
    if exe is None:
        print("profile: py-spy not found (pip install py-spy); skipped")
        return {"skipped": "py-spy not installed"}
    model, _, conc = args.profile_case.partition("/c")
    if model not in payloads or not conc.isdigit():
        print(f"profile: case {args.profile_case!r} is not among the models run; skipped")
        return {"skipped": f"case {args.profile_case!r} not run"}
    mode = args.profile_mode
    report: dict[str, Any] = {"case": args.profile_case, "mode": mode, "seconds": args.profile_seconds}
    for name, server in servers.items():
        if name == BARE_MODEL:
            continue
        raw = work / f"profile-{name}.txt"
        spy = profile.PySpy(exe, server.proc.pid, args.profile_seconds, raw, native=args.profile_native)
        result = gen.run(
            server.target, mode, payloads[model], int(conc), args.warmup, args.profile_seconds + 1.0,
            timeout_s=args.timeout, on_window_start=spy.start, channels=args.channels, stream_depth=args.stream_depth,
        )  # fmt: skip
        err = spy.wait()
        stacks = profile.parse(raw.read_text()) if raw.exists() else None
        if not stacks:
            print(f"profile {name}: py-spy recorded nothing: {err.strip()[:500]}")
            report[name] = {"error": err.strip()[:2000] or "no samples"}
            continue
        summary = profile.summarize(stacks, seconds=args.profile_seconds, rate=spy.rate, drop_idle=args.profile_native)
        summary["samples_per_s_while_profiled"] = round(result.per_s, 1)
        report[name] = summary
        how = "py-spy --native" if args.profile_native else "py-spy, non-idle Python stacks"
        print("\n" + profile.format_summary(f"profile {name} {args.profile_case} {mode} ({how})", summary))
        stacks_out = args.out.with_name(f"profile-{name}-{model}-{mode}-c{conc}.json")
        stacks_out.write_text(json.dumps({";".join(s): n for s, n in stacks.most_common()}, indent=0))
        report[name]["stacks_file"] = str(stacks_out)
    return report


def response_len(target: str, payload: bytes) -> int:
    """Serialized size of the server's answer to `payload` (one unary call)."""
    import grpc

    with grpc.insecure_channel(target) as channel:
        return len(channel.unary_unary(loadgen.UNARY_METHOD)(payload, timeout=30))


_COUNTED = (
    "kerve_batch_size_sum",
    "kerve_batch_size_count",
    "kerve_compute_duration_seconds_sum",
    "kerve_request_duration_seconds_sum",
    "kerve_request_duration_seconds_count",
)
_REQUESTS = "kerve_request_duration_seconds_count"
CATCH_UP_S = 5.0  # how long a case waits for a group's /metrics to include its window (pushes: every second)


def server_counts(metrics_url: str, model: str) -> dict[str, float] | None:
    """kerve's own counts for a model so far: samples and model executions (kerve_batch_size), seconds inside
    model calls, and requests with their seconds from decode to response (kerve_request_duration_seconds),
    summed over the processes of a `--processes N` server, where ModelStatistics would answer for one process.
    A group's figures reach /metrics up to a second late: the case's window shifts by that much, which moves its
    ratios (samples per batch, seconds per request) little and is why none of them is a bare count; after the
    window the case waits for them to include its requests (`_caught_up`)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(metrics_url, timeout=10) as response:
            text = response.read().decode()
    except OSError:
        return None
    totals = dict.fromkeys(_COUNTED, 0.0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in totals and sample.labels.get("model") == model:
                totals[sample.name] += sample.value
    return totals


def _server_side(
    before: dict[str, float], after: dict[str, float], client_mean_ms: float, window_s: float
) -> dict[str, float]:
    """What the case's counts say about batching and where a request's time went (over the measured window, as
    the client's mean: counted from the window's start, so the warm-up's slower first requests stay out)."""
    out: dict[str, float] = {}
    d = {name: after[name] - before[name] for name in _COUNTED}
    executions = d["kerve_batch_size_count"]
    if executions > 0:
        # Samples per model execution: how well the server batched; and how long a model call took inside the
        # server (against the in-process call at that batch: bench/ideal.py).
        out["mean_batch"] = round(d["kerve_batch_size_sum"] / executions, 2)
        out["model_ms_per_batch"] = round(d["kerve_compute_duration_seconds_sum"] / executions * 1e3, 4)
        # The share of the window a model call was running, summed over replicas (and processes): near 1 per
        # replica, the replicas bound the case; well below with idle cores, something serial before them does.
        out["model_busy"] = round(d["kerve_compute_duration_seconds_sum"] / window_s, 3)
    requests = d["kerve_request_duration_seconds_count"]
    if requests > 0:
        # A request's time inside kerve's handler (decoded -> response built: validation, queue, model, outputs)
        # and the rest of what the client waited (gRPC in and out, waiting for the event loop, the generator).
        out["server_ms_per_req"] = round(d["kerve_request_duration_seconds_sum"] / requests * 1e3, 4)
        out["outside_server_ms_per_req"] = round(client_mean_ms - out["server_ms_per_req"], 4)
    return out


def _caught_up(metrics_url: str, model: str, before: dict[str, float], requests: int) -> dict[str, float] | None:
    """The counts once they include the window's `requests` (at once for one process, whose /metrics is exact at
    every scrape; within a push or two for a group), or as they are after CATCH_UP_S."""
    deadline = time.monotonic() + CATCH_UP_S
    while True:
        after = server_counts(metrics_url, model)
        counted = None if after is None else after[_REQUESTS] - before[_REQUESTS]
        if counted is None or counted >= requests or time.monotonic() >= deadline:
            return after
        time.sleep(0.1)


def _count_into(counted: list[dict[str, float] | None], metrics_url: str | None, model: str) -> None:
    counted.append(server_counts(metrics_url, model) if metrics_url else None)


def _snapshot_into(snapshots: list[threads.Snapshot], pids: list[int]) -> None:
    snapshots.append(threads.snapshot(pids))


def _window_start(
    snapshots: list[threads.Snapshot],
    pids: list[int],
    counted: list[dict[str, float] | None],
    metrics_url: str | None,
    model: str,
) -> None:
    _snapshot_into(snapshots, pids)
    _count_into(counted, metrics_url, model)


def measure_case(
    args: argparse.Namespace,
    gen: loadgen.LoadGenerator,
    servers: dict[str, Server],
    model: str,
    payloads: list[bytes],
    mode: str,
    concurrency: int,
) -> dict[str, dict[str, Any]]:
    """One case on every server, one after the other (the idle one costs next to nothing meanwhile)."""
    row: dict[str, dict[str, Any]] = {}
    for name, server in servers.items():
        if server.proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {server.proc.returncode}\n{server.log_tail()}")
        counted: list[dict[str, float] | None] = []  # the server's counts when the window starts
        pids = server.pids()
        per_thread: list[threads.Snapshot] = []  # the server's threads at the window's start and end
        window_started = functools.partial(_window_start, per_thread, pids, counted, server.metrics_url, model)
        result = gen.run(
            server.target, mode, payloads, concurrency, args.warmup, args.duration,
            timeout_s=args.timeout, observe_pids=pids, on_window_start=window_started,
            on_window_end=functools.partial(_snapshot_into, per_thread, pids),
            channels=args.channels, stream_depth=args.stream_depth,
        )  # fmt: skip
        row[name] = _entry(result)
        if len(per_thread) == 2 and threads.available():
            row[name]["threads"] = threads.per_request(*per_thread, result.requests)
        before = counted[0] if counted else None
        after = None
        if before is not None and server.metrics_url:
            after = _caught_up(server.metrics_url, model, before, row[name]["requests"])
        if before is not None and after is not None:
            row[name].update(_server_side(before, after, row[name]["mean_ms"], result.duration_s))
    return row


class Quiet:
    """Waits (up to a total budget) for the machine to be quiet: processes other than ours below a CPU threshold."""

    def __init__(self, budget_s: float, threshold: float, own_pids: list[int]) -> None:
        self.budget_s, self.threshold, self.own_pids = budget_s, threshold, own_pids
        self.waited_s = 0.0

    def other_cores(self, sample_s: float = 1.0) -> float:
        pids = [os.getpid(), *self.own_pids]
        busy, own = loadgen.machine_busy_s(), sum(loadgen.proc_cpu_s(p) for p in pids)
        time.sleep(sample_s)
        busy, own = loadgen.machine_busy_s() - busy, sum(loadgen.proc_cpu_s(p) for p in pids) - own
        return max(0.0, busy - own) / sample_s

    def wait(self, key: str, mode: str) -> None:
        if self.waited_s >= self.budget_s:
            return
        started = time.monotonic()
        other = self.other_cores()
        while other > self.threshold and self.waited_s + time.monotonic() - started < self.budget_s:
            print(f"  {key:14s} {mode:6s} waiting for a quiet machine (other processes use {other:.2f} cores)")
            time.sleep(4.0)
            other = self.other_cores()
        self.waited_s += time.monotonic() - started


def _other(row: dict[str, dict[str, Any]]) -> float:
    return max(entry["other_cpu_cores"] for entry in row.values())


def print_caller_thread_choices(choices: list[dict[str, Any]]) -> None:
    """One line per signature and replica: the row buckets kerve runs on the calling thread and on the pool (a
    bucket whose choice changed when it was timed again: its last choice)."""
    last = {(choice["label"], choice["rows"]): choice["caller_thread"] for choice in choices}
    ways: dict[str, dict[bool, list[str]]] = {}
    for (label, rows), caller_thread in last.items():
        ways.setdefault(label, {True: [], False: []})[caller_thread].append(rows)
    if ways:
        print("\nkerve's small batches (--caller-thread-max-batch auto), by rows: calling thread | inter-op pool")
    for label, by_way in ways.items():
        caller, pool = (", ".join(sorted(by_way[way], key=lambda r: int(r.split("-")[0]))) for way in (True, False))
        print(f"  {label}: {caller or '-'} | {pool or '-'}")


def print_slot_choices(choices: list[dict[str, Any]]) -> None:
    """One line per signature: the batches at once per replica `auto` chose, in order (the last is in force)."""
    by_label: dict[str, list[str]] = {}
    for choice in choices:
        by_label.setdefault(choice["label"], []).append(
            f"{choice['batches_per_replica']} ({choice['more_rows_per_s']} / {choice['one_rows_per_s']} rows/s)"
        )
    if by_label:
        print("\nkerve's batches at once per replica (--batches-per-replica auto), in order (rows/s with 2 / 1):")
    for label, chosen in by_label.items():
        print(f"  {label}: {', '.join(chosen)}")


def main(argv: list[str] | None = None) -> int:
    args = resolve(build_parser().parse_args(argv))
    from kerve.quickstart import free_port

    machine = machine_info()
    started = time.monotonic()
    print(f"kerve bench: {machine['cpu_model']}, {machine['cores']} cores; loadavg {machine['loadavg_at_start']}")
    print(f"note: {machine['note']}")
    if machine["loadavg_at_start"] and float(machine["loadavg_at_start"][0]) > 0.5:
        print("warning: the machine is not idle (1-min loadavg > 0.5): other work will skew these numbers")

    work = Path(tempfile.mkdtemp(prefix="kerve-bench-"))
    repo = work / "models"
    repo.mkdir()
    print(f"[1/3] building {', '.join(args.models)} into {repo} and measuring in process")
    quiet = Quiet(args.wait_quiet, args.max_other_cpu, [])
    quiet.wait("in-process", "")
    server_env = dict(item.split("=", 1) for item in args.server_env)
    inprocess_report = run_inprocess_both(
        args, repo, work, args.server_arg, server_env, between=lambda: quiet.wait("in-process", "as served")
    )
    inprocess = inprocess_report["models"]
    for name, m in inprocess.items():
        best = m["best"]
        print(f"  {name}: in-process best {best['samples_per_s']:.1f} samples/s at batch {best['batch']}")
        rows = [*m["batches"].items(), *m.get("as_served", {}).get("batches", {}).items()]
        disturbed = sorted({b for b, row in rows if row.get("other_cpu_cores", 0.0) > args.max_other_cpu}, key=int)
        if disturbed:
            print(f"  warning: {name} in process at batch {', '.join(disturbed)} was disturbed by other processes")
    for warning in compute_bound_warnings({n: m["best"]["ms_per_sample"] for n, m in inprocess.items()}):
        print(f"  warning: {warning}")

    for item in args.model_config:  # before the server starts: a version reads its model's config when it loads
        name, text = item.split(":", 1)
        (repo / name / "config.yaml").write_text(text.strip() + "\n")
    (work / "responses.json").write_text(json.dumps({name: m["outputs"] for name, m in inprocess.items()}))
    payloads = {name: build_payloads(name) for name in args.models}

    metrics_port = free_port()
    loop = event_loop.resolve(args.event_loop)  # the ceiling gets the same loop kerve picks
    kerve_cmd = [
        sys.executable, "-m", "kerve", "serve", "--model-repository", str(repo), "--host", "127.0.0.1",
        "--metrics-port", str(metrics_port), "--event-loop", loop, *args.server_arg,
    ]  # fmt: skip
    h2load_exe = h2load.find() if args.h2load else None
    if args.h2load and h2load_exe is None:
        print("warning: --h2load given but no h2load binary found (apt-get install nghttp2-client); skipped")
    h2load_results: dict[str, dict[str, Any]] = {}
    servers: dict[str, Server] = {}
    results: dict[str, Any] = {}
    streaming: dict[str, Any] = {}
    ceiling_results: dict[str, dict[str, Any]] = {mode: {} for mode in args.modes}
    floor_results: dict[str, dict[str, Any]] = {mode: {} for mode in args.modes}
    exit_codes: dict[str, int] = {}
    failed = False
    profile_report: dict[str, Any] | None = None
    gen = loadgen.LoadGenerator(args.client_procs)
    try:
        print(f"[2/3] starting the gRPC ceiling and kerve ({' '.join(kerve_cmd[1:4])} ... {' '.join(args.server_arg)})")

        def bare_cmd(port: int, *extra: str) -> list[str]:
            return [
                sys.executable, "-m", "bench.ceiling", "--port", str(port),
                "--responses", str(work / "responses.json"), "--event-loop", loop, *extra,
            ]  # fmt: skip

        port = free_port()
        servers["grpc_ceiling"] = Server("grpc_ceiling", bare_cmd(port), port, work / "ceiling.log")
        if 1 in args.concurrency:  # the c1 floor: the bare server running each model's call in a thread
            port = free_port()
            models = [f"--model={name}={inprocess[name]['path']}" for name in args.models]
            models += as_served(args.server_arg)  # the model's call as kerve makes it
            servers[BARE_MODEL] = Server(
                BARE_MODEL, bare_cmd(port, *models), port, work / "bare-model.log", env=server_env
            )
        port = free_port()
        servers["kerve"] = Server(
            "kerve",
            [*kerve_cmd, "--port", str(port)],
            port,
            work / "kerve-server.log",
            env=server_env,
            metrics_url=f"http://127.0.0.1:{metrics_port}/metrics",
        )
        for server in servers.values():
            server.wait_ready(300.0, args.models)
        gen.start(max(1, min(args.client_procs, max(args.concurrency))))
        quiet.own_pids = [s.proc.pid for s in servers.values()] + gen.pids

        print(
            f"[3/3] load: c in {args.concurrency}, modes {args.modes}, warm-up {args.warmup:g}s + window "
            f"{args.duration:g}s each, up to {args.client_procs} load generator processes"
        )
        max_batch = ideal.max_batch_size(args.server_arg)
        for model in args.models:
            best = inprocess[model]["best"]["samples_per_s"]
            b1_p50 = batch1_p50_ms(inprocess[model])
            for mode in args.modes:
                for c in args.concurrency:
                    key = f"{model}/c{c}"
                    # the bare server with the model call is the c1 floor only (one request at a time)
                    case_servers = {n: s for n, s in servers.items() if c == 1 or n != BARE_MODEL}
                    quiet.wait(key, mode)
                    row = measure_case(args, gen, case_servers, model, payloads[model], mode, c)
                    for attempt in range(args.retries):
                        other = _other(row)
                        if other <= args.max_other_cpu or time.monotonic() - started > args.retry_after_s:
                            break
                        print(f"  {key:14s} {mode:6s} disturbed: other processes used {other:.2f} cores; again")
                        quiet.wait(key, mode)
                        again = measure_case(args, gen, case_servers, model, payloads[model], mode, c)
                        row = again if _other(again) < other else row
                        row["kerve"]["attempts"] = attempt + 2
                    row["kerve"]["disturbed"] = _other(row) > args.max_other_cpu
                    ceiling, kerve_row = row["grpc_ceiling"], row["kerve"]
                    ceiling_results[mode][key] = ceiling
                    kerve_row["ratio_vs_inprocess_best"] = _ratio(kerve_row["samples_per_s"], best)
                    kerve_row["ratio_vs_grpc_ceiling"] = _ratio(kerve_row["samples_per_s"], ceiling["samples_per_s"])
                    if b1_p50 is not None:
                        kerve_row["p50_minus_inprocess_b1_ms"] = round(kerve_row["p50_ms"] - b1_p50, 4)
                    floor = row.get(BARE_MODEL)
                    if floor is not None:
                        floor_results[mode][key] = floor
                        kerve_row["bare_model_p50_ms"] = floor["p50_ms"]
                        kerve_row["p50_minus_bare_model_ms"] = round(kerve_row["p50_ms"] - floor["p50_ms"], 4)
                        if b1_p50 is not None:
                            floor["p50_minus_inprocess_b1_ms"] = round(floor["p50_ms"] - b1_p50, 4)
                    kerve_row.update(
                        ideal.estimate(
                            kerve_row, ceiling, served_figures(inprocess[model]), c, machine["cores"], max_batch,
                            floor,
                        )
                    )  # fmt: skip
                    (results if mode == loadgen.UNARY else streaming)[key] = kerve_row
                    errors = sum(entry["errors"] for entry in row.values())
                    failed |= errors > 0
                    print(
                        f"  {key:14s} {mode:6s} ceiling {ceiling['samples_per_s']:9.1f}/s p50 {ceiling['p50_ms']:7.3f}"
                        f" | kerve {kerve_row['samples_per_s']:9.1f}/s p50 {kerve_row['p50_ms']:7.3f} ms"
                        f" p99 {kerve_row['p99_ms']:7.3f} ms | x{_fmt(kerve_row['ratio_vs_grpc_ceiling'], '.3f')} "
                        f"of ceiling, x{_fmt(kerve_row['ratio_vs_inprocess_best'], '.3f')} of in-process best"
                        + (f"  | bare + model p50 {floor['p50_ms']:7.3f} ms" if floor is not None else "")
                        + (f"  ERRORS kerve {kerve_row['errors']}, ceiling {ceiling['errors']}" if errors else ""),
                        flush=True,
                    )
                    if h2load_exe and mode == loadgen.UNARY:
                        h2_row = {
                            name: h2load.run(
                                h2load_exe, server.target, payloads[model][0], c, args.warmup, args.duration,
                                server.proc.pid, response_len(server.target, payloads[model][0]), work,
                            )
                            for name, server in servers.items()
                            if name != BARE_MODEL
                        }  # fmt: skip
                        h2_row["kerve"]["ratio_vs_grpc_ceiling"] = _ratio(
                            h2_row["kerve"]["samples_per_s"], h2_row["grpc_ceiling"]["samples_per_s"]
                        )
                        h2_row["kerve"]["ratio_vs_inprocess_best"] = _ratio(h2_row["kerve"]["samples_per_s"], best)
                        for name, entry in h2_row.items():
                            h2load_results.setdefault(name, {})[key] = entry
                        failed |= any(entry["errors"] for entry in h2_row.values())
                        print(
                            f"  {key:14s} h2load ceiling {h2_row['grpc_ceiling']['samples_per_s']:9.1f}/s"
                            f" | kerve {h2_row['kerve']['samples_per_s']:9.1f}/s p50 "
                            f"{_fmt(h2_row['kerve']['p50_ms'], '7.3f')} ms"
                            f" | x{_fmt(h2_row['kerve']['ratio_vs_grpc_ceiling'], '.3f')} of ceiling",
                            flush=True,
                        )
        profile_report = _profile_case(args, gen, servers, payloads, work) if args.profile else None
    finally:
        gen.close()
        for name, server in servers.items():
            exit_codes[name] = server.stop()

    results["streaming"] = streaming
    results["inprocess"] = inprocess
    if "kerve" in servers:  # which way each replica runs its small batches (--caller-thread-max-batch auto)
        log_text = servers["kerve"].log_path.read_text(errors="replace")
        results["caller_thread_choices"] = logged_choices(log_text)
        results["slot_choices"] = slot_choice.logged_choices(log_text)  # --batches-per-replica auto
    results["grpc_ceiling"] = ceiling_results
    if any(floor_results.values()):
        results[BARE_MODEL] = floor_results
    if h2load_results:
        results["h2load"] = h2load_results
    results["machine"] = {
        **machine,
        "tensorflow": inprocess_report["tf_version"],
        "keras": inprocess_report["keras_version"],
        "loadavg_at_end": Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else None,
    }
    results["config"] = {
        "models": args.models,
        "concurrency": args.concurrency,
        "modes": args.modes,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "inprocess_batches": args.batches,
        "inprocess_seconds_per_batch": args.inprocess_seconds,
        "client_procs": args.client_procs,
        "channels_per_client_proc": args.channels,
        "stream_depth": args.stream_depth,
        "max_other_cpu": args.max_other_cpu,
        "retries": args.retries,
        "waited_for_quiet_s": round(quiet.waited_s, 1),
        "server_cmd": "python -m kerve serve --model-repository REPO --host 127.0.0.1 --port PORT --metrics-port MPORT "
        "--event-loop LOOP",
        "event_loop": loop,
        "server_args": args.server_arg,
        "server_env": args.server_env,
        "served_call": inprocess_report["served"],  # how kerve calls the models: bench.inprocess --as-served
        "model_config": args.model_config,
        "kerve_commit": _git("rev-parse", "--short", "HEAD"),
        "kerve_dirty": bool(_git("status", "--porcelain", "--", "server", "kerve", "client")),
        "server_exit_codes": exit_codes,
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    if profile_report is not None:
        results["profile"] = profile_report

    print_inprocess(inprocess)
    print_table(results, args.modes)
    per_thread = report.threads(results)
    if per_thread:
        print(f"\n{report.THREADS_TITLE}")
        print("\n".join(per_thread))
    print_caller_thread_choices(results.get("caller_thread_choices", []))
    print_slot_choices(results.get("slot_choices", []))
    print(f"\nnote: {machine['note']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out} in {results['config']['elapsed_s']:.0f}s")
    if args.keep_work or failed:
        print(f"work dir (models, server logs): {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    if failed:
        print("some requests failed: see 'errors' / 'first_error' in the JSON", file=sys.stderr)
        return 1
    if any(code != 0 for code in exit_codes.values()):
        print(f"a server did not exit cleanly: {exit_codes}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
