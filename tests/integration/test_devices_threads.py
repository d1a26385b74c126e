"""TensorFlow's thread pools as `configure_devices` leaves them (each case in a fresh process: TF fixes its
threading when its runtime starts, once per process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from kerve.server.cpus import schedulable_cores, usable_cores

# TF's default (0) unless a CPU quota caps the cores: then kerve sizes both pools for the quota
DEFAULT = usable_cores() if usable_cores() < schedulable_cores() else 0

PROBE = """
import json, sys
from kerve.server import devices as d
from kerve.server.devices import configure_devices, thread_counts
replicas, intra, inter, processes, quota = json.loads(sys.argv[1])
if quota:  # as in a pod limited to `quota` CPUs on an 8-core node
    d.usable_cores, d.schedulable_cores = (lambda: quota), (lambda: 8)
devices = configure_devices("cpu", replicas, intra, inter, processes=processes)
print(json.dumps([list(devices.names), list(thread_counts())]))
"""

SPINNING = """
import json, logging, sys
import tensorflow as tf
from kerve.server.devices import configure_devices, thread_spinning
from kerve.server.model import _session_config
spinning, started_before = json.loads(sys.argv[1])
logging.basicConfig(level=logging.WARNING)
if started_before:  # something touched TensorFlow's runtime before the server configured it
    tf.constant(1.0)
configure_devices("cpu", spinning=spinning)
print(json.dumps([thread_spinning(), _session_config().experimental.disable_thread_spinning]))
"""


def _run(probe: str, args: list[object]) -> tuple[list, str]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [sys.executable, "-c", probe, json.dumps(args)], capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def _configure(
    cpu_replicas: int, intra: int = 0, inter: int = 0, processes: int = 1, quota: int = 0
) -> tuple[list[str], list[int]]:
    (names, threads), _ = _run(PROBE, [cpu_replicas, intra, inter, processes, quota])
    return names, threads


def test_one_replica_gets_tensorflows_default_or_the_cpu_quota() -> None:
    assert _configure(1) == (["/device:CPU:0"], [DEFAULT, DEFAULT])


def test_cpu_replicas_split_the_cores_between_them() -> None:
    names, threads = _configure(2)
    assert names == ["/device:CPU:0", "/device:CPU:1"]
    assert threads == [max(1, usable_cores() // 2), DEFAULT]


def test_server_processes_split_the_cores_too() -> None:
    assert _configure(1, processes=2) == (["/device:CPU:0"], [max(1, usable_cores() // 2), DEFAULT])
    assert _configure(2, processes=2)[1] == [max(1, usable_cores() // 4), DEFAULT]


def test_a_cpu_quota_sizes_both_pools() -> None:
    assert _configure(1, quota=2)[1] == [2, 2]
    assert _configure(2, quota=4)[1] == [2, 4]  # the replicas split the quota's cores


@pytest.mark.parametrize("replicas", [1, 2])
def test_explicit_thread_counts_win(replicas: int) -> None:
    assert _configure(replicas, 3, 2)[1] == [3, 2]


@pytest.mark.parametrize("spinning", [True, False])
def test_thread_spinning_reaches_the_runtime_and_the_sessions_it_makes(spinning: bool) -> None:
    # the eager context holds the setting (its op pool is made with it) and the session call path's config copies it
    (runtime_spins, session_disables), _ = _run(SPINNING, [spinning, False])
    assert runtime_spins is spinning
    assert session_disables is not spinning


def test_a_runtime_started_before_the_server_keeps_spinning_and_says_so() -> None:
    (runtime_spins, session_disables), log = _run(SPINNING, [False, True])
    assert runtime_spins is True and session_disables is False
    assert "TensorFlow's runtime started before the server configured it: its threads spin" in log
