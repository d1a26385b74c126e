"""Python's garbage collector inside a loaded kerve server: its pauses under load, with and without `--gc-freeze`.

    .venv/bin/python -m bench.gc_pauses --rounds 2 --duration 20

A full collection walks every object the collector tracks, and a server with TensorFlow and its models loaded holds
some 350k of them; the walk holds the GIL, so the event loop, and every request in flight, stands still for it.
`kerve serve --gc-freeze` (default) collects once after each model change and freezes the survivors
(server/heap.py). This measures what that changes, in one run on one machine: `kerve serve` on the benchmark models
(all of them loaded, as in `bench.run`) with a timer on every collection (`gc.callbacks`, installed by this module's
`--serve-kerve` mode, so nothing in kerve carries it), driven by the closed-loop generator for a window, once per
arm and round, the arms alternating. Per arm it prints the requests/s, the client's p99 and worst latency, the
collections inside the window by kind (young: generations 0 and 1; full: generation 2) with their count, total and
longest pause, the longest pause outside the window (start-up, where `--gc-freeze`'s own full pass lands), and the
objects frozen at exit.
Timestamps are `time.monotonic` in both processes (one clock on Linux).
"""

from __future__ import annotations

import argparse
import atexit
import gc
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import loadgen
from bench.models import MODELS, export
from bench.run import Server, build_payloads, model_list
from kerve.quickstart import free_port

ARMS = {"freeze": "--gc-freeze", "no-freeze": "--no-gc-freeze"}


# ------------------------------------------------------------------------------------ the instrumented server


