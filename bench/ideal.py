"""What a server with no cost of its own could reach in each case, from figures measured in the same run.

A kerve case does the bare ceiling's gRPC work (both sides, on the same cores when the generator shares the
machine) *plus* the model's. Where the model's CPU per sample is a sizeable share of the round trip's, "0.9 of the
bare ceiling" is out of reach for any server in that configuration, however lean. This module estimates, per case:

- ``model_cpu_ms_per_sample``: the model's CPU per sample in process at the batch size kerve formed (the measured
  in-process batch closest to kerve's mean batch), TF's threads included, called as kerve calls it (`bench.run`
  passes the `served` sweep: `bench.inprocess_report.served_figures`).
- ``kerve_own_cpu_ms_per_req``: kerve's server CPU per request minus the bare server's and minus that model CPU:
  what kerve's own request path (decode, validate, batching hand-offs, encode, metrics) costs. At concurrency 1,
  where the run measured the bare server that runs the model's call itself (the c1 floor), kerve's server CPU minus
  that server's: a call every few milliseconds, each waking threads that slept, costs more CPU than the same calls
  back to back in process (0.1-2.1 ms more per request in 11 of 12 c1 cases of two full runs on the 2-core VM),
  and that is not kerve's.
- ``model_call_vs_inprocess``: the model's wall time per sample inside kerve (``model_ms_per_batch`` from its
  ``/metrics`` over ``mean_batch``) against the in-process call's at the closest measured batch: above 1 when the
  model runs slower beside the server's other threads than alone.
- ``ideal_samples_per_s``: the most a zero-overhead server could serve, the lowest of
  (1) the CPU limit: all cores / (bare server + generator CPU per request + the model's least CPU per sample at a
  batch the case allows, min(concurrency, max_batch_size)), (2) at concurrency 1 the serial limit, measured: the
  requests/s of the bare server that runs the model's batch-1 call in a worker thread before answering
  (`bench.ceiling --model`; adding the bare round trip to the in-process call instead was ~0.5 ms per request too
  optimistic on the 2-core VM, docs/benchmarks.md), (3) the bare ceiling.
  ``ideal_limit`` names the one that bound, and ``ideal_ratio_vs_grpc_ceiling`` / ``ideal_ratio_vs_inprocess_best``
  put it on the scale of the targets.

It is an estimate, not a proof: the model CPU comes from the in-process sweep (one caller, one replica), and a
server that runs batches side by side on one thread each can use TF more efficiently than that (docs/benchmarks.md,
"Why one thread per batch"), and the generator's CPU counts only when it shares the server's cores. Pure
arithmetic on the results dict: no TensorFlow, no gRPC.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

DEFAULT_MAX_BATCH_SIZE = 64  # kerve serve's --max-batch-size default


def max_batch_size(server_args: Sequence[str]) -> int:
    """The --max-batch-size among extra `kerve serve` arguments (either `--flag=N` or `--flag N`), else the default."""
    value: str | None = None
    for i, arg in enumerate(server_args):
        if arg.startswith("--max-batch-size="):
            value = arg.split("=", 1)[1]
        elif arg == "--max-batch-size" and i + 1 < len(server_args):
            value = server_args[i + 1]
    return int(value) if value is not None else DEFAULT_MAX_BATCH_SIZE


def _cpu_ms_per_sample(row: Mapping[str, Any]) -> float | None:
    rate, cores = row.get("samples_per_s"), row.get("cpu_cores")
    if not rate or cores is None:
        return None
    return cores * 1e3 / rate


def _closest_batch(batches: Mapping[str, Any], size: float) -> str | None:
    if not batches or size <= 0:
        return None
    return min(batches, key=lambda b: abs(math.log(int(b) / size)))


def estimate(
    kerve: Mapping[str, Any],
    ceiling: Mapping[str, Any],
    inprocess: Mapping[str, Any],
    concurrency: int,
    cores: float,
    max_batch: int,
    c1_floor: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ideal_* and cost-split keys for one kerve case (empty where the inputs are missing); `c1_floor` is the
    bare server running the model's call, measured at concurrency 1 only."""
    batches: Mapping[str, Any] = inprocess.get("batches", {})
    allowed = [b for b in batches if int(b) <= min(concurrency, max_batch)] or sorted(batches, key=int)[:1]
    costs = [c for b in allowed if (c := _cpu_ms_per_sample(batches[b])) is not None]
    ceiling_rate = ceiling.get("samples_per_s") or 0.0
    if not costs or ceiling_rate <= 0 or cores <= 0:
        return {}
    out: dict[str, Any] = {}

    at = _closest_batch(batches, kerve.get("mean_batch") or 0.0)
    model_cpu = _cpu_ms_per_sample(batches[at]) if at is not None else None
    in_server = kerve.get("model_ms_per_batch")
    if at is not None and in_server and batches[at].get("mean_ms"):
        # per sample, so that a mean batch between two measured sizes compares fairly
        alone = batches[at]["mean_ms"] / int(at)
        out["model_call_vs_inprocess"] = round(in_server / kerve["mean_batch"] / alone, 3)
    if model_cpu is not None:
        out["model_cpu_ms_per_sample"] = round(model_cpu, 4)
        own = kerve["server_cpu_ms_per_req"] - ceiling["server_cpu_ms_per_req"] - model_cpu
        if concurrency == 1 and c1_floor and c1_floor.get("server_cpu_ms_per_req"):
            own = kerve["server_cpu_ms_per_req"] - c1_floor["server_cpu_ms_per_req"]
        out["kerve_own_cpu_ms_per_req"] = round(own, 4)

    per_request = ceiling["server_cpu_ms_per_req"] + ceiling["client_cpu_ms_per_req"] + min(costs)
    limits = {"cpu": cores * 1e3 / per_request, "ceiling": ceiling_rate}
    if concurrency == 1 and c1_floor and c1_floor.get("samples_per_s"):
        limits["latency"] = c1_floor["samples_per_s"]
    limit = min(limits, key=lambda k: limits[k])
    ideal = limits[limit]
    best = inprocess.get("best", {}).get("samples_per_s")
    out.update(
        ideal_samples_per_s=round(ideal, 1),
        ideal_limit=limit,
        ideal_ratio_vs_grpc_ceiling=round(ideal / ceiling_rate, 4),
        ideal_ratio_vs_inprocess_best=round(ideal / best, 4) if best else None,
    )
    return out
