"""`--processes` pieces that need no server: flag validation, the child command line, the port reservation and the
start barrier between the supervisor and its children."""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
from pathlib import Path

import pytest

from kerve.server import processes, settings


def _settings(tmp_path: Path, *argv: str) -> settings.ServerSettings:
    parser = argparse.ArgumentParser()
    settings.add_arguments(parser)
    return settings.from_args(parser.parse_args(["--model-repository", str(tmp_path), *argv]))


def test_processes_flag_is_validated(tmp_path: Path) -> None:
    assert _settings(tmp_path).processes == 1
    assert _settings(tmp_path, "--processes", "3").processes == 3
    with pytest.raises(ValueError, match="--processes must be >= 1"):
        _settings(tmp_path, "--processes", "0")
    # a group's processes apply model loads and unloads together (group_control.py)
    assert _settings(tmp_path, "--processes", "2", "--model-control", "explicit").model_control == "explicit"


def test_child_command_overrides_the_group_flags_last(tmp_path: Path) -> None:
    argv = ["serve", "--model-repository", str(tmp_path), "--processes", "4", "--port", "0", "--metrics-port", "9"]
    command = processes.child_command(argv, 2, 8512, (5, 6))
    assert command[1:3] == ["-m", "kerve"]
    child = _settings(tmp_path, *command[4:])  # argparse keeps the last value of a repeated flag
    assert (child.processes, child.process_index, child.port, child.metrics_port) == (4, 2, 8512, 0)
    assert child.group_fds == (5, 6)


def test_reserved_port_is_shared_only_with_reuseport_sockets() -> None:
    reservation = processes.reserve_port("127.0.0.1", 0)
    port = reservation.getsockname()[1]
    try:
        assert port > 0
        with socket.socket() as member:  # a process of the group: SO_REUSEPORT, same user
            member.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            member.bind(("127.0.0.1", port))
        with socket.socket() as stranger, pytest.raises(OSError):
            stranger.bind(("127.0.0.1", port))
    finally:
        reservation.close()


def test_barrier_opens_when_every_child_has_loaded() -> None:
    barrier = processes._Barrier(2)
    loaded_w, go_r = barrier.child_fds
    # the children's copies of their ends (the real ones are inherited through pass_fds)
    children = [(os.dup(loaded_w), os.dup(go_r)) for _ in range(2)]
    barrier.start()

    async def child(index: int) -> None:
        await processes.wait_for_group(*children[index], index)

    async def main() -> None:
        first = asyncio.ensure_future(child(0))
        done, _ = await asyncio.wait([first], timeout=0.3)
        assert not done  # one of two loaded: still held back
        await asyncio.wait_for(asyncio.gather(first, child(1)), timeout=10)

    asyncio.run(main())


def test_barrier_release_lets_waiting_children_go() -> None:
    barrier = processes._Barrier(3)
    loaded_w, go_r = barrier.child_fds
    fds = (os.dup(loaded_w), os.dup(go_r))
    barrier.start()
    barrier.release()  # the group is stopping before everyone loaded
    barrier.release()  # idempotent
    asyncio.run(asyncio.wait_for(processes.wait_for_group(*fds, 0), timeout=10))


_WRITER = """
import sys
from prometheus_client import Gauge
from kerve.server.metrics import retire

gauge = Gauge("nv_x", "a version's gauge", ["model", "version"], multiprocess_mode="livesum")
state = Gauge("kerve_state", "a livemax gauge", ["model", "version"], multiprocess_mode="livemax")
gauge.labels("m", "1").set(float(sys.argv[1]))
gauge.labels("m", "2").set(5)
state.labels("m", "1").set(1)
for version in sys.argv[2:]:
    retire(gauge, "m", version)
    retire(state, "m", version)
"""


def test_the_group_collector_leaves_out_the_series_a_process_retired(tmp_path: Path) -> None:
    """A --processes group's parent combines its children's metrics files; a gauge series a child dropped (its
    version unloaded) is NaN in that child's file and counts no more, while another child's value still does."""
    import subprocess
    import sys

    from prometheus_client import CollectorRegistry

    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}

    def child(*args: str) -> None:
        subprocess.run([sys.executable, "-c", _WRITER, *args], env=env, check=True, timeout=60)

    def read() -> dict[tuple[str, str], float]:
        registry = CollectorRegistry()
        registry.register(processes.GroupCollector(str(tmp_path)))
        return {
            (sample.name, sample.labels["version"]): sample.value
            for family in registry.collect()
            for sample in family.samples
        }

    child("3")  # serves versions 1 and 2
    child("4", "1")  # retired version 1
    assert read() == {("nv_x", "1"): 3, ("nv_x", "2"): 10, ("kerve_state", "1"): 1}
    child("6", "1")  # a third process, version 1 retired too
    assert read() == {("nv_x", "1"): 3, ("nv_x", "2"): 15, ("kerve_state", "1"): 1}
    for path in tmp_path.glob("*.db"):  # the first process retires it as well: gone from the group
        path.unlink()
    child("3", "1")
    child("4", "1")
    assert read() == {("nv_x", "2"): 10}


def test_the_supervisor_kills_children_that_outlive_the_grace_period_after_sigterm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SIGTERM arrives while the supervisor waits for its children's exits: the kill deadline counts from then,
    even though no child has exited yet (it used to wait for one before looking at the clock)."""
    import queue
    import threading
    import time

    monkeypatch.setattr(processes, "KILL_AFTER_GRACE_S", 0.2)
    monkeypatch.setattr(processes, "WAIT_STEP_S", 0.05)
    exits: queue.Queue[tuple[int, int]] = queue.Queue()

    class Hung:  # a child stuck in its drain: it only goes when killed
        pid = 999_999

        def __init__(self, index: int) -> None:
            self.index, self.killed = index, False

        def poll(self) -> int | None:
            return -9 if self.killed else None

        def kill(self) -> None:
            self.killed = True
            exits.put((self.index, -9))

    children = [Hung(0), Hung(1)]
    stopping = threading.Event()
    threading.Timer(0.1, stopping.set).start()  # the signal handler, while _wait is blocked
    started = time.monotonic()
    status = processes._wait(
        _settings(tmp_path, "--grace-period", "0"), children, exits, stopping, lambda: None, str(tmp_path)
    )  # type: ignore[arg-type]
    assert all(child.killed for child in children) and status == 1
    assert time.monotonic() - started < 5