def serve_instrumented(events_path: Path, kerve_args: list[str]) -> int:
    """`kerve serve` with every garbage collection timed, written at exit: the events (generation, start, seconds)
    and how many objects were frozen then (0 without --gc-freeze)."""
    from kerve.cli import main as kerve_main

    events: list[tuple[int, float, float]] = []
    started = [0.0]

    def timer(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.monotonic()
        else:
            events.append((info["generation"], started[0], time.monotonic() - started[0]))

    gc.callbacks.append(timer)
    atexit.register(lambda: events_path.write_text(json.dumps({"events": events, "frozen": gc.get_freeze_count()})))
    return kerve_main(["serve", *kerve_args])


# ---------------------------------------------------------------------------------------------- measuring


def pauses(events: list[list[float]], window: tuple[float, float]) -> dict[str, Any]:
    """Collections inside the window by kind, and the longest one outside it."""
    inside = [e for e in events if window[0] <= e[1] < window[1]]
    outside = [e[2] for e in events if not window[0] <= e[1] < window[1]]
    out: dict[str, Any] = {}
    for kind, generations in (("young", (0, 1)), ("full", (2,))):
        seconds = [e[2] for e in inside if int(e[0]) in generations]
        out[kind] = {
            "count": len(seconds),
            "total_ms": round(sum(seconds) * 1e3, 2),
            "max_ms": round(max(seconds, default=0.0) * 1e3, 2),
        }
    out["outside_window_max_ms"] = round(max(outside, default=0.0) * 1e3, 2)
    return out


def measure_arm(
    arm: str, repo: Path, work: Path, gen: loadgen.LoadGenerator, args: argparse.Namespace, n: int
) -> dict[str, Any]:
    port = free_port()
    events_path = work / f"gc-{arm}-{n}.json"
    cmd = [
        sys.executable, "-m", "bench.gc_pauses", "--serve-kerve", str(events_path), "--",
        "--model-repository", str(repo), "--host", "127.0.0.1", "--port", str(port),
        "--metrics-port", str(free_port()), ARMS[arm], *args.server_arg,
    ]  # fmt: skip
    server = Server(f"kerve-{arm}", cmd, port, work / f"kerve-{arm}-{n}.log")
    window: list[float] = []
    try:
        server.wait_ready(300, args.models)
        result = gen.run(
            server.target, args.mode, build_payloads(args.model), args.concurrency, args.warmup, args.duration,
            on_window_start=lambda: window.append(time.monotonic()),
        )  # fmt: skip
    finally:
        code = server.stop()
    if code != 0 or not events_path.exists():
        raise RuntimeError(f"the instrumented server exited {code} without its events\n{server.log_tail()}")
    start = window[0]
    recorded = json.loads(events_path.read_text())
    worst = float(result.latencies_s.max() * 1e3) if len(result.latencies_s) else float("nan")
    return {
        "samples_per_s": round(result.per_s, 1),
        "p99_ms": round(result.percentile_ms(99), 3),
        "max_ms": round(worst, 3),
        "errors": result.errors,
        "frozen_objects": recorded["frozen"],
        **pauses(recorded["events"], (start, start + args.duration)),
    }


def print_table(rows: list[tuple[str, int, dict[str, Any]]]) -> None:
    print(
        f"\n  {'arm':10s} {'round':>5s} | {'samples/s':>9s} {'p99 ms':>8s} {'max ms':>8s} | "
        f"{'full n':>6s} {'total ms':>8s} {'max ms':>8s} | {'young n':>7s} {'total ms':>8s} {'max ms':>7s} | "
        f"{'start-up max ms':>15s} {'frozen':>7s}"
    )
    for arm, n, r in rows:
        f, y = r["full"], r["young"]
        print(
            f"  {arm:10s} {n:5d} | {r['samples_per_s']:9.0f} {r['p99_ms']:8.2f} {r['max_ms']:8.2f} | "
            f"{f['count']:6d} {f['total_ms']:8.1f} {f['max_ms']:8.1f} | {y['count']:7d} {y['total_ms']:8.1f} "
            f"{y['max_ms']:7.2f} | {r['outside_window_max_ms']:15.1f} {r['frozen_objects']:7d}"
        )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--serve-kerve"]:  # the instrumented kerve: --serve-kerve EVENTS -- <kerve serve args>
        return serve_instrumented(Path(argv[1]), argv[3:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models",
        type=model_list,
        default=["seed_cnn", "resnet", "lstm"],
        help="loaded in the server (comma-separated)",
    )
    parser.add_argument("--model", choices=list(MODELS), default="seed_cnn", help="the one the load goes to")
    parser.add_argument("--mode", choices=loadgen.MODES, default=loadgen.STREAM)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--duration", type=float, default=20.0, help="measurement window per arm and round, s")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=2, help="each arm once per round, alternating")
    parser.add_argument("--client-procs", type=int, default=2)
    parser.add_argument(
        "--server-arg", action="append", default=[], metavar="ARG", help="extra `kerve serve` argument (repeatable)"
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the figures as JSON")
    args = parser.parse_args(argv)
    if args.model not in args.models:
        args.models.append(args.model)

    rows: list[tuple[str, int, dict[str, Any]]] = []
    with tempfile.TemporaryDirectory(prefix="kerve-gc-") as tmp:
        work = Path(tmp)
        repo = work / "repo"
        for model in args.models:
            export(MODELS[model], repo)
        gen = loadgen.LoadGenerator(args.client_procs)
        try:
            for n in range(1, args.rounds + 1):
                for arm in ARMS if n % 2 else reversed(ARMS):
                    row = measure_arm(arm, repo, work, gen, args, n)
                    rows.append((arm, n, row))
                    print(f"  {arm} round {n}: {json.dumps(row)}", flush=True)
        finally:
            gen.close()
    print(
        f"\nkerve serve with {', '.join(args.models)} loaded; {args.mode} batch-1 requests to {args.model} at "
        f"c{args.concurrency}, {args.duration:g} s windows; collections by kind inside the window"
    )
    print_table(rows)
    if args.out is not None:
        out = {"config": {k: v for k, v in vars(args).items() if k != "out"}, "rows": rows}
        args.out.write_text(json.dumps(out, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
