"""bench/ideal.py: the zero-overhead estimate is plain arithmetic on measured figures; check it by hand."""

from __future__ import annotations

import pytest

from bench import ideal

INPROCESS = {
    "batches": {
        # cpu ms per sample = cpu_cores * 1000 / samples_per_s
        "1": {"samples_per_s": 1000.0, "cpu_cores": 1.0, "p50_ms": 1.0},  # 1.0 ms
        "8": {"samples_per_s": 4000.0, "cpu_cores": 1.6, "p50_ms": 2.0, "mean_ms": 2.0},  # 0.4 ms
        "32": {"samples_per_s": 8000.0, "cpu_cores": 1.6, "p50_ms": 4.0},  # 0.2 ms
        "128": {"samples_per_s": 16000.0, "cpu_cores": 1.6, "p50_ms": 8.0},  # 0.1 ms
    },
    "best": {"batch": 128, "samples_per_s": 16000.0},
}
CEILING = {"samples_per_s": 3000.0, "server_cpu_ms_per_req": 0.3, "client_cpu_ms_per_req": 0.3, "p50_ms": 20.0}


def kerve(mean_batch: float, server_cpu: float = 1.0) -> dict[str, float]:
    return {"samples_per_s": 1000.0, "server_cpu_ms_per_req": server_cpu, "mean_batch": mean_batch}


def test_cpu_limit_uses_the_cheapest_batch_the_case_allows() -> None:
    # c64, max batch 64: batches 1, 8, 32 allowed -> 0.2 ms; 2 cores / (0.3 + 0.3 + 0.2) ms = 2500/s
    out = ideal.estimate(kerve(10), CEILING, INPROCESS, 64, cores=2, max_batch=64)
    assert out["ideal_limit"] == "cpu"
    assert out["ideal_samples_per_s"] == pytest.approx(2500.0)
    assert out["ideal_ratio_vs_grpc_ceiling"] == pytest.approx(2500 / 3000, abs=1e-4)
    assert out["ideal_ratio_vs_inprocess_best"] == pytest.approx(2500 / 16000, abs=1e-4)
    # a smaller max batch or concurrency leaves only dearer batches
    assert ideal.estimate(kerve(4), CEILING, INPROCESS, 8, 2, 64)["ideal_samples_per_s"] == pytest.approx(2000.0)


def test_own_cost_takes_out_the_bare_server_and_the_model_at_the_batch_kerve_formed() -> None:
    out = ideal.estimate(kerve(mean_batch=10, server_cpu=1.0), CEILING, INPROCESS, 64, 2, 64)
    assert out["model_cpu_ms_per_sample"] == pytest.approx(0.4)  # batch 8 is closest to 10
    assert out["kerve_own_cpu_ms_per_req"] == pytest.approx(1.0 - 0.3 - 0.4)
    out = ideal.estimate(kerve(mean_batch=100), CEILING, INPROCESS, 64, 2, 64)
    assert out["model_cpu_ms_per_sample"] == pytest.approx(0.1)  # closest by ratio: 128


FLOOR = {"samples_per_s": 500.0, "server_cpu_ms_per_req": 1.6}  # the bare server running the model's call, c1


def test_concurrency_one_is_bound_by_the_bare_server_running_the_model() -> None:
    out = ideal.estimate(kerve(1), CEILING, INPROCESS, 1, 2, 64, c1_floor=FLOOR)
    assert out["ideal_limit"] == "latency"
    assert out["ideal_samples_per_s"] == pytest.approx(500.0)
    # only at concurrency 1: with requests in flight side by side, one request's latency bounds nothing
    assert ideal.estimate(kerve(4), CEILING, INPROCESS, 8, 2, 64, c1_floor=FLOOR)["ideal_limit"] == "cpu"
    # not measured (no c1 case in the run): no latency limit
    assert ideal.estimate(kerve(1), CEILING, INPROCESS, 1, 2, 64)["ideal_limit"] != "latency"


def test_never_above_the_bare_ceiling() -> None:
    cheap = {**CEILING, "server_cpu_ms_per_req": 0.05, "client_cpu_ms_per_req": 0.05}
    out = ideal.estimate(kerve(32), cheap, INPROCESS, 64, 16, 64)
    assert out["ideal_limit"] == "ceiling"
    assert out["ideal_ratio_vs_grpc_ceiling"] == 1.0


def test_missing_figures_give_no_estimate() -> None:
    assert ideal.estimate(kerve(4), {**CEILING, "samples_per_s": 0}, INPROCESS, 8, 2, 64) == {}
    assert ideal.estimate(kerve(4), CEILING, {"batches": {}}, 8, 2, 64) == {}
    no_batch = {k: v for k, v in kerve(4).items() if k != "mean_batch"}
    out = ideal.estimate(no_batch, CEILING, INPROCESS, 8, 2, 64)  # no /metrics: no cost split, still a limit
    assert "kerve_own_cpu_ms_per_req" not in out and out["ideal_limit"] == "cpu"


@pytest.mark.parametrize(
    ("args", "expected"),
    [([], 64), (["--max-batch-size=128"], 128), (["--processes=2", "--max-batch-size", "16"], 16)],
)
def test_max_batch_size_from_the_server_args(args: list[str], expected: int) -> None:
    assert ideal.max_batch_size(args) == expected


def test_model_call_inside_the_server_against_in_process() -> None:
    row = {**kerve(mean_batch=10), "model_ms_per_batch": 5.0}  # 0.5 ms per sample in the server
    out = ideal.estimate(row, CEILING, INPROCESS, 64, 2, 64)
    assert out["model_call_vs_inprocess"] == pytest.approx(0.5 / (2.0 / 8))  # batch 8 is closest: 0.25 ms/sample
    assert "model_call_vs_inprocess" not in ideal.estimate(kerve(10), CEILING, INPROCESS, 64, 2, 64)


def test_at_concurrency_one_kerves_own_cost_is_taken_against_the_bare_server_running_the_same_call() -> None:
    # 2.0 ms of kerve's server CPU per request against 1.6 in the bare server that runs the model's call itself:
    # calls that far apart cost more CPU than the back-to-back in-process one (1.0 ms at batch 1), and not in kerve
    out = ideal.estimate(kerve(1, server_cpu=2.0), CEILING, INPROCESS, 1, 2, 64, c1_floor=FLOOR)
    assert out["kerve_own_cpu_ms_per_req"] == pytest.approx(2.0 - 1.6)
    assert out["model_cpu_ms_per_sample"] == pytest.approx(1.0)  # still reported: the call alone
    # no floor measured (or no CPU figure for it): the bare ceiling and the model alone, as at higher concurrency
    without = ideal.estimate(kerve(1, server_cpu=2.0), CEILING, INPROCESS, 1, 2, 64)
    assert without["kerve_own_cpu_ms_per_req"] == pytest.approx(2.0 - 0.3 - 1.0)
    no_cpu = {"samples_per_s": 500.0}
    assert ideal.estimate(kerve(1, server_cpu=2.0), CEILING, INPROCESS, 1, 2, 64, c1_floor=no_cpu)[
        "kerve_own_cpu_ms_per_req"
    ] == pytest.approx(0.7)
