"""What system shared memory saves a client on the server's host: large inputs sent raw in the message against the
same inputs in a registered /dev/shm region, one after the other against one `kerve serve`.

    .venv/bin/python -m bench.shared_memory                      # big_image (224x224x3 float32), batch 1 and 8
    .venv/bin/python -m bench.shared_memory --batches 1,8,32 --seconds 5

Each request is a closed-loop unary `ModelInfer` (concurrency 1) from this process over one channel, the client's
own work included on both sides: raw builds the message from the array (`tobytes`), shared memory copies the array
into its region and sends only the region's name, offset and size. The model (`big_image`: global average pooling
and a Dense 10 over a 224x224x3 image, 602 KB per sample) costs little next to moving its input, so the difference
is the transport. The two modes alternate for `--rounds` rounds; the table gives each mode's median round and the
server process's CPU per request over it (utime + stime from /proc), so the ratio is one run on one machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.models import MODELS, export
from bench.run import Server, model_list
from kerve.quickstart import free_port

MODES = ("raw", "shm")


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _Region:
    """A POSIX shared memory object this client owns, registered with the server under one name."""

    def __init__(self, stub: Any, name: str, byte_size: int) -> None:
        import mmap

        from kerve.protos import grpc_service_pb2 as pb

        self.name, self.key, self.stub = name, f"/kerve-bench-{os.getpid()}-{name}", stub
        self.path = Path("/dev/shm") / self.key.lstrip("/")
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, byte_size)
            self.mapping = mmap.mmap(fd, byte_size)
        finally:
            os.close(fd)
        stub.SystemSharedMemoryRegister(
            pb.SystemSharedMemoryRegisterRequest(name=name, key=self.key, byte_size=byte_size), timeout=30
        )

    def close(self) -> None:
        from kerve.protos import grpc_service_pb2 as pb

        try:
            self.stub.SystemSharedMemoryUnregister(pb.SystemSharedMemoryUnregisterRequest(name=self.name), timeout=30)
        finally:
            self.mapping.close()
            self.path.unlink(missing_ok=True)


def _round(stub: Any, model: str, name: str, array: np.ndarray, mode: str, region: _Region | None, seconds: float,
           server_pid: int) -> dict[str, float]:  # fmt: skip
    from kerve.protos import grpc_service_pb2 as pb

    datatype = {"float32": "FP32"}[array.dtype.name]
    target = np.frombuffer(region.mapping, dtype=array.dtype, count=array.size) if region is not None else None
    latencies: list[float] = []
    cpu_before = _cpu_s(server_pid)
    start = time.perf_counter()
    end = start + seconds
    while (now := time.perf_counter()) < end:
        request = pb.ModelInferRequest(model_name=model)
        tensor = request.inputs.add(name=name, datatype=datatype, shape=list(array.shape))
        if mode == "raw":
            request.raw_input_contents.append(array.tobytes())
        else:
            assert target is not None and region is not None
            target[...] = array.reshape(-1)
            tensor.parameters["shared_memory_region"].string_param = region.name
            tensor.parameters["shared_memory_byte_size"].int64_param = array.nbytes
        response = stub.ModelInfer(request, timeout=60)
        np.frombuffer(response.raw_output_contents[0], dtype=np.float32)
        latencies.append(time.perf_counter() - now)
    wall = time.perf_counter() - start
    cpu = _cpu_s(server_pid) - cpu_before
    latencies.sort()
    return {
        "requests_per_s": len(latencies) / wall,
        "p50_ms": 1e3 * latencies[len(latencies) // 2],
        "p99_ms": 1e3 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "server_cpu_ms_per_req": 1e3 * cpu / len(latencies),
        "requests": len(latencies),
    }


def measure(target: str, model: str, batches: list[int], seconds: float, rounds: int, server_pid: int
            ) -> dict[str, dict[str, Any]]:  # fmt: skip
    import grpc

    from kerve.protos import grpc_service_pb2_grpc as pb_grpc

    spec = MODELS[model].inputs[0]
    rng = np.random.default_rng(5)
    results: dict[str, dict[str, Any]] = {}
    options = [("grpc.max_send_message_length", 1 << 30), ("grpc.max_receive_message_length", 1 << 30)]
    with grpc.insecure_channel(target, options=options) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for batch in batches:
            array = spec.sample(rng, batch)
            region = _Region(stub, f"b{batch}", array.nbytes)
            try:
                for mode in MODES:  # warm up both paths (the model's first call at this batch size included)
                    _round(stub, model, spec.name, array, mode, region, min(0.5, seconds), server_pid)
                runs: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
                for _ in range(rounds):
                    for mode in MODES:
                        runs[mode].append(_round(stub, model, spec.name, array, mode, region, seconds, server_pid))
            finally:
                region.close()
            row: dict[str, Any] = {"input_bytes": array.nbytes}
            for mode, rows in runs.items():
                chosen = sorted(rows, key=lambda r: r["requests_per_s"])[len(rows) // 2]  # the median round
                row[mode] = {**chosen, "rounds_requests_per_s": [round(r["requests_per_s"], 1) for r in rows]}
            row["shm_vs_raw"] = row["shm"]["requests_per_s"] / row["raw"]["requests_per_s"]
            results[f"{model}/b{batch}"] = row
    return results


def print_table(results: dict[str, dict[str, Any]]) -> None:
    print("\nUnary ModelInfer at concurrency 1: input raw in the message vs in a registered shared memory region")
    print(f"  {'case':<18} {'input KB':>9} | {'mode':<4} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'srv CPU ms/req':>15} | shm / raw")  # fmt: skip
    for case, row in results.items():
        for mode in MODES:
            m = row[mode]
            ratio = f"{row['shm_vs_raw']:.2f}x" if mode == "shm" else ""
            print(f"  {case:<18} {row['input_bytes'] / 1024:9.0f} | {mode:<4} {m['requests_per_s']:8.1f} "
                  f"{m['p50_ms']:8.2f} {m['p99_ms']:8.2f} {m['server_cpu_ms_per_req']:15.2f} | {ratio}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", type=model_list, default=["big_image"])
    p.add_argument("--batches", type=lambda t: [int(x) for x in t.split(",")], default=[1, 8])
    p.add_argument("--seconds", type=float, default=3.0, help="per round and mode")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--server-arg", action="append", default=[], help="extra `kerve serve` argument (repeatable)")
    p.add_argument("--out", type=Path, default=Path("bench/results/shared_memory.json"))
    args = p.parse_args(argv)
    if not Path("/dev/shm").is_dir():
        print("no /dev/shm on this machine: nothing to measure")
        return 1
    with tempfile.TemporaryDirectory(prefix="kerve-shm-bench-") as tmp:
        work = Path(tmp)
        repo = work / "models"
        for model in args.models:
            export(MODELS[model], repo)
        port = free_port()
        cmd = [sys.executable, "-m", "kerve", "serve", "--model-repository", str(repo), "--host", "127.0.0.1",
               "--port", str(port), "--metrics-port", "0", "--max-message-mb", "1024", *args.server_arg]  # fmt: skip
        server = Server("kerve", cmd, port, work / "kerve.log")
        try:
            server.wait_ready(180.0, args.models)
            results: dict[str, dict[str, Any]] = {}
            for model in args.models:
                results.update(measure(server.target, model, args.batches, args.seconds, args.rounds, server.proc.pid))
        finally:
            code = server.stop()
    print_table(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"config": vars(args) | {"out": str(args.out)}, "results": results,
                                    "median_shm_vs_raw": statistics.median(r["shm_vs_raw"] for r in results.values())},
                                   indent=1, default=str))  # fmt: skip
    print(f"wrote {args.out}")
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
