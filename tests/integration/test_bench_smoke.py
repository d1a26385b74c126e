"""The benchmark runs end to end (quick mode, one tiny model) and writes results in the documented schema.

No performance thresholds here: timings on a shared 2-core machine are not something a test can assert.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from bench import report

ROOT = Path(__file__).resolve().parents[2]
ENTRY_KEYS = {"samples_per_s", "p50_ms", "p99_ms", "ratio_vs_inprocess_best", "ratio_vs_grpc_ceiling"}


def _positive(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def run_bench(module: str, *args: str, out: Path, timeout: float) -> tuple[dict, str]:
    """Run `python -m <module> <args> --out <out>` from the repo root; its JSON and its stdout."""
    cmd = [sys.executable, "-m", module, *args, "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_quick_bench_writes_the_documented_schema(tmp_path: Path) -> None:
    results, stdout = run_bench(
        "bench.run", "--quick", "--models", "tiny", "--concurrency", "1,4", "--duration", "1",
        "--modes", "unary,stream", "--retries", "0",
        # the options for a server of several processes: connections per generator process, pipelined streams
        "--channels", "2", "--stream-depth", "2", "--server-arg=--processes=2",
        out=tmp_path / "bench.json", timeout=110,
    )  # fmt: skip
    assert "vs ceil" in stdout  # the side-by-side table was printed
    assert "Per request, by thread role" in stdout
    # the server's choice for its batches of 1 row (--caller-thread-max-batch auto, the default), read from its log
    assert any(
        choice["label"].startswith("tiny/1 serving_default") and choice["rows"] == "1"
        for choice in results["caller_thread_choices"]
    ), results["caller_thread_choices"]
    assert "kerve's small batches (--caller-thread-max-batch auto)" in stdout

    for section in (results, results["streaming"]):
        for key in ("tiny/c1", "tiny/c4"):
            entry = section[key]
            assert set(entry) >= ENTRY_KEYS, (key, entry)
            assert all(_positive(entry[k]) for k in ENTRY_KEYS), (key, entry)
            assert entry["p99_ms"] >= entry["p50_ms"]
            assert entry["errors"] == 0
            assert entry["mean_batch"] >= 1  # from the group's summed /metrics
            # what a zero-overhead server could reach, from this run's own figures (bench/ideal.py)
            assert entry["ideal_limit"] in {"cpu", "latency", "ceiling"}
            assert 0 < entry["ideal_ratio_vs_grpc_ceiling"] <= 1
            assert _positive(entry["model_cpu_ms_per_sample"]) and "kerve_own_cpu_ms_per_req" in entry
            assert _positive(entry["model_ms_per_batch"]) and _positive(entry["model_call_vs_inprocess"])
            # the share of the window a model call ran (over the group's replicas), and the cores left idle
            assert 0 < entry["model_busy"] <= 2 * 1.1 and 0 <= entry["idle_cores"] <= results["machine"]["cores"]
            # a request's time inside kerve's handler, and the rest of the client's mean latency
            assert 0 < entry["server_ms_per_req"] < entry["mean_ms"]
            assert entry["outside_server_ms_per_req"] == pytest.approx(
                entry["mean_ms"] - entry["server_ms_per_req"], abs=1e-3
            )
            # per request by thread role (bench/threads.py): the loops of the group's processes, its workers
            roles = entry["threads"]
            assert roles["loop"]["threads"] == 3 and _positive(roles["loop"]["cpu_ms"]), roles
            assert roles["batch"]["threads"] >= 2 and roles["grpc"]["threads"] >= 2, roles
    for mode in ("unary", "stream"):
        for key in ("tiny/c1", "tiny/c4"):
            ceiling = results["grpc_ceiling"][mode][key]
            assert all(_positive(ceiling[k]) for k in ("samples_per_s", "p50_ms", "p99_ms")), ceiling
            assert _positive(ceiling["threads"]["loop"]["cpu_ms"]) and "batch" not in ceiling["threads"], ceiling
            assert 0 <= ceiling["idle_cores"] <= results["machine"]["cores"] and "model_busy" not in ceiling
        # the c1 floor, measured at c1 only: the bare server running the model's call in a thread
        assert set(results["bare_model"][mode]) == {"tiny/c1"}
        floor = results["bare_model"][mode]["tiny/c1"]
        assert all(_positive(floor[k]) for k in ("samples_per_s", "p50_ms")) and floor["errors"] == 0, floor
        kerve_c1 = (results if mode == "unary" else results["streaming"])["tiny/c1"]
        assert kerve_c1["bare_model_p50_ms"] == floor["p50_ms"] and "p50_minus_bare_model_ms" in kerve_c1
        assert "bare_model_p50_ms" not in (results if mode == "unary" else results["streaming"])["tiny/c4"]
    # the report's c1 latency rows carry the floor in the zero-overhead column
    c1_rows = [line for line in report.render(results).splitlines() if "p50 within 1 ms" in line]
    assert len(c1_rows) == 2 and all(line.endswith(" ms |") for line in c1_rows), c1_rows

    inprocess = results["inprocess"]["tiny"]
    assert set(inprocess["batches"]) == {"1", "8", "32"}
    assert all(_positive(row["samples_per_s"]) and _positive(row["p50_ms"]) for row in inprocess["batches"].values())
    # the signature with TF's defaults (its pool threads spin), then as kerve calls it (they sleep): the best of both
    assert inprocess["tf_thread_spinning"] is True and inprocess["as_served"]["tf_thread_spinning"] is False
    assert set(inprocess["as_served"]["batches"]) == {"1", "8", "32"}
    rows = [*inprocess["batches"].values(), *inprocess["as_served"]["batches"].values()]
    assert inprocess["best"]["samples_per_s"] == max(r["samples_per_s"] for r in rows)
    served = results["config"]["served_call"]  # set up as `kerve serve --processes=2` sets a process up
    assert served["server_args"] == ["--processes=2"] and served["call_path"] == "session"
    assert served["caller_thread_max_batch"] == "auto" and served["intra_op_threads"] >= 1

    machine = results["machine"]
    assert machine["cpu_model"] and _positive(machine["cores"])
    assert machine["tensorflow"] and machine["date"]
    assert results["config"]["server_exit_codes"] == {"grpc_ceiling": 0, "bare_model": 0, "kerve": 0}
    assert results["config"]["server_args"] == ["--processes=2"]
    assert (results["config"]["channels_per_client_proc"], results["config"]["stream_depth"]) == (2, 2)
    assert results["config"]["event_loop"] == "asyncio"  # both servers on kerve's default loop


def test_profile_summary_splits_samples_by_component() -> None:
    from bench import profile

    stacks = profile.parse(
        "thread (0x1);run (asyncio/base_events.py:1);_infer (kerve/server/inference.py:50) 3\n"
        "thread (0x1);run (asyncio/base_events.py:1);_handle (grpc/_cython/cygrpc.pyx:9) 1\n"
    )
    summary = profile.summarize(stacks)
    assert summary["samples"] == 4
    assert dict(map(tuple, summary["components_pct"])) == {"kerve.server": 75.0, "grpc": 25.0}
    assert summary["self_pct"][0] == ["_infer (kerve/server/inference.py)", 75.0]


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_tf_threads_bench_measures_each_thread_count(tmp_path: Path) -> None:
    results, _ = run_bench(
        "bench.tf_threads", "--models", "tiny", "--intra", "0,1", "--gaps", "0,0.5", "--seconds", "0.2",
        "--batch", "4", out=tmp_path / "threads.json", timeout=170,
    )  # fmt: skip
    results = results["tiny"]
    assert set(results) == {"0", "1"}
    for figures in results.values():
        assert set(figures["batch1_p50_ms_by_gap_ms"]) == {"0.0", "0.5"}
        assert all(_positive(v) for v in figures["batch1_p50_ms_by_gap_ms"].values())
        assert set(figures["by_callers"]) == {"1", "2"}
        assert all(_positive(c["samples_per_s"]) for c in figures["by_callers"].values())


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_request_path_bench_counts_kerve_own_work(tmp_path: Path) -> None:
    results, _ = run_bench(
        "bench.request_path", "--concurrency", "1,4", "--seconds", "0.2", "--response-cache",
        out=tmp_path / "path.json", timeout=110,
    )  # fmt: skip
    assert set(results) == {"unary", "stream", "unary+cache", "stream+cache"}
    for rows in results.values():
        assert set(rows) == {"c1", "c4"}
        for row in rows.values():
            assert all(_positive(row[k]) for k in ("requests_per_s", "loop_cpu_us_per_req", "python_calls_per_req"))


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_gil_contention_bench_runs_both_placements(tmp_path: Path) -> None:
    results, _ = run_bench(
        "bench.gil_contention", "--models", "tiny", "--batch", "4", "--busy", "0,0.5", "--seconds", "0.5",
        out=tmp_path / "gil.json", timeout=230,
    )  # fmt: skip
    results = results["tiny"]
    assert set(results) == {"thread", "process"}
    for rows in results.values():
        assert set(rows) == {"0.0", "0.5"}
        assert all(_positive(row["calls_per_s"]) and _positive(row["call_p50_ms"]) for row in rows.values())
        assert rows["0.0"]["loop_work_vs_alone"] is None and _positive(rows["0.5"]["loop_work_vs_alone"])


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_latency_path_bench_times_every_stage_of_a_request(tmp_path: Path) -> None:
    results, stdout = run_bench(
        "bench.latency_path", "--models", "tiny", "--requests", "60", "--warmup", "20", "--inprocess-seconds", "0.2",
        out=tmp_path / "latency.json", timeout=230,
    )  # fmt: skip
    assert "grpc_in" in stdout  # the stage table was printed
    figures = results["models"]["tiny"]
    # Every request was matched to its own server events: the instrumented names still exist in the server.
    assert figures["matched"] == 60
    stages = figures["stages_p50_ms"]
    assert set(stages) == {"grpc_in", "decode", "dispatch", "to_worker", "model", "to_loop", "respond", "grpc_out"}
    assert all(_positive(v) for v in stages.values())
    assert all(
        _positive(figures[k]) for k in ("inprocess_b1_p50_ms", "bare_grpc_p50_ms", "bare_model_p50_ms", "total_p50_ms")
    )
    # the batch-1 call alone both ways; the target is held to the faster, the model stage to kerve's own call
    direct, served = figures["inprocess_direct_b1_p50_ms"], figures["inprocess_served_b1_p50_ms"]
    assert _positive(direct) and _positive(served) and figures["inprocess_b1_p50_ms"] == min(direct, served)
    assert figures["model_minus_inprocess_ms"] == pytest.approx(stages["model"] - served, abs=1e-3)
    # The two bare servers were matched too, and each split into its three stages.
    assert figures["bare_matched"] == figures["bare_model_matched"] == 60
    for key in ("bare_stages_p50_ms", "bare_model_stages_p50_ms"):
        assert set(figures[key]) == {"grpc_in", "handler", "grpc_out"} and all(map(_positive, figures[key].values()))
    # Medians do not add exactly, but the stages tile each request end to end.
    assert 0.5 * figures["total_p50_ms"] <= figures["sum_of_stage_p50s_ms"] <= 1.5 * figures["total_p50_ms"]
    assert isinstance(figures["target_met"], bool)


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_gc_pauses_bench_times_collections_in_a_server_with_and_without_freezing(tmp_path: Path) -> None:
    results, stdout = run_bench(
        "bench.gc_pauses", "--models", "tiny", "--model", "tiny", "--rounds", "1", "--duration", "3",
        "--warmup", "0.3", "--concurrency", "4", "--server-arg=--call-path=function", out=tmp_path / "gc.json",
        timeout=230,
    )  # fmt: skip
    assert "start-up max ms" in stdout  # the table was printed
    rows = {arm: row for arm, _round, row in results["rows"]}
    assert set(rows) == {"freeze", "no-freeze"}
    # The flag reached a real server: with --gc-freeze the loaded heap (TensorFlow, the model) ended up frozen.
    assert rows["freeze"]["frozen_objects"] > 10_000 and rows["no-freeze"]["frozen_objects"] == 0
    for row in rows.values():
        assert row["errors"] == 0 and _positive(row["samples_per_s"]) and _positive(row["max_ms"])
        # the timer saw the requests' collections inside the window. The function call path leaves garbage for the
        # collector (5-6 young collections in this 3 s window here); the session path, the CPU default, leaves
        # none since its C++ callable (0 in the same window), so it cannot show the timer working.
        assert row["young"]["count"] > 0
        assert row["outside_window_max_ms"] > 0  # and those of the start-up


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_shared_memory_bench_compares_raw_and_shared_inputs(tmp_path: Path) -> None:
    results, stdout = run_bench(
        "bench.shared_memory", "--models", "tiny", "--batches", "1,4", "--seconds", "0.2", "--rounds", "2",
        out=tmp_path / "shm.json", timeout=170,
    )  # fmt: skip
    assert set(results["results"]) == {"tiny/b1", "tiny/b4"}
    for row in results["results"].values():
        assert row["input_bytes"] > 0 and _positive(row["shm_vs_raw"])
        for mode in ("raw", "shm"):
            assert len(row[mode]["rounds_requests_per_s"]) == 2
            assert all(_positive(row[mode][k]) for k in ("requests_per_s", "p50_ms", "p99_ms", "requests"))
    assert "shm / raw" in stdout
