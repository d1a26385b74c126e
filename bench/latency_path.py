"""Where a concurrency-1 request's time goes in kerve: per-stage p50s from timestamps taken inside the server.

    .venv/bin/python -m bench.latency_path --models seed_cnn,resnet [--server-arg=--cpu-replicas=2]

The c1 latency target (issue 6: kerve's p50 within 1 ms of the in-process batch-1 call) is a sum of hand-offs, and
`bench.run` only sees the total. This runs, in one go and one after another on the same machine: the in-process
batch-1 call back to back, both ways `bench.run` makes it (the signature called directly, and as kerve calls it:
the target's reference is the faster, kerve's `model` stage is set against the second), the bare gRPC server
(`bench.ceiling`) at c1, and kerve at c1 with its unary V2 path timestamped at each hand-off. Timestamps are
`time.perf_counter` (CLOCK_MONOTONIC on Linux, one clock for the client and server processes), so each stage below
is measured, not inferred:

- `grpc_in`: the client's call starts -> kerve's `ModelInfer` handler runs (client serialization, HTTP/2, gRPC
  core, grpc.aio's hop onto the event loop)
- `decode`: the handler -> `Batcher.enqueue` (decode, resolve the version, validate)
- `dispatch`: `enqueue` -> `Batcher._launch` (the loop turn the batcher waits so requests of one turn share a batch)
- `to_worker`: `_launch` -> the model call starts on a worker thread (executor hand-off, thread wake-up, GIL)
- `model`: the replica call itself (TensorFlow, input/output conversion included)
- `to_loop`: the model call returns -> `Batcher._on_done` runs on the loop (the worker's wake-up of the loop)
- `respond`: `_on_done` -> the handler returns (deliver, statistics, metrics, the handler task's wake-up, the
  response message)
- `grpc_out`: the handler returns -> the client has the response (serialization, HTTP/2, the client's wake-up)

The bare server gets the same stamps around its handler, so its round trip splits into `grpc_in`, `handler` and
`grpc_out` too, and it runs twice: as it is, and with a handler that first runs the model's batch-1 call in a worker
thread (`run_in_executor`, fixed inputs, no decode, no batching, no metrics; the call itself is kerve's, set up as
`kerve serve` with the `--server-arg`s sets it up: `bench.inprocess.ServedCalls`). That second one is a server with
no code of its own between gRPC and the model: `kerve - bare with model` is what kerve's own code costs a c1
request, and `bare with model - in-process` is what any asyncio server that keeps its loop free pays on this machine
before it does anything (the gRPC stages themselves get slower when a request takes a millisecond or more in another
thread: the client and the loop sleep between events, and waking them costs more on this VM).

The instrumented servers are `kerve serve` and `bench.ceiling` themselves with wrappers around those methods
(installed by this module's `--serve-kerve` / `--serve-bare` modes, so nothing in kerve carries tracing code; one
server process, so not with `--processes`); `tests/integration/test_bench_smoke.py` runs it, so a rename in the
server breaks the test, not a measurement. Wrappers cost a few microseconds per stage: the
`total` here is a little above `bench.run`'s p50 for the same case.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import bisect
import itertools
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.inprocess_report import batch1_p50_ms
from bench.models import MODELS
from bench.run import Server, as_served, build_payloads, model_list, run_inprocess_both
from kerve.quickstart import free_port

STAGES = ("grpc_in", "decode", "dispatch", "to_worker", "model", "to_loop", "respond", "grpc_out")
# The server-side events, in the order one request passes them; stage i runs from event i-1 to event i, with the
# client's start and end around them.
EVENTS = ("enter", "enqueue", "launch", "model_start", "model_end", "on_done", "exit")
BARE_STAGES = ("grpc_in", "handler", "grpc_out")
BARE_EVENTS = ("enter", "exit")
KERVE_OVERHEAD = ("decode", "dispatch", "to_worker", "to_loop", "respond")
INFER = "/inference.GRPCInferenceService/ModelInfer"


# ------------------------------------------------------------------------------------ the instrumented server


def serve_instrumented(events_path: Path, kerve_args: list[str]) -> int:
    """`kerve serve` with a timestamp at each hand-off of a unary V2 request, written to `events_path` at exit."""
    from kerve.cli import main as kerve_main
    from kerve.server import batcher as batcher_module
    from kerve.server import v2_service

    events: list[tuple[str, float]] = []
    record, now = events.append, time.perf_counter
    batcher_cls = batcher_module.Batcher

    def stamped(name: str, method: Any) -> Any:
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            record((name, now()))
            return method(self, *args, **kwargs)

        return wrapper

    execute = batcher_module._execute

    def timed_execute(replica: Any, *args: Any) -> Any:
        def call(batch: Any) -> Any:
            record(("model_start", now()))
            try:
                return replica(batch)
            finally:
                record(("model_end", now()))

        return execute(call, *args)

    batcher_cls.enqueue = stamped("enqueue", batcher_cls.enqueue)  # type: ignore[method-assign]
    batcher_cls._launch = stamped("launch", batcher_cls._launch)  # type: ignore[method-assign]
    batcher_cls._on_done = stamped("on_done", batcher_cls._on_done)  # type: ignore[method-assign]
    batcher_module._execute = timed_execute  # looked up by name at each launch
    _stamp_handler(v2_service.V2Servicer, events, events_path)
    return kerve_main(["serve", *kerve_args])


def serve_bare(events_path: Path, ceiling_args: list[str]) -> int:
    """The bare server (`bench.ceiling`, with `--model` the one running the model's call in a thread) with the
    same handler timestamps, so its round trip splits the same way."""
    from bench import ceiling

    with_model = any(arg.startswith("--model") for arg in ceiling_args)
    servicer = ceiling.ModelCallServicer if with_model else ceiling.CeilingServicer
    _stamp_handler(servicer, [], events_path)
    return ceiling.main(ceiling_args)


def _stamp_handler(servicer: type, events: list[tuple[str, float]], events_path: Path) -> None:
    """Stamp `ModelInfer`'s entry and return on `servicer`, and write `events` to `events_path` at exit."""
    model_infer = servicer.ModelInfer  # type: ignore[attr-defined]
    record, now = events.append, time.perf_counter

    async def timed_model_infer(self: Any, request: Any, context: Any) -> Any:
        record(("enter", now()))
        try:
            return await model_infer(self, request, context)
        finally:
            record(("exit", now()))

    servicer.ModelInfer = timed_model_infer  # type: ignore[attr-defined]
    atexit.register(lambda: events_path.write_text(json.dumps(events)))


# ---------------------------------------------------------------------------------------------- measuring


async def closed_loop(target: str, payloads: list[bytes], warmup: int, requests: int) -> list[tuple[float, float]]:
    """One request at a time over one channel; (start, end) of each measured request, perf_counter seconds."""
    import grpc

    spans: list[tuple[float, float]] = []
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_unary(INFER, request_serializer=None, response_deserializer=None)
        for i in range(warmup + requests):
            started = time.perf_counter()
            await call(payloads[i % len(payloads)], timeout=30.0)
            if i >= warmup:
                spans.append((started, time.perf_counter()))
    return spans


def stage_durations(
    spans: list[tuple[float, float]],
    events: list[tuple[str, float]],
    names: tuple[str, ...] = EVENTS,
    stages: tuple[str, ...] = STAGES,
) -> dict[str, list[float]]:
    """Per stage, the duration (ms) in every request whose server events all fell inside its client span.

    At concurrency 1 the requests do not overlap, so the events between a request's start and end are its own;
    a request missing an event (it ran alone, or a warm-up) is left out rather than guessed at."""
    events = sorted(events, key=lambda e: e[1])
    times = [t for _, t in events]
    out: dict[str, list[float]] = {stage: [] for stage in (*stages, "total")}
    for start, end in spans:
        seen: dict[str, float] = {}
        for name, t in events[bisect.bisect_left(times, start) : bisect.bisect_right(times, end)]:
            seen.setdefault(name, t)
        if not all(name in seen for name in names):
            continue
        marks = [start, *(seen[name] for name in names), end]
        steps = list(itertools.pairwise(marks))
        if any(b < a for a, b in steps):
            continue
        for stage, (a, b) in zip(stages, steps, strict=True):
            out[stage].append((b - a) * 1e3)
        out["total"].append((end - start) * 1e3)
    return out


def p50(values: list[float]) -> float | None:
    return round(statistics.median(values), 4) if values else None


def measure_model(
    model: str, repo: Path, work: Path, inprocess: dict[str, Any], args: argparse.Namespace
) -> dict[str, Any]:
    payloads = build_payloads(model)
    responses = work / f"{model}-responses.json"
    responses.write_text(json.dumps({model: inprocess["outputs"]}))

    bare: dict[str, dict[str, list[float]]] = {}
    # the model's call as kerve makes it (its call path, TF threads and small-batch choice)
    call = [f"--model={model}={repo / model / '1'}", *as_served(args.server_arg)]
    for kind, model_args in (("bare", []), ("bare_model", call)):
        port = free_port()
        bare_args = ["--", "--port", str(port), "--responses", str(responses), *model_args]
        bare_spans, bare_events = _timed_run(kind, bare_args, port, model, work, payloads, args)
        bare[kind] = stage_durations(bare_spans, bare_events, BARE_EVENTS, BARE_STAGES)

    port = free_port()
    kerve_args = [
        "--", "--model-repository", str(repo), "--host", "127.0.0.1", "--port", str(port),
        "--metrics-port", str(free_port()), *args.server_arg,
    ]  # fmt: skip
    spans, events = _timed_run("kerve", kerve_args, port, model, work, payloads, args)
    durations = stage_durations(spans, events)

    inprocess_b1 = batch1_p50_ms(inprocess)
    served_b1 = inprocess["as_served"]["batches"]["1"]["p50_ms"]  # the same call alone
    stages = {stage: p50(durations[stage]) for stage in STAGES}
    total = p50(durations["total"])
    own = sum(stages[s] or 0.0 for s in KERVE_OVERHEAD)
    minimal = p50(bare["bare_model"]["total"])
    return {
        "requests": args.requests,
        "matched": len(durations["total"]),
        "inprocess_b1_p50_ms": round(inprocess_b1, 4),
        "inprocess_direct_b1_p50_ms": round(inprocess["batches"]["1"]["p50_ms"], 4),
        "inprocess_served_b1_p50_ms": round(served_b1, 4),
        "bare_grpc_p50_ms": p50(bare["bare"]["total"]),
        "bare_stages_p50_ms": {stage: p50(bare["bare"][stage]) for stage in BARE_STAGES},
        "bare_matched": len(bare["bare"]["total"]),
        # the bare server running the model in a thread: a server with no code of its own
        "bare_model_p50_ms": minimal,
        "bare_model_stages_p50_ms": {stage: p50(bare["bare_model"][stage]) for stage in BARE_STAGES},
        "bare_model_matched": len(bare["bare_model"]["total"]),
        "bare_model_minus_inprocess_b1_ms": None if minimal is None else round(minimal - inprocess_b1, 4),
        "kerve_minus_bare_model_ms": None if total is None or minimal is None else round(total - minimal, 4),
        "stages_p50_ms": stages,
        "total_p50_ms": total,
        "sum_of_stage_p50s_ms": round(sum(v or 0.0 for v in stages.values()), 4),
        "kerve_own_p50_ms": round(own, 4),
        "model_minus_inprocess_ms": None if stages["model"] is None else round(stages["model"] - served_b1, 4),
        "p50_minus_inprocess_b1_ms": None if total is None else round(total - inprocess_b1, 4),
        "target_met": None if total is None else total - inprocess_b1 <= 1.0,
    }


def _timed_run(
    kind: str,
    server_args: list[str],
    port: int,
    model: str,
    work: Path,
    payloads: list[bytes],
    args: argparse.Namespace,
) -> tuple[list[tuple[float, float]], list[tuple[str, float]]]:
    """Start the instrumented `kind` server, drive it at c1, stop it: the client spans and the server's events."""
    events_path = work / f"{model}-{kind}-events.json"
    mode = "--serve-kerve" if kind == "kerve" else "--serve-bare"
    cmd = [sys.executable, "-m", "bench.latency_path", mode, str(events_path), *server_args]
    server = Server(kind, cmd, port, work / f"{model}-{kind}.log")
    try:
        server.wait_ready(180, [model])
        spans = asyncio.run(closed_loop(server.target, payloads, args.warmup, args.requests))
    finally:
        code = server.stop()
    if code != 0 or not events_path.exists():
        raise RuntimeError(f"the instrumented {kind} server exited {code} without its events\n{server.log_tail()}")
    return spans, json.loads(events_path.read_text())


def print_table(results: dict[str, dict[str, Any]]) -> None:
    models = list(results)
    print(f"\n{'p50, ms':28s}" + "".join(f"{m:>12s}" for m in models))

    def row(label: str, values: list[Any]) -> None:
        print(f"{label:28s}" + "".join(f"{'-' if v is None else format(v, '.3f'):>12s}" for v in values))

    row("in-process batch-1 call", [results[m]["inprocess_b1_p50_ms"] for m in models])
    row("  signature, TF's defaults", [results[m]["inprocess_direct_b1_p50_ms"] for m in models])
    row("  as kerve calls it", [results[m]["inprocess_served_b1_p50_ms"] for m in models])
    row("bare gRPC round trip", [results[m]["bare_grpc_p50_ms"] for m in models])
    for stage in BARE_STAGES:
        row(f"  {stage}", [results[m]["bare_stages_p50_ms"][stage] for m in models])
    row("bare + model call in a thread", [results[m]["bare_model_p50_ms"] for m in models])
    for stage in BARE_STAGES:
        row(f"  {stage}", [results[m]["bare_model_stages_p50_ms"][stage] for m in models])
    print("kerve, by stage:")
    for stage in STAGES:
        row(f"  {stage}", [results[m]["stages_p50_ms"][stage] for m in models])
    row("  total", [results[m]["total_p50_ms"] for m in models])
    row("kerve's own (decode..respond)", [results[m]["kerve_own_p50_ms"] for m in models])
    row("model call - same call alone", [results[m]["model_minus_inprocess_ms"] for m in models])
    row("kerve - bare with model", [results[m]["kerve_minus_bare_model_ms"] for m in models])
    row("bare with model - in-process", [results[m]["bare_model_minus_inprocess_b1_ms"] for m in models])
    row("total - in-process (<= 1)", [results[m]["p50_minus_inprocess_b1_ms"] for m in models])
    print(
        "requests matched (kerve, bare, bare with model): "
        + ", ".join(
            f"{m} {results[m]['matched']}, {results[m]['bare_matched']}, {results[m]['bare_model_matched']} "
            f"of {results[m]['requests']}"
            for m in models
        )
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--serve-kerve"]:  # the instrumented kerve: --serve-kerve EVENTS -- <kerve serve args>
        return serve_instrumented(Path(argv[1]), argv[3:])
    if argv[:1] == ["--serve-bare"]:  # the instrumented bare server: --serve-bare EVENTS -- <bench.ceiling args>
        return serve_bare(Path(argv[1]), argv[3:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", type=model_list, default=["seed_cnn"], help=f"comma-separated, from {', '.join(MODELS)}"
    )
    parser.add_argument("--requests", type=int, default=2000, help="measured requests per server")
    parser.add_argument("--warmup", type=int, default=200, help="unmeasured requests first")
    parser.add_argument("--inprocess-seconds", type=float, default=1.5)
    parser.add_argument(
        "--server-arg", action="append", default=[], metavar="ARG", help="extra `kerve serve` argument (repeatable)"
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the figures as JSON")
    args = parser.parse_args(argv)
    models = args.models

    with tempfile.TemporaryDirectory(prefix="kerve-latency-") as tmp:
        work = Path(tmp)
        repo = work / "repo"
        # the same in-process measurement bench.run makes (re-measured once if other processes disturbed it)
        reference = argparse.Namespace(
            models=models, batches=[1], inprocess_seconds=args.inprocess_seconds, max_other_cpu=0.25, retries=1
        )
        inprocess = run_inprocess_both(reference, repo, work, args.server_arg)["models"]
        results = {m: measure_model(m, repo, work, inprocess[m], args) for m in models}
    print_table(results)
    if args.out is not None:
        args.out.write_text(json.dumps({"server_args": args.server_arg, "models": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
