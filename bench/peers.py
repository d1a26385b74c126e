"""kerve against Python peers serving the same SavedModel, side by side, in one run (DESIGN.md §7: "beats Python
peers side by side").

    ./scripts/setup-peers.sh                       # once: .venv-mlserver and .venv-kserve from PyPI
    .venv/bin/python -m bench.peers                # seed_cnn and resnet at concurrency 1, 8, 64
    .venv/bin/python -m bench.peers --models lstm --concurrency 64 --peers mlserver-batch

The peers, each serving every benchmark model from one process over the V2 gRPC protocol, with what their
documentation sets up by default:

- ``mlserver``: Seldon's MLServer (1.7), its defaults: inference in one worker process (``parallel_workers: 1``),
  no adaptive batching.
- ``mlserver-batch``: the same with its adaptive batching on, at kerve's defaults (``max_batch_size`` 64,
  ``max_batch_time`` 1 ms).
- ``kserve``: KServe's Python ModelServer (0.21), its defaults (one worker).

Their runtimes (bench/peer_runtimes/) call the model the way kerve's function path and the in-process bench do:
``tf.saved_model.load(path).signatures["serving_default"]``, numpy in through ``tf.convert_to_tensor``, numpy out,
in a worker thread. kerve runs with its defaults. The same load generator (bench.loadgen: batch-1 unary
``ModelInfer`` with ``raw_input_contents``, several processes) drives each server in turn, one case after the
other, while the others idle; the in-process best (bench.inprocess: the better of the direct call and kerve's
own) is measured first, as in bench.run. Every
server's answer to the same request is compared with kerve's before the load starts.

Results: a table on stdout (samples/s, p50 and p99 per server, and kerve's throughput over each peer's), and
bench/results/peers.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from bench import loadgen
from bench.run import (
    ROOT,
    Server,
    _entry,
    _int_list,
    build_payloads,
    known_names,
    machine_info,
    model_list,
    run_inprocess_both,
)

RUNTIMES = ROOT / "bench" / "peer_runtimes"
DEFAULT_OUT = ROOT / "bench" / "results" / "peers.json"
PEERS = ("mlserver", "mlserver-batch", "kserve")
VENVS = {"mlserver": "mlserver", "mlserver-batch": "mlserver", "kserve": "kserve"}  # peer -> .venv-<name>
KERVE_BATCH = {"max_batch_size": 64, "max_batch_time": 0.001}  # kerve's --max-batch-size / --batch-timeout-us


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=model_list, default=["seed_cnn", "resnet"])
    parser.add_argument("--concurrency", type=_int_list, default=[1, 8, 64])
    parser.add_argument("--peers", type=peer_list, default=list(PEERS))
    parser.add_argument("--duration", type=float, default=5.0, help="measured window per case, seconds")
    parser.add_argument("--warmup", type=float, default=1.0, help="load before each window, seconds")
    parser.add_argument("--client-procs", type=int, default=max(2, os.cpu_count() or 2))
    parser.add_argument("--inprocess-seconds", type=float, default=1.0)
    parser.add_argument("--venvs", type=Path, default=ROOT, help="where .venv-mlserver and .venv-kserve are")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return parser


def peer_list(text: str) -> list[str]:
    return known_names(text, PEERS, "peer")


def peer_python(venvs: Path, peer: str) -> Path:
    """The interpreter of a peer's venv; FileNotFoundError naming the setup script when it is missing."""
    python = venvs / f".venv-{VENVS[peer]}" / "bin" / "python"
    if not python.exists():
        raise FileNotFoundError(f"{python} not found: run ./scripts/setup-peers.sh first (or pass --peers)")
    return python


def mlserver_repository(where: Path, models: dict[str, Path], ports: tuple[int, int, int], batching: bool) -> Path:
    """An MLServer repository: settings.json (ports, loopback) and one folder per model with model-settings.json
    naming the SavedModel runtime. MLServer's other settings stay at its defaults."""
    where.mkdir(parents=True)
    grpc_port, http_port, metrics_port = ports
    settings = {"host": "127.0.0.1", "grpc_port": grpc_port, "http_port": http_port, "metrics_port": metrics_port}
    (where / "settings.json").write_text(json.dumps(settings))
    for name, path in models.items():
        (where / name).mkdir()
        model: dict[str, Any] = {
            "name": name,
            "implementation": "mlserver_savedmodel.SavedModel",
            "parameters": {"uri": str(path)},
        }
        if batching:
            model.update(KERVE_BATCH)
        (where / name / "model-settings.json").write_text(json.dumps(model))
    return where


def peer_command(
    peer: str, python: Path, work: Path, models: dict[str, Path], ports: tuple[int, int, int]
) -> list[str]:
    """How to start `peer` serving `models` on ports (gRPC, HTTP, metrics: they open all three)."""
    port, http_port, _ = ports
    if peer.startswith("mlserver"):
        repo = mlserver_repository(work / peer, models, ports, batching=peer == "mlserver-batch")
        return [str(python.parent / "mlserver"), "start", str(repo)]
    return [
        str(python), str(RUNTIMES / "kserve_savedmodel.py"), "--grpc_port", str(port), "--http_port", str(http_port),
        *(f"--model={name}={path}" for name, path in models.items()),
    ]  # fmt: skip


def first_outputs(target: str, payload: bytes) -> dict[str, np.ndarray]:
    """One request's outputs, decoded whichever way the server sent them (raw or typed contents)."""
    import grpc

    from kerve.client import wire
    from kerve.protos import grpc_service_pb2 as pb

    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(loadgen.UNARY_METHOD)
        response = pb.ModelInferResponse.FromString(call(payload, timeout=60))
    return wire.parse_infer_response(response).outputs


