"""`kerve serve --processes 2`: two server processes on one port. Connections are spread over both, each answers
correctly, the parent's /metrics sums them, SIGTERM drains the group, and a child that dies takes it down."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from helpers import running_server, scrape, stop_server, value, wait_for
from kerve.protos import grpc_service_pb2 as pb
from kerve.protos import grpc_service_pb2_grpc as pb_grpc
from kerve.quickstart import free_port, start_server

pytestmark = pytest.mark.integration

CONNECTIONS = 16  # all on one process by chance: 2**-15


@pytest.fixture(scope="module")
def group(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, subprocess.Popen]]:
    metrics_port = free_port()
    logs = tmp_path_factory.mktemp("processes-logs")
    flags = ("--processes", "2", "--metrics-port", str(metrics_port), "--triton-metrics")
    # a trace file (tracing off) tells the processes apart: each reports its own in TraceSetting (_process)
    with running_server(model_repo, logs, *flags, "--trace-file", str(logs / "trace.json")) as (target, proc):
        yield target, f"http://127.0.0.1:{metrics_port}/metrics", proc


def children(proc: subprocess.Popen) -> list[int]:
    return [int(pid) for pid in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]


def _infer_request(rows: int) -> pb.ModelInferRequest:
    images = np.random.default_rng(rows).random((rows, 8, 8, 1), dtype=np.float32)
    request = pb.ModelInferRequest(model_name="cnn")
    request.inputs.add(name="image", datatype="FP32", shape=list(images.shape))
    request.raw_input_contents.append(images.tobytes())
    return request


def _served_rows(stub: pb_grpc.GRPCInferenceServiceStub) -> int:
    stats = stub.ModelStatistics(pb.ModelStatisticsRequest(name="cnn"), timeout=10)
    return sum(s.inference_count for s in stats.model_stats)


def _process(stub: pb_grpc.GRPCInferenceServiceStub) -> str:
    """Which process holds the stub's connection: each writes its own trace file (<file>.pN), which TraceSetting
    reports (the group runs with --trace-file and tracing off)."""
    settings = stub.TraceSetting(pb.TraceSettingRequest(), timeout=10).settings
    return settings["trace_file"].value[0].rsplit(".", 1)[1]


def _connections(target: str) -> list[grpc.Channel]:
    # one TCP connection per channel: without a local subchannel pool, grpc would share one between them
    return [grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(CONNECTIONS)]


def _by_process(channels: list[grpc.Channel]) -> dict[str, list[grpc.Channel]]:
    found: dict[str, list[grpc.Channel]] = {}
    for channel in channels:
        found.setdefault(_process(pb_grpc.GRPCInferenceServiceStub(channel)), []).append(channel)
    return found


def _stubs(target: str, channels: list[grpc.Channel]) -> tuple[pb_grpc.GRPCInferenceServiceStub, ...]:
    """A V2 stub on a connection to each process (p0, p1)."""
    by_process = _by_process(channels)
    assert sorted(by_process) == ["p0", "p1"], by_process
    return tuple(pb_grpc.GRPCInferenceServiceStub(by_process[p][0]) for p in ("p0", "p1"))


def test_connections_are_spread_over_both_processes(group, in_process) -> None:
    target, metrics_url, proc = group
    assert len(children(proc)) == 2
    channels = _connections(target)
    try:
        before = value(scrape(metrics_url)[0], "kerve_requests_total", model="cnn", code="OK")
        triton_before = value(scrape(metrics_url)[0], "nv_inference_request_success", model="cnn", version="1")
        sent = 0
        for stub in _stubs(target, channels):  # a request answered by each process
            request = _infer_request(2)
            response = stub.ModelInfer(request, timeout=30)
            sent += 1
            got = np.frombuffer(response.raw_output_contents[0], dtype=np.float32).reshape(2, 10)
            images = np.frombuffer(request.raw_input_contents[0], dtype=np.float32).reshape(2, 8, 8, 1)
            np.testing.assert_array_equal(got, in_process("cnn", {"image": images})["output_0"])

        # the parent's /metrics adds up both processes, each pushing its figures every METRICS_PUSH_S
        def counted() -> float:
            return value(scrape(metrics_url)[0], "kerve_requests_total", model="cnn", code="OK") - before

        wait_for(lambda: counted() >= sent, "both processes' requests in the group's /metrics", timeout_s=30)
        assert counted() == sent == 2

        # --triton-metrics: Triton's names, read from each process's statistics and summed the same way
        def triton_counted() -> float:
            samples = scrape(metrics_url)[0]
            return value(samples, "nv_inference_request_success", model="cnn", version="1") - triton_before

        wait_for(lambda: triton_counted() >= sent, "Triton's success count of both processes", timeout_s=30)
        samples = scrape(metrics_url)[0]
        assert triton_counted() == sent
        assert value(samples, "nv_inference_count", model="cnn", version="1") >= 2 * sent  # rows, warm-up too
        assert value(samples, "nv_inference_compute_infer_duration_us", model="cnn", version="1") > 0
    finally:
        for channel in channels:
            channel.close()


def test_model_statistics_count_every_process(group) -> None:
    """ModelStatistics through either process counts the requests both answered (perf_analyzer divides the
    server's times by it): a process's own at once, the other's within about a second."""
    target, _metrics_url, _proc = group
    channels = _connections(target)
    try:
        p0, p1 = _stubs(target, channels)
        # The two answers agree once each process's latest counts are in its file. 3 rows through p0 first make
        # them agree only then: p0's file is 0, 3 or 5 rows behind, p1's (an earlier test's 2) 0 or 2.
        p0.ModelInfer(_infer_request(3), timeout=30)
        settled = wait_for(lambda: (n := _served_rows(p0)) == _served_rows(p1) and (n,), "the same count both ways")[0]
        for _ in range(2):
            p1.ModelInfer(_infer_request(5), timeout=30)
        assert _served_rows(p1) == settled + 10  # its own rows at once, p0's from its file
        wait_for(lambda: _served_rows(p0) == settled + 10, "p1's rows through p0", timeout_s=30)
        stats = p0.ModelStatistics(pb.ModelStatisticsRequest(name="cnn", version="1"), timeout=10).model_stats[0]
        assert stats.inference_stats.success.count >= 3  # requests, not rows
        assert stats.inference_stats.success.count == stats.inference_stats.compute_infer.count
        assert sum(b.compute_infer.count for b in stats.batch_stats) == stats.execution_count
    finally:
        for channel in channels:
            channel.close()


def test_one_sdk_client_with_several_connections_reaches_every_process(group, in_process) -> None:
    """kerve.client's `connections=N`: calls take N connections in turn, so one client spreads over the group,
    shared memory regions included (registered through one connection, used through all)."""
    import asyncio

    from kerve.client import AsyncClient, Client

    target, _metrics_url, _proc = group
    images = np.random.default_rng(5).random((3, 8, 8, 1), dtype=np.float32)
    expected = in_process("cnn", {"image": images})["output_0"]

    def process_of(settings: dict[str, list[str]]) -> str:
        return settings["trace_file"][0].rsplit(".", 1)[1]

    with Client(target, connections=CONNECTIONS) as client:
        assert {process_of(client.trace_settings()) for _ in range(CONNECTIONS)} == {"p0", "p1"}
        for _ in range(CONNECTIONS):
            np.testing.assert_array_equal(client.predict("cnn", {"image": images})["output_0"], expected)
        with client.shared_memory(images.nbytes) as region:
            placed = region.put(images)
            for _ in range(CONNECTIONS):  # through every connection: both processes know the region
                np.testing.assert_array_equal(client.predict("cnn", {"image": placed})["output_0"], expected)
            with client.stream("cnn") as stream:
                np.testing.assert_array_equal(stream.predict({"image": placed})["output_0"], expected)

    async def main() -> set[str]:
        async with AsyncClient(target, connections=CONNECTIONS) as aclient:
            seen = {process_of(await aclient.trace_settings()) for _ in range(CONNECTIONS)}
            async with await aclient.shared_memory(images.nbytes) as region:
                placed = region.put(images)
                for _ in range(CONNECTIONS):
                    got = await aclient.predict("cnn", {"image": placed})
                    np.testing.assert_array_equal(got["output_0"], expected)
            return seen

    assert asyncio.run(main()) == {"p0", "p1"}


def test_a_region_registered_through_one_process_is_every_processs(group, in_process) -> None:
    """System shared memory in a group: registering or unregistering through one connection has changed every
    process when it is answered; a second registration of the name through the other process is ALREADY_EXISTS."""
    from multiprocessing import shared_memory

    target, _metrics_url, _proc = group
    images = np.random.default_rng(9).random((2, 8, 8, 1), dtype=np.float32)
    memory = shared_memory.SharedMemory(create=True, size=images.nbytes)
    channels = _connections(target)
    try:
        memory.buf[: images.nbytes] = images.tobytes()
        p0, p1 = _stubs(target, channels)
        register = pb.SystemSharedMemoryRegisterRequest(
            name="images", key=f"/{memory.name}", offset=0, byte_size=images.nbytes
        )
        p0.SystemSharedMemoryRegister(register, timeout=30)
        status = p1.SystemSharedMemoryStatus(pb.SystemSharedMemoryStatusRequest(name="images"), timeout=10)
        assert status.regions["images"].byte_size == images.nbytes
        request = pb.ModelInferRequest(model_name="cnn")
        tensor = request.inputs.add(name="image", datatype="FP32", shape=list(images.shape))
        tensor.parameters["shared_memory_region"].string_param = "images"
        tensor.parameters["shared_memory_byte_size"].int64_param = images.nbytes
        response = p1.ModelInfer(request, timeout=30)
        got = np.frombuffer(response.raw_output_contents[0], dtype=np.float32).reshape(2, 10)
        np.testing.assert_array_equal(got, in_process("cnn", {"image": images})["output_0"])
        with pytest.raises(grpc.RpcError) as twice:
            p1.SystemSharedMemoryRegister(register, timeout=30)
        assert twice.value.code() == grpc.StatusCode.ALREADY_EXISTS

        p1.SystemSharedMemoryUnregister(pb.SystemSharedMemoryUnregisterRequest(name="images"), timeout=30)
        with pytest.raises(grpc.RpcError) as gone:
            p0.SystemSharedMemoryStatus(pb.SystemSharedMemoryStatusRequest(name="images"), timeout=10)
        assert gone.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        for channel in channels:
            channel.close()
        memory.close()
        memory.unlink()


def test_settings_changed_through_one_process_reach_the_others(group) -> None:
    """TraceSetting and LogSettings reach one process (the one holding the caller's connection); the group's
    journal carries the change to the others before the call is answered, so every connection reads it back."""
    target, _metrics_url, _proc = group
    channels = _connections(target)
    try:
        stubs = [pb_grpc.GRPCInferenceServiceStub(channel) for channel in channels]
        trace = pb.TraceSettingRequest(model_name="cnn")
        trace.settings["trace_rate"].value.append("7")
        assert list(stubs[0].TraceSetting(trace, timeout=10).settings["trace_rate"].value) == ["7"]
        logs = pb.LogSettingsRequest()
        logs.settings["log_verbose_level"].uint32_param = 1
        assert stubs[0].LogSettings(logs, timeout=10).settings["log_verbose_level"].uint32_param == 1

        def rate(stub: pb_grpc.GRPCInferenceServiceStub, model: str = "cnn") -> list[str]:
            settings = stub.TraceSetting(pb.TraceSettingRequest(model_name=model), timeout=10).settings
            return list(settings["trace_rate"].value)

        def verbose(stub: pb_grpc.GRPCInferenceServiceStub) -> int:
            return stub.LogSettings(pb.LogSettingsRequest(), timeout=10).settings["log_verbose_level"].uint32_param

        assert all(rate(stub) == ["7"] and verbose(stub) == 1 for stub in stubs)  # both processes, at once
        assert all(rate(stub, "") == ["1000"] for stub in stubs)  # the global settings were not touched
    finally:
        restore = pb.LogSettingsRequest()
        restore.settings["log_verbose_level"].uint32_param = 0
        pb_grpc.GRPCInferenceServiceStub(channels[0]).LogSettings(restore, timeout=10)
        for channel in channels:
            channel.close()


def test_parent_exports_group_metrics(group) -> None:
    _target, metrics_url, _proc = group
    samples, types = scrape(metrics_url)
    assert types["kerve_queue_depth"] == "gauge"
    assert value(samples, "kerve_model_state", model="cnn", version="1", state="READY") == 1.0
    assert value(samples, "kerve_inflight_requests", model="cnn") == 0.0


def test_a_failed_request_is_counted_under_tritons_reason(group) -> None:
    """nv_inference_request_failure carries Triton's `reason`: every reason from the start, a request whose inputs
    fail validation under OTHER (the sorting itself: tests/unit/test_triton_metrics.py)."""
    target, metrics_url, _proc = group

    def failures() -> dict[str, float]:
        samples = scrape(metrics_url)[0]
        reasons = ("REJECTED", "CANCELED", "BACKEND", "OTHER")
        found = {r: value(samples, "nv_inference_request_failure", model="cnn", version="1", reason=r) for r in reasons}
        shown = {dict(labels).get("reason") for (name, labels) in samples if name == "nv_inference_request_failure"}
        return found if shown >= set(reasons) else {}

    before = wait_for(failures, "nv_inference_request_failure by reason")
    request = _infer_request(1)
    request.inputs[0].datatype = "FP64"  # the model takes FP32
    request.raw_input_contents[0] = request.raw_input_contents[0] * 2
    with grpc.insecure_channel(target) as channel, pytest.raises(grpc.RpcError) as refused:
        pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    after = wait_for(lambda: (f := failures()) and f["OTHER"] > before["OTHER"] and f, "the failure in the group")
    assert {r: after[r] - before[r] for r in after} == {"REJECTED": 0, "CANCELED": 0, "BACKEND": 0, "OTHER": 1}


def test_tritons_cpu_metrics_are_the_hosts_once_not_summed_over_the_group(group) -> None:
    """--triton-metrics adds nv_cpu_*: every process reads the same host, so the group reports one reading."""
    _target, metrics_url, _proc = group
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    mem_total = next(int(line.split()[1]) for line in meminfo if line.startswith("MemTotal:"))

    def host_samples() -> dict[str, list[float]]:
        found: dict[str, list[float]] = {}
        for (name, _labels), sample in scrape(metrics_url)[0].items():
            if name.startswith("nv_cpu_"):
                found.setdefault(name, []).append(sample)
        return found

    found = wait_for(lambda: (f := host_samples()) and len(f) == 3 and f, "nv_cpu_* in the group's /metrics")
    assert all(len(samples) == 1 for samples in found.values()), found  # no per-process series
    assert found["nv_cpu_memory_total_bytes"] == [mem_total * 1024]
    assert 0 < found["nv_cpu_memory_used_bytes"][0] < mem_total * 1024
    assert 0.0 <= found["nv_cpu_utilization"][0] <= 1.0


def test_a_child_that_dies_stops_the_group(model_repo: Path, tmp_path: Path) -> None:
    with running_server(model_repo, tmp_path, "--processes", "2") as (_target, proc):
        first, second = children(proc)
        os.kill(first, signal.SIGKILL)
        assert proc.wait(timeout=60) == 1
        assert _gone(second)  # stopped and reaped by the parent before it exited
    log = next(tmp_path.glob("server-*.log")).read_text()
    assert "exited with status -9: stopping the group" in log


def _gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists()


def test_sigterm_drains_every_process(model_repo: Path, tmp_path: Path) -> None:
    with running_server(model_repo, tmp_path, "--processes", "2") as (_target, proc):
        pids = children(proc)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    log = next(tmp_path.glob("server-*.log")).read_text()
    for index in range(2):
        assert f"[p{index}] kerve.server: stopped" in log
    assert "all 2 server processes loaded their models: listening" in log
    assert "all 2 server processes stopped" in log
    assert all(_gone(pid) for pid in pids)


def test_port_held_by_another_process_fails_the_start(model_repo: Path, tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        proc = start_server(model_repo, port, tmp_path / "server.log", extra_args=("--processes", "2"))
        try:
            assert proc.wait(timeout=60) == 2  # as a single server: the port taken is a setting
        finally:
            stop_server(proc)
    assert f"cannot bind 127.0.0.1:{port}" in (tmp_path / "server.log").read_text()


def _ready(stub: pb_grpc.GRPCInferenceServiceStub, model: str) -> bool:
    return stub.ModelReady(pb.ModelReadyRequest(name=model), timeout=10).ready


def test_explicit_loads_and_unloads_reach_every_process_before_the_answer(model_repo: Path, tmp_path: Path) -> None:
    """--model-control explicit in a group: a load, an unload or TF Serving's reload config through one connection
    has changed every process when it is answered, so the next call through any connection sees it; a refused one
    changes nothing anywhere."""
    from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc

    flags = ("--processes", "2", "--model-control", "explicit", "--load-model", "cnn")
    with running_server(model_repo, tmp_path, *flags, "--trace-file", str(tmp_path / "trace.json")) as (target, _):
        channels = _connections(target)
        try:
            by_process = _by_process(channels)
            p0, p1 = _stubs(target, channels)
            assert _ready(p0, "cnn") and _ready(p1, "cnn")  # --load-model: in both processes
            assert not _ready(p0, "pair") and not _ready(p1, "pair")

            p0.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="pair"), timeout=120)
            assert _ready(p1, "pair")
            p1.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="cnn"), timeout=120)
            assert not _ready(p0, "cnn") and not _ready(p1, "cnn")

            load = pb.RepositoryModelLoadRequest(model_name="cnn")
            load.parameters["config"].string_param = '{"max_batch_size": 4, "dynamic_batching": {}}'
            p1.RepositoryModelLoad(load, timeout=120)
            configs = [stub.ModelConfig(pb.ModelConfigRequest(name="cnn"), timeout=10).config for stub in (p0, p1)]
            assert [c.max_batch_size for c in configs] == [4, 4]

            with pytest.raises(grpc.RpcError) as refused:
                p0.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="nope"), timeout=120)
            assert refused.value.code() == grpc.StatusCode.NOT_FOUND
            assert _ready(p0, "cnn") and _ready(p1, "pair")

            # TF Serving's ModelService: serve exactly these models, through p1; p0 has unloaded the rest too
            reload = model_management_pb2.ReloadConfigRequest()
            reload.config.model_config_list.config.add(name="pair", model_platform="tensorflow")
            model_service_pb2_grpc.ModelServiceStub(by_process["p1"][0]).HandleReloadConfigRequest(reload, timeout=120)
            assert [_ready(stub, "cnn") for stub in (p0, p1)] == [False, False]
            assert [_ready(stub, "pair") for stub in (p0, p1)] == [True, True]
        finally:
            for channel in channels:
                channel.close()


