"""What a case's window says beyond samples/s: kerve's counts over it (`bench.run._server_side`) and the machine's
idle cores (`bench.loadgen.machine_idle_s`). Pure arithmetic and /proc, no server."""

from __future__ import annotations

import os
import time

import pytest

from bench import loadgen
from bench.run import _server_side

BEFORE = {
    "kerve_batch_size_sum": 100.0,
    "kerve_batch_size_count": 10.0,
    "kerve_compute_duration_seconds_sum": 1.0,
    "kerve_request_duration_seconds_sum": 2.0,
    "kerve_request_duration_seconds_count": 100.0,
}


def test_server_side_figures_over_the_window() -> None:
    # in a 5 s window: 40 batches of 8 rows, 2.5 s of model calls, 320 requests of 10 ms each in the handler
    after = {
        "kerve_batch_size_sum": 420.0,
        "kerve_batch_size_count": 50.0,
        "kerve_compute_duration_seconds_sum": 3.5,
        "kerve_request_duration_seconds_sum": 5.2,
        "kerve_request_duration_seconds_count": 420.0,
    }
    out = _server_side(BEFORE, after, client_mean_ms=25.0, window_s=5.0)
    assert out["mean_batch"] == 8.0
    assert out["model_ms_per_batch"] == pytest.approx(62.5)
    assert out["model_busy"] == pytest.approx(0.5)  # the replica ran a batch half the window
    assert out["server_ms_per_req"] == pytest.approx(10.0)
    assert out["outside_server_ms_per_req"] == pytest.approx(15.0)


def test_server_side_without_batches_has_no_batch_figures() -> None:
    out = _server_side(BEFORE, dict(BEFORE), client_mean_ms=1.0, window_s=5.0)
    assert "mean_batch" not in out and "model_busy" not in out and "server_ms_per_req" not in out


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="Linux /proc")
def test_machine_idle_and_busy_time_add_up_to_the_cores() -> None:
    wall0, idle0, busy0 = time.monotonic(), loadgen.machine_idle_s(), loadgen.machine_busy_s()
    time.sleep(0.5)
    wall = time.monotonic() - wall0
    idle, busy = loadgen.machine_idle_s() - idle0, loadgen.machine_busy_s() - busy0
    assert idle >= 0 and busy >= 0
    # every core's time is idle or busy (or stolen by a hypervisor): the two cannot exceed the cores' wall time,
    # up to a clock tick per core of rounding
    tick = 1 / os.sysconf("SC_CLK_TCK")
    cores = os.cpu_count() or 1
    assert idle + busy <= cores * (wall + 2 * tick)
    assert idle + busy >= 0.5 * cores * wall  # steal aside, the two account for the cores' time
