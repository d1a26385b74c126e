"""Optional cross-check of the Python load generator with h2load (nghttp2's C HTTP/2 load generator).

On 2 shared cores the Python generator's own CPU is taken from the server it measures. h2load sends the same
pre-serialized unary ModelInfer request as raw gRPC over HTTP/2 (5-byte length prefix, `content-type:
application/grpc`, `te: trailers`) at a fraction of the CPU per request, which shows how much of a ceiling the Python
client costs. Unary only. `bench.run --h2load` uses it when the `h2load` binary is installed (Debian:
`apt-get install nghttp2-client`); nothing else depends on it.

h2load checks HTTP status only, not `grpc-status`; a gRPC error answers with no response message, so each case
also checks that the response data received matches the expected response size per request.
"""

from __future__ import annotations

import math
import re
import resource
import shutil
import struct
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import loadgen


def find() -> str | None:
    return shutil.which("h2load")


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(
    exe: str,
    target: str,
    payload: bytes,
    concurrency: int,
    warmup_s: float,
    duration_s: float,
    server_pid: int,
    expected_response_len: int,
    work: Path,
) -> dict[str, Any]:
    """One closed-loop case: min(c, 2) connections x ceil(c / connections) streams, one h2load thread."""
    body = work / "h2load-body.bin"
    body.write_bytes(b"\x00" + struct.pack(">I", len(payload)) + payload)
    log = work / "h2load-requests.tsv"
    log.unlink(missing_ok=True)
    conns = min(concurrency, 2)
    streams = math.ceil(concurrency / conns)
    cmd = [
        exe, "-c", str(conns), "-m", str(streams), "-t", "1",
        "-D", f"{round(duration_s * 1000)}ms", "--warm-up-time", f"{round(warmup_s * 1000)}ms", "-d", str(body),
        "-H", "content-type: application/grpc", "-H", "te: trailers", "--log-file", str(log),
        f"http://{target}{loadgen.UNARY_METHOD}",
    ]  # fmt: skip
    children_before = _children_cpu_s()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(warmup_s + 0.2)  # the window starts once the connections are up and the warm-up is over
    cpu_before, busy_before = loadgen.proc_cpu_s(server_pid), loadgen.machine_busy_s()
    time.sleep(max(0.0, duration_s - 0.4))
    cpu_after, busy_after = loadgen.proc_cpu_s(server_pid), loadgen.machine_busy_s()
    try:
        out, _ = proc.communicate(timeout=warmup_s + duration_s + 60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    window = max(0.1, duration_s - 0.4)
    client_cpu = _children_cpu_s() - children_before  # the whole h2load run, warm-up included
    requests = _field(out, r"requests: (\d+) total")
    succeeded = _field(out, r"(\d+) succeeded")
    data = _field(out, r"traffic: .*?, (\d+) \(\d+\) data") or _field(out, r"\((\d+)\) data")
    latencies: list[float] = []
    if log.exists():
        rows = [line.split("\t") for line in log.read_text().splitlines() if line.count("\t") >= 2]
        if rows:
            starts = np.array([int(r[0]) for r in rows], dtype=np.int64)
            keep = starts >= starts.min() + int(warmup_s * 1e6)  # the log may include the warm-up
            latencies = [int(r[2]) / 1e3 for r, k in zip(rows, keep, strict=True) if k and r[1] == "200"]
    errors = (requests or 0) - (succeeded or 0)
    per_response = (data / succeeded) if data and succeeded else 0.0
    if not succeeded or per_response < expected_response_len:  # nothing answered, or gRPC errors (no message)
        errors = max(errors, 1)
    rate = (succeeded or 0) / duration_s
    return {
        "samples_per_s": round(rate, 2),
        "p50_ms": round(float(np.percentile(latencies, 50)), 4) if latencies else None,
        "p99_ms": round(float(np.percentile(latencies, 99)), 4) if latencies else None,
        "requests": succeeded or 0,
        "errors": errors,
        "server_cpu_cores": round((cpu_after - cpu_before) / window, 3),
        "client_cpu_ms_per_req": round(client_cpu / max(1, requests or 0) * 1e3, 4),
        "machine_busy_cores": round((busy_after - busy_before) / window, 3),
        "response_bytes_per_req": round(per_response, 1),
        **({"output": out[-1500:]} if errors or not succeeded else {}),
    }


def _field(text: str, pattern: str) -> int | None:
    match = re.search(pattern, text)
    return int(match.group(1)) if match else None