def test_an_unloaded_versions_series_leave_the_groups_metrics(model_repo: Path, tmp_path: Path) -> None:
    """A version both processes unloaded leaves the parent's /metrics, as it leaves a single server's: its
    Triton gauges and its kerve_model_state series (each process marks them retired in its metrics file)."""
    import shutil

    repo = tmp_path / "repo"
    for version in (1, 2):
        shutil.copytree(model_repo / "cnn" / "1", repo / "cnn" / str(version))
    metrics_port = free_port()
    flags = ("--processes", "2", "--metrics-port", str(metrics_port), "--triton-metrics", "--poll-interval", "0.2")
    url = f"http://127.0.0.1:{metrics_port}/metrics"

    def versions(name: str) -> set[str]:
        return {dict(labels)["version"] for (sample, labels) in scrape(url)[0] if sample == name}

    with running_server(repo, tmp_path, *flags):
        wait_for(lambda: versions("nv_inference_request_success") == {"2"}, "version 2 in the group's /metrics")
        shutil.rmtree(repo / "cnn" / "2")  # the policy (latest) falls back to version 1 in both processes

        def moved() -> bool:
            return versions("nv_inference_request_success") == {"1"} and versions("kerve_model_state") == {"1"}

        wait_for(moved, "version 2's series gone from the group's /metrics, version 1's there", timeout_s=60)
        assert "2" not in versions("nv_inference_request_failure") | versions("nv_inference_pending_request_count")
