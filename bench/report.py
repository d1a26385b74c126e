"""Render a results file as the markdown tables of docs/benchmarks.md.

    .venv/bin/python -m bench.report bench/results/latest.json > /tmp/tables.md

Prints the machine and configuration, the in-process table, the RPC table (unary, then streaming), the targets of
issue 6 checked against this run and each case's CPU, wake-ups and system calls per request by thread role, so the
doc can be refreshed from any run without copying numbers by hand.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.inprocess_report import sweeps

COMPUTE_BOUND = ("resnet", "resnet_wide", "lstm")
THREADS_TITLE = "Per request, by thread role (bench/threads.py; CPU and waiting for a core in ms, counts per request)"
LIGHT = "seed_cnn"


def _f(value: Any, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def machine(results: dict[str, Any]) -> list[str]:
    m, c = results["machine"], results["config"]
    dirty = " + uncommitted changes" if c.get("kerve_dirty") else ""
    args = " ".join(c.get("server_args") or []) or "(none: defaults)"
    if c.get("server_env"):
        args += f"`, server environment: `{' '.join(c['server_env'])}"
    if c.get("model_config"):
        args += f"`, model config.yaml: `{'; '.join(c['model_config'])}"
    return [
        f"- Machine: {m['cpu_model']} ({m.get('cpu_mhz', '?')} MHz, AVX2 {m.get('cpu_flags_avx2')}, AVX-512 "
        f"{m.get('cpu_flags_avx512')}), {m['cores']} cores, {m.get('memory_gib')} GiB, Linux {m.get('kernel')}",
        f"- Software: Python {m['python']}, TensorFlow {m['tensorflow']}, Keras {m['keras']}, grpcio {m['grpcio']}",
        f"- Run: {m['date']}, kerve commit `{c.get('kerve_commit')}`{dirty}, extra server flags: `{args}`",
        f"- Load: {c['duration_s']:g} s window after {c['warmup_s']:g} s warm-up per case, up to "
        f"{c['client_procs']} load generator processes, loadavg at start {' '.join(m.get('loadavg_at_start') or [])}",
    ]


def inprocess(results: dict[str, Any]) -> list[str]:
    limit = results["config"].get("max_other_cpu", 0.25)
    lines = [
        "| model | run | batch | samples/s | p50 ms/call | ms/sample | CPU | other CPU |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m in results["inprocess"].items():
        for run, gave_best, rows in sweeps(m):
            for batch, row in rows.items():
                best = " **best**" if gave_best and int(batch) == m["best"]["batch"] else ""
                lines.append(
                    f"| {name} | {run} | {batch}{best} | {row['samples_per_s']:.0f}"
                    f"{' †' if row.get('other_cpu_cores', 0.0) > limit else ''} | {row['p50_ms']:.3f} | "
                    f"{row['ms_per_sample']:.3f} | {_f(row.get('cpu_cores'), '.2f')} | "
                    f"{_f(row.get('other_cpu_cores'), '.2f')} |"
                )
    return lines


def _cases(results: dict[str, Any], field: str) -> Iterator[tuple[str, str, str, dict[str, Any], dict[str, Any]]]:
    """Each kerve case whose entry has `field`, unary then streamed: (mode, model, concurrency, kerve's entry, the
    bare gRPC server's entry for the same case or {})."""
    for mode, rows in (("unary", results), ("stream", results.get("streaming", {}))):
        ceiling = results.get("grpc_ceiling", {}).get(mode, {})
        for key, k in rows.items():
            if "/c" in key and isinstance(k, dict) and field in k:
                model, conc = key.split("/c")
                yield mode, model, conc, k, ceiling.get(key, {})


def rpc(results: dict[str, Any]) -> list[str]:
    lines = [
        "| model | mode | c | ceiling samples/s | ceiling p50 / p99 ms | kerve samples/s | kerve p50 / p99 ms "
        "| vs ceiling | vs in-process best | kerve CPU | generator CPU | other CPU | idle cores, kerve / ceiling "
        "| kerve mean batch | model busy "
        "| ideal vs ceiling | kerve own ms/req | model call vs in-process | in handler / outside ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for mode, model, conc, k, c in _cases(results, "samples_per_s"):
        mark = " †" if k.get("disturbed") else ""
        lines.append(
            f"| {model} | {mode} | {conc} | {_f(c.get('samples_per_s'), '.0f')} | "
            f"{_f(c.get('p50_ms'), '.2f')} / {_f(c.get('p99_ms'), '.2f')} | {k['samples_per_s']:.0f}{mark} | "
            f"{k['p50_ms']:.2f} / {k['p99_ms']:.2f} | {_f(k['ratio_vs_grpc_ceiling'], '.2f')} | "
            f"{_f(k['ratio_vs_inprocess_best'], '.2f')} | {k['server_cpu_cores']:.2f} | "
            f"{k['client_cpu_cores']:.2f} | {k['other_cpu_cores']:.2f} | "
            f"{_f(k.get('idle_cores'), '.2f')} / {_f(c.get('idle_cores'), '.2f')} | {_f(k.get('mean_batch'), '.1f')} | "
            f"{_f(k.get('model_busy'), '.2f')} | "
            f"{_f(k.get('ideal_ratio_vs_grpc_ceiling'), '.2f')} | {_f(k.get('kerve_own_cpu_ms_per_req'), '.2f')} | "
            f"{_f(k.get('model_call_vs_inprocess'), '.2f')} | "
            f"{_f(k.get('server_ms_per_req'), '.2f')} / {_f(k.get('outside_server_ms_per_req'), '.2f')} |"
        )
    return lines


def targets(results: dict[str, Any]) -> list[str]:
    lines = [
        "| target (issue 6) | measured | met | a zero-overhead server (bench/ideal.py) |",
        "|---|---|---|---|",
    ]
    for model in COMPUTE_BOUND:
        for mode, rows in (("unary", results), ("stream", results.get("streaming", {}))):
            k = rows.get(f"{model}/c64")
            if k:
                r = k["ratio_vs_inprocess_best"]
                lines.append(
                    f"| {model} c64 ({mode}) >= 0.9 of in-process best | {_f(r, '.2f')} | "
                    f"{'yes' if r and r >= 0.9 else 'no'} | {_ideal(k, 'ideal_ratio_vs_inprocess_best')} |"
                )
    for mode, rows in (("unary", results), ("stream", results.get("streaming", {}))):
        for c in (1, 8, 64):
            k = rows.get(f"{LIGHT}/c{c}")
            if k:
                r = k["ratio_vs_grpc_ceiling"]
                met = "yes" if r and r >= 0.9 else "no"
                lines.append(
                    f"| {LIGHT} c{c} ({mode}) >= 0.9 of bare gRPC | {_f(r, '.2f')} | {met} | "
                    f"{_ideal(k, 'ideal_ratio_vs_grpc_ceiling')} |"
                )
    for model in results.get("inprocess", {}):
        for mode, rows in (("unary", results), ("stream", results.get("streaming", {}))):
            k = rows.get(f"{model}/c1")
            if k and k.get("p50_minus_inprocess_b1_ms") is not None:
                d = k["p50_minus_inprocess_b1_ms"]
                # the zero-overhead column: the bare server running the model's call in a thread (bench.ceiling
                # --model), against the same in-process reference
                floor = results.get("bare_model", {}).get(mode, {}).get(f"{model}/c1", {})
                f = floor.get("p50_minus_inprocess_b1_ms")
                lines.append(
                    f"| {model} c1 ({mode}) p50 within 1 ms of in-process batch 1 | {d:+.2f} ms | "
                    f"{'yes' if d <= 1.0 else 'no'} | {'' if f is None else format(f, '+.2f') + ' ms'} |"
                )
    return lines


def _role(roles: dict[str, Any] | None, role: str | tuple[str, ...], *keys: str) -> str:
    """A role's (or several roles' summed) figures, ` / `-joined."""
    found = [roles[r] for r in ((role,) if isinstance(role, str) else role) if r in (roles or {})]
    if not found:
        return "–"
    return " / ".join(format(sum(r[key] for r in found), ".2f") for key in keys)


def threads(results: dict[str, Any]) -> list[str]:
    """Per request, by thread role (bench/threads.py): kerve's and the bare gRPC server's. Empty when the run
    has no per-thread figures (not Linux, or a results file from before they were recorded)."""
    lines = [
        "| model | mode | c | kerve loop CPU / wait ms, wake-ups, syscalls | kerve workers CPU ms, wake-ups "
        "| kerve TF's threads (pools, native) CPU ms, wake-ups | kerve gRPC threads CPU ms, wake-ups "
        "| bare loop CPU / wait ms, wake-ups, syscalls | bare gRPC threads CPU ms, wake-ups |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for mode, model, conc, k, c in _cases(results, "threads"):
        kt, ct = k["threads"], c.get("threads")
        lines.append(
            f"| {model} | {mode} | {conc} | {_role(kt, 'loop', 'cpu_ms', 'wait_ms')}, "
            f"{_role(kt, 'loop', 'wakeups', 'syscalls')} | {_role(kt, 'batch', 'cpu_ms', 'wakeups')} | "
            f"{_role(kt, ('tf', 'native'), 'cpu_ms', 'wakeups')} | {_role(kt, 'grpc', 'cpu_ms', 'wakeups')} | "
            f"{_role(ct, 'loop', 'cpu_ms', 'wait_ms')}, {_role(ct, 'loop', 'wakeups', 'syscalls')} | "
            f"{_role(ct, 'grpc', 'cpu_ms', 'wakeups')} |"
        )
    return lines if len(lines) > 2 else []


def _ideal(k: dict[str, Any], key: str) -> str:
    value = k.get(key)
    return "" if value is None else f"{value:.2f} ({k['ideal_limit']}-bound)"


def render(results: dict[str, Any]) -> str:
    parts = [
        *machine(results),
        "",
        "In process († = other processes used more than "
        f"{results['config'].get('max_other_cpu', 0.25)} cores during the measurement even after re-measuring):",
        "",
        *inprocess(results),
        "",
        "Over gRPC (batch-1 requests; † = other processes used more than "
        f"{results['config'].get('max_other_cpu', 0.25)} cores during the window even after re-measuring):",
        "",
        *rpc(results),
        "",
        *targets(results),
    ]
    per_thread = threads(results)
    if per_thread:
        parts += [
            "",
            f"{THREADS_TITLE}:",
            "",
            *per_thread,
        ]
    return "\n".join(parts) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, nargs="?", default=Path(__file__).parent / "results" / "latest.json")
    args = parser.parse_args()
    print(render(json.loads(args.results.read_text())), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
