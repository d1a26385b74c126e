"""A real server's threads after it answered: TensorFlow's pools and the inference workers below the event loop,
gRPC's own threads level with it (server/thread_priority.py); kerve's Python threads named at the OS level
(server/thread_names.py)."""

from __future__ import annotations

from pathlib import Path
from subprocess import Popen

import grpc
import numpy as np
import pytest

from kerve.protos import grpc_service_pb2 as pb
from kerve.protos import grpc_service_pb2_grpc as pb_grpc
from kerve.server import thread_priority
from kerve.server.cpus import usable_cores

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not thread_priority.supported(), reason="per-thread nice is Linux-only"),
]


def _threads(pid: int) -> list[tuple[int, str, int]]:
    """(tid, name, nice) of every thread of `pid`, from /proc/<pid>/task/<tid>/stat."""
    threads = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:  # exited meanwhile
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        threads.append((int(task.name), name, int(fields[16])))  # field 19 of stat: nice
    return threads


def test_model_threads_run_below_the_event_loop(server_process: tuple[str, Popen[bytes]]) -> None:
    target, proc = server_process
    request = pb.ModelInferRequest(model_name="cnn")
    images = np.zeros((3, 8, 8, 1), dtype=np.float32)
    request.inputs.add(name="image", datatype="FP32", shape=list(images.shape))
    request.raw_input_contents.append(images.tobytes())
    with grpc.insecure_channel(target) as channel:
        pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=60)  # workers and TF's pools have run

    threads = _threads(proc.pid)
    loop = next(nice for tid, _name, nice in threads if tid == proc.pid)  # asyncio runs on the main thread
    lowered = min(19, loop + thread_priority.resolve(None, usable_cores()))
    tf_pool = [nice for _tid, name, nice in threads if name.startswith("tf_")]
    grpc_io = [nice for _tid, name, nice in threads if name.startswith("event_engine")]
    assert tf_pool and grpc_io, f"thread names changed: {sorted({name for _t, name, _n in threads})}"
    assert set(tf_pool) == {lowered}, threads
    assert set(grpc_io) == {loop}, threads
    workers = [nice for _tid, name, nice in threads if name.startswith("kerve-infer_")]
    assert workers and set(workers) == {lowered}, threads
    # grpc.aio's completion-queue poller, a Python thread, by its target's name; level with the loop
    poller = [nice for _tid, name, nice in threads if name == "_poll_wrapper"]
    assert poller == [loop], threads
    main = next(name for tid, name, _nice in threads if tid == proc.pid)
    assert not main.startswith(("kerve-", "_")), "the main thread keeps the process's name"