def compare(reference: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> str:
    """'same' (bit-identical), 'max |d| x' (the largest difference), or what differs in kind."""
    if sorted(reference) != sorted(got):
        return f"outputs {sorted(got)} instead of {sorted(reference)}"
    worst = 0.0
    for name, want in reference.items():
        have = got[name]
        if have.shape != want.shape or have.dtype != want.dtype:
            return f"{name}: {have.dtype}{list(have.shape)} instead of {want.dtype}{list(want.shape)}"
        if not np.array_equal(have, want):
            worst = max(worst, float(np.max(np.abs(have.astype(np.float64) - want.astype(np.float64)))))
    return "same" if worst == 0.0 else f"max |d| {worst:.3g}"


def ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b > 0 else None


def render(results: dict[str, Any], servers: list[str]) -> str:
    """The table: per case, each server's samples/s and p50/p99, then kerve's samples/s over each peer's."""
    peers = [s for s in servers if s != "kerve"]
    head = ["case", "in-process best/s", *(f"{s} /s (p50, p99 ms)" for s in servers), *(f"kerve/{p}" for p in peers)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, row in results["cases"].items():
        cells = [key, f"{results['inprocess_best'][key.split('/')[0]]:.0f}"]
        for server in servers:
            entry = row.get(server)
            cells.append(
                "-"
                if entry is None
                else f"{entry['samples_per_s']:.0f} ({entry['p50_ms']:.2f}, {entry['p99_ms']:.2f})"
                + (f" {entry['errors']} errors" if entry["errors"] else "")
            )
        for peer in peers:
            value = row.get("kerve_over", {}).get(peer)
            cells.append("-" if value is None else f"{value:.2f}x")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from kerve.quickstart import free_port

    pythons = {peer: peer_python(args.venvs, peer) for peer in args.peers}
    machine = machine_info()
    print(f"kerve vs peers: {machine['cpu_model']}, {machine['cores']} cores; loadavg {machine['loadavg_at_start']}")
    work = Path(tempfile.mkdtemp(prefix="kerve-peers-"))
    repo = work / "models"
    repo.mkdir()
    print(f"[1/3] building {', '.join(args.models)} and measuring them in process")
    inprocess_args = argparse.Namespace(
        models=args.models, batches=[1, 8, 32, 128], inprocess_seconds=args.inprocess_seconds, max_other_cpu=0.5,
        retries=1,
    )  # fmt: skip
    inprocess = run_inprocess_both(inprocess_args, repo, work, [])["models"]  # kerve runs with its defaults
    paths = {name: Path(inprocess[name]["path"]) for name in args.models}
    payloads = {name: build_payloads(name) for name in args.models}

    servers: dict[str, Server] = {}
    gen = loadgen.LoadGenerator(args.client_procs)
    results: dict[str, Any] = {
        "machine": machine,
        "peers": args.peers,
        "inprocess_best": {name: inprocess[name]["best"]["samples_per_s"] for name in args.models},
        "agreement": {},
        "cases": {},
    }
    try:
        print(f"[2/3] starting kerve and {', '.join(args.peers)}")
        port = free_port()
        kerve_cmd = [sys.executable, "-m", "kerve", "serve", "--model-repository", str(repo), "--host", "127.0.0.1",
                     "--port", str(port), "--metrics-port", "0"]  # fmt: skip
        servers["kerve"] = Server("kerve", kerve_cmd, port, work / "kerve.log")
        for peer in args.peers:
            port = free_port()
            cmd = peer_command(peer, pythons[peer], work, paths, (port, free_port(), free_port()))
            env = {"PYTHONPATH": str(RUNTIMES)}
            servers[peer] = Server(peer, cmd, port, work / f"{peer}.log", env=env)
        for server in servers.values():
            server.wait_ready(300.0, args.models)
        for model in args.models:
            reference = first_outputs(servers["kerve"].target, payloads[model][0])
            for name, server in servers.items():
                if name != "kerve":
                    agreement = compare(reference, first_outputs(server.target, payloads[model][0]))
                    results["agreement"][f"{model}/{name}"] = agreement
                    print(f"  {model}: {name}'s outputs against kerve's: {agreement}")
        gen.start(max(1, min(args.client_procs, max(args.concurrency))))

        print(f"[3/3] load: c in {args.concurrency}, {args.warmup:g}s warm-up + {args.duration:g}s window per case")
        for model in args.models:
            for c in args.concurrency:
                key = f"{model}/c{c}"
                row: dict[str, Any] = {}
                for name, server in servers.items():
                    if server.proc.poll() is not None:
                        raise RuntimeError(f"{name} exited with {server.proc.returncode}\n{server.log_tail()}")
                    result = gen.run(server.target, loadgen.UNARY, payloads[model], c, args.warmup, args.duration,
                                     observe_pids=server.pids())  # fmt: skip
                    row[name] = _entry(result)
                kerve = row["kerve"]["samples_per_s"]
                row["kerve_over"] = {p: ratio(kerve, row[p]["samples_per_s"]) for p in args.peers}
                results["cases"][key] = row
                shown = "  ".join(f"{n} {row[n]['samples_per_s']:8.1f}/s p50 {row[n]['p50_ms']:7.2f}" for n in servers)
                print(f"  {key:12s} {shown}", flush=True)
    finally:
        gen.close()
        for server in servers.values():
            server.stop()
    results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print()
    print(render(results, list(servers)))
    print(f"\nwritten to {args.out}")
    failed = any(
        entry.get("errors") for row in results["cases"].values() for entry in row.values() if "errors" in entry
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
