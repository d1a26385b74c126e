"""bench/inprocess_report.py: the in-process sweep of the signature and the one as kerve calls the model, as one."""

from __future__ import annotations

from typing import Any

import pytest

from bench import ideal
from bench.inprocess import server_settings
from bench.inprocess_report import batch1_p50_ms, merge_as_served, served_figures, sweeps


def _row(samples_per_s: float, cpu_cores: float, p50_ms: float) -> dict[str, float]:
    return {"samples_per_s": samples_per_s, "cpu_cores": cpu_cores, "p50_ms": p50_ms, "mean_ms": p50_ms}


def _sweep(spinning: bool, rows: dict[str, dict[str, float]]) -> dict[str, Any]:
    best = max(rows, key=lambda b: rows[b]["samples_per_s"])
    return {
        "tf_version": "x",
        "tf_thread_spinning": spinning,
        "served": {"call_path": "session", "caller_thread_max_batch": "auto"},
        "models": {"m": {"path": "/r/m/1", "batches": rows, "best": {"batch": int(best), **rows[best]}}},
    }


# the signature called directly, its pool threads spinning: faster at batch 1 (a chain of small ops) but dearer in
# CPU; as kerve calls it, the pool threads sleeping: the best batch goes faster
SPIN = _sweep(True, {"1": _row(200.0, 1.6, 4.0), "32": _row(1000.0, 2.0, 30.0)})
SLEEP = _sweep(False, {"1": _row(150.0, 1.0, 6.0), "32": _row(1100.0, 1.8, 28.0)})


def test_the_best_is_the_better_run_and_names_its_setting() -> None:
    model = merge_as_served(SPIN, SLEEP)["models"]["m"]
    assert model["best"] == {
        "batch": 32,
        **SLEEP["models"]["m"]["batches"]["32"],
        "run": "served",
        "tf_thread_spinning": False,
    }
    assert model["batches"] == SPIN["models"]["m"]["batches"]  # the reference rows stay where they were
    assert model["as_served"]["batches"] == SLEEP["models"]["m"]["batches"]
    # the other way round: the reference run gives the best
    swapped = merge_as_served(SLEEP, SPIN)["models"]["m"]
    assert swapped["best"]["samples_per_s"] == 1100.0 and swapped["best"]["run"] == "direct"
    assert merge_as_served(SPIN, SLEEP)["served"] == SLEEP["served"]  # how kerve called them, kept


def test_the_c1_target_is_held_to_the_faster_batch_1_call() -> None:
    assert batch1_p50_ms(merge_as_served(SPIN, SLEEP)["models"]["m"]) == 4.0
    assert batch1_p50_ms(SLEEP["models"]["m"]) == 6.0  # one run only
    assert batch1_p50_ms({"batches": {"8": _row(1.0, 1.0, 1.0)}, "best": {}}) is None


def test_kerves_own_cost_is_taken_against_the_run_in_the_servers_setting() -> None:
    model = merge_as_served(SPIN, SLEEP)["models"]["m"]
    kerve = {"samples_per_s": 150.0, "server_cpu_ms_per_req": 7.5, "mean_batch": 1.0, "model_ms_per_batch": 6.0}
    ceiling = {"samples_per_s": 3000.0, "server_cpu_ms_per_req": 0.5, "client_cpu_ms_per_req": 0.3}
    out = ideal.estimate(kerve, ceiling, served_figures(model), 1, cores=2, max_batch=64)
    # sleeping pool: 1.0 core / 150 per s = 6.67 ms per sample; the spinning one's 8 ms would make kerve's cost < 0
    assert out["model_cpu_ms_per_sample"] == pytest.approx(1e3 / 150, abs=1e-3)
    assert out["kerve_own_cpu_ms_per_req"] == pytest.approx(7.5 - 0.5 - 1e3 / 150, abs=1e-3)
    assert out["model_call_vs_inprocess"] == pytest.approx(1.0)  # 6 ms in the server, 6 ms alone with a sleeping pool
    assert out["ideal_ratio_vs_inprocess_best"] == pytest.approx(out["ideal_samples_per_s"] / 1100.0, abs=1e-4)


def test_sweeps_name_each_run_and_mark_the_one_with_the_best() -> None:
    merged = merge_as_served(SPIN, SLEEP)["models"]["m"]
    assert [(run, best) for run, best, _ in sweeps(merged)] == [("direct", False), ("served", True)]
    assert [(run, best) for run, best, _ in sweeps(merge_as_served(SLEEP, SPIN)["models"]["m"])] == [
        ("direct", True),
        ("served", False),
    ]
    # a results file from before the second run: the direct call only
    assert [(run, best) for run, best, _ in sweeps(SPIN["models"]["m"])] == [("direct", True)]


def test_the_served_call_is_set_up_from_the_servers_own_flags_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KERVE_TF_THREAD_SPINNING", raising=False)
    monkeypatch.delenv("KERVE_CALL_PATH", raising=False)
    defaults = server_settings([])
    assert defaults.tf_thread_spinning is False and defaults.caller_thread_max_batch is None  # sleep; auto
    assert server_settings(["--tf-thread-spinning", "--caller-thread-max-batch=4"]).caller_thread_max_batch == 4
    monkeypatch.setenv("KERVE_TF_THREAD_SPINNING", "1")  # bench.run gives the child the server's --server-env
    assert server_settings([]).tf_thread_spinning is True
    assert server_settings(["--no-tf-thread-spinning"]).tf_thread_spinning is False  # a flag wins over the environment
    assert server_settings(["--max-batch-size=32", "--call-path=function"]).call_path == "function"
