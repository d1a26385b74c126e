"""Dynamic batching and device replicas in a real server: two logical CPU devices both serve batches."""

from __future__ import annotations

import itertools
import json
import re
import shutil
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton

from helpers import build_sleeping_model, running_server, wait_for
from kerve.client import Client
from kerve.quickstart import free_port

pytestmark = pytest.mark.integration

IMAGES = np.random.default_rng(11).random((64, 8, 8, 1), dtype=np.float32)


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def triton_config(target: str, model: str) -> dict:
    """The model's config as tritonclient's get_model_config reads it (Triton's ModelConfig)."""
    client = triton.InferenceServerClient(target)
    try:
        return client.get_model_config(model, as_json=True)["config"]
    finally:
        client.close()


def send_concurrently(target: str, threads: int, rounds: int, model: str = "cnn") -> list[tuple[int, np.ndarray, str]]:
    with Client(target) as client:

        def one(i: int) -> tuple[int, np.ndarray, str]:
            result = client.infer(model, {"image": IMAGES[i % 64 : i % 64 + 1]})
            return i % 64, result.outputs["output_0"], result.model_version

        with ThreadPoolExecutor(threads) as pool:
            return list(pool.map(one, range(threads * rounds)))


def test_two_cpu_replicas_both_serve_batches(model_repo: Path, tmp_path: Path, in_process) -> None:
    metrics_port = free_port()
    args = ("--cpu-replicas", "2", "--max-batch-size", "8", "--batch-timeout-us", "3000")
    with running_server(model_repo, tmp_path, *args, "--metrics-port", str(metrics_port)) as (target, _):
        results = send_concurrently(target, threads=16, rounds=20)
        text = scrape(metrics_port)
    reference = in_process("cnn", {"image": IMAGES})["output_0"]
    for i, output, version in results:
        assert version == "1"
        # batched rows may take another kernel path than a batch of 64: equal to float32 rounding
        np.testing.assert_allclose(output[0], reference[i], rtol=1e-5, atol=1e-7)
    per_device = {
        d: metric(text, "kerve_batches_total", model="cnn", device=d) for d in ("/device:CPU:0", "/device:CPU:1")
    }
    assert all(count > 0 for count in per_device.values()), per_device
    executions = metric(text, "kerve_batch_size_count", model="cnn")
    samples = metric(text, "kerve_batch_size_sum", model="cnn")
    assert samples == 320 and executions < samples  # 16 x 20 single-row requests merged into fewer executions
    assert re.search(r'kerve_requests_total\{code="OK",model="cnn",protocol="v2",version="1"\} 320\.0', text)


def test_a_model_can_ask_for_fewer_replicas_than_devices(model_repo: Path, tmp_path: Path, in_process) -> None:
    """config.yaml `replicas: 1` keeps a model on one device of a split CPU, and two such models on different ones."""
    repo = tmp_path / "repo"
    for name in ("heavy", "light", "light2"):
        shutil.copytree(model_repo / "cnn", repo / name)
    for name in ("light", "light2"):
        (repo / name / "config.yaml").write_text("replicas: 1\n")
    metrics_port = free_port()
    args = ("--cpu-replicas", "2", "--max-batch-size", "8", "--batch-timeout-us", "3000", "--poll-interval", "0.5")
    with running_server(repo, tmp_path, *args, "--metrics-port", str(metrics_port)) as (target, _):
        results = {
            name: send_concurrently(target, threads=16, rounds=10, model=name) for name in ("heavy", "light", "light2")
        }
        text = scrape(metrics_port)
        configs = {name: triton_config(target, name) for name in ("heavy", "light")}
        replaced = place_again_under_load(target, repo / "light2", "replicas: 2\n")
        after = scrape(metrics_port)
    # Triton's instances are batches at once: replicas x the two that `auto` (the default) may run on each
    assert replaced["instance_group"] == [{"name": "light2_cpu", "kind": "KIND_CPU", "count": 4}]
    assert metric(after, "kerve_model_state", model="light2", version="1", state="READY") == 1
    # what tritonclient learns: one instance per replica, the server's batching flags
    assert configs["heavy"]["instance_group"] == [{"name": "heavy_cpu", "kind": "KIND_CPU", "count": 4}]
    assert configs["light"]["instance_group"] == [{"name": "light_cpu", "kind": "KIND_CPU", "count": 2}]
    assert configs["heavy"]["max_batch_size"] == 8
    assert configs["heavy"]["dynamic_batching"] == {"max_queue_delay_microseconds": "3000"}
    reference = in_process("cnn", {"image": IMAGES})["output_0"]
    for name, rows in results.items():
        for i, output, _version in rows:
            np.testing.assert_allclose(output[0], reference[i], rtol=1e-5, atol=1e-7, err_msg=name)
    devices = ("/device:CPU:0", "/device:CPU:1")
    used = {
        name: {d for d in devices if metric(text, "kerve_batches_total", model=name, device=d) > 0} for name in results
    }
    assert used["heavy"] == set(devices), used
    assert len(used["light"]) == 1 and len(used["light2"]) == 1 and used["light"] != used["light2"], used
    for name in ("light", "light2"):  # the other device has no series at all: no replica was loaded there
        (other,) = set(devices) - used[name]
        series = [
            line
            for line in text.splitlines()
            if line.startswith("kerve_batches_total{") and f'model="{name}"' in line and f'device="{other}"' in line
        ]
        assert series == [], series


def place_again_under_load(target: str, model_dir: Path, config: str) -> dict:
    """Write a new config.yaml placement for a served model while a client keeps calling it, until ModelConfig
    shows the new placement; every call must succeed across the swap (asserted here). Bounded: 90 s, 5000 calls."""
    model = model_dir.name
    stop = threading.Event()
    answered: list[int] = []

    def call_until_stopped() -> None:
        with Client(target, retry=None) as client:
            while not stop.is_set() and len(answered) < 5000:
                client.infer(model, {"image": IMAGES[:1]})
                answered.append(1)

    before = triton_config(target, model)["instance_group"]
    with ThreadPoolExecutor(2) as pool:
        callers = [pool.submit(call_until_stopped) for _ in range(2)]
        (model_dir / "config.yaml").write_text(config)
        deadline = time.monotonic() + 90
        try:
            while triton_config(target, model)["instance_group"] == before:
                assert time.monotonic() < deadline, "the new placement never served"
                assert not any(c.done() for c in callers), [c.exception() for c in callers if c.done()]
                time.sleep(0.1)  # polling the server with a deadline
            seen = len(answered)
            while len(answered) < seen + 20 and not any(c.done() for c in callers):  # calls reach the new copy
                time.sleep(0.01)
        finally:
            stop.set()
        for caller in callers:
            caller.result()  # re-raises any failed call
    return triton_config(target, model)


def test_padding_to_allowed_sizes_returns_only_real_rows(model_repo: Path, tmp_path: Path, in_process) -> None:
    args = ("--max-batch-size", "8", "--allowed-batch-sizes", "4,8")
    with running_server(model_repo, tmp_path, *args) as (target, _), Client(target) as client:
        for rows in (1, 3, 5, 11):
            out = client.predict("cnn", {"image": IMAGES[:rows]})["output_0"]
            assert out.shape == (rows, 10)
            np.testing.assert_allclose(
                out, in_process("cnn", {"image": IMAGES[:rows]})["output_0"], rtol=1e-5, atol=1e-7
            )
        # an empty request answers empty outputs, as unbatched (the batcher has no row to pad it with)
        assert client.predict("cnn", {"image": IMAGES[:0]})["output_0"].shape == (0, 10)
        config = triton_config(target, "cnn")
    assert config["max_batch_size"] == 8 and config["dynamic_batching"]["preferred_batch_size"] == [4, 8]
    with running_server(model_repo, tmp_path, "--max-batch-size", "8") as (target, _), Client(target) as client:
        assert client.predict("cnn", {"image": IMAGES[:0]})["output_0"].shape == (0, 10)


def test_batching_can_be_turned_off(model_repo: Path, tmp_path: Path, in_process) -> None:
    with running_server(model_repo, tmp_path, "--no-batching") as (target, _), Client(target) as client:
        out = client.predict("cnn", {"image": IMAGES[:3]})["output_0"]
        assert client.predict("cnn", {"image": IMAGES[:0]})["output_0"].shape == (0, 10)
        config = triton_config(target, "cnn")
    # no batcher: Triton's "max_batch_size 0", and the signature's full shapes with their variable batch dimension
    assert "max_batch_size" not in config and "dynamic_batching" not in config
    assert config["input"] == [{"name": "image", "data_type": "TYPE_FP32", "dims": ["-1", "8", "8", "1"]}]
    assert out.tobytes() == in_process("cnn", {"image": IMAGES[:3]})["output_0"].tobytes()


def test_mirrored_device_mode_splits_each_batch_over_devices(model_repo: Path, tmp_path: Path, in_process) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(model_repo / "cnn", repo / "cnn")
    (repo / "cnn" / "config.yaml").write_text("device_mode: mirrored\n")
    metrics_port = free_port()
    args = ("--cpu-replicas", "2", "--metrics-port", str(metrics_port))
    with running_server(repo, tmp_path, *args) as (target, _), Client(target) as client:
        for rows in (1, 2, 7):
            out = client.predict("cnn", {"image": IMAGES[:rows]})["output_0"]
            expected = in_process("cnn", {"image": IMAGES[:rows]})["output_0"]
            np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-7)
        text = scrape(metrics_port)
        config = triton_config(target, "cnn")
    assert metric(text, "kerve_batches_total", model="cnn", device="mirrored:/device:CPU:0,/device:CPU:1") == 3
    assert config["instance_group"] == [{"name": "cnn", "kind": "KIND_MODEL", "count": 1}]  # one copy over both


@pytest.mark.parametrize("loop", ["auto", "asyncio"])
def test_both_event_loops_serve_batches(model_repo: Path, tmp_path: Path, in_process, loop: str) -> None:
    import importlib.util

    with running_server(model_repo, tmp_path, "--event-loop", loop) as (target, _):
        results = send_concurrently(target, threads=8, rounds=4)
    reference = in_process("cnn", {"image": IMAGES})["output_0"]
    for i, output, _version in results:
        np.testing.assert_allclose(output[0], reference[i], rtol=1e-5, atol=1e-7)
    (log,) = tmp_path.glob("server-*.log")
    expected = "uvloop" if loop == "auto" and importlib.util.find_spec("uvloop") else "asyncio"
    assert f"event loop: {expected}" in log.read_text()


def test_configs_that_put_copies_on_as_many_devices_are_one_placement() -> None:
    """What the manager compares before re-placing a loaded version: no reload when nothing would move."""
    from kerve.server.devices import DeviceSet
    from kerve.server.model import ReplicaLoader
    from kerve.server.model_config import ModelConfig

    place = ReplicaLoader(DeviceSet("cpu", ("/device:CPU:0", "/device:CPU:1"))).placement
    assert place(ModelConfig()) == place(ModelConfig(replicas=2)) == place(ModelConfig(replicas=5)) == ("replica", 2)
    assert place(ModelConfig(replicas=1)) == ("replica", 1)
    assert place(ModelConfig(device_mode="mirrored")) == ("mirrored", 2)


def test_replica_loader_gives_devices_back_on_unload_and_on_a_failed_load(model_repo: Path, tmp_path: Path) -> None:
    from kerve.server.devices import DeviceSet
    from kerve.server.model import ReplicaLoader
    from kerve.server.model_config import ModelConfig

    loader = ReplicaLoader(DeviceSet("cpu", ("/device:CPU:0",)))
    servable = loader(model_repo / "cnn" / "1", ModelConfig(replicas=1))
    assert servable.runner_devices == ["/device:CPU:0"]
    assert loader.placer.held() == {"/device:CPU:0": 1}
    servable.close()
    servable.close()  # the manager closes once, but a second call must not give the device back twice
    assert loader.placer.held() == {"/device:CPU:0": 0}
    (tmp_path / "broken").mkdir()
    with pytest.raises(OSError):
        loader(tmp_path / "broken", ModelConfig())
    assert loader.placer.held() == {"/device:CPU:0": 0}


def test_mirrored_mode_loads_under_the_device_sets_strategy_and_a_tpu_gets_tpustrategy(
    model_repo: Path, monkeypatch: pytest.MonkeyPatch, in_process
) -> None:
    """The loader takes its mirrored strategy from the server's device set: MirroredStrategy over GPUs or logical
    CPUs, TPUStrategy over the resolver the server connected a TPU with (no TPU here: TPUStrategy is replaced by a
    recorder whose scope places nothing)."""
    import contextlib

    import tensorflow as tf

    from kerve.server.devices import DeviceSet
    from kerve.server.model import MirroredServable, ReplicaLoader
    from kerve.server.model_config import ModelConfig

    mirrored = ModelConfig(device_mode="mirrored")
    loader = ReplicaLoader(DeviceSet("cpu", ("/device:CPU:0",)))
    servable = loader(model_repo / "cnn" / "1", mirrored)
    assert isinstance(servable, MirroredServable)
    assert isinstance(servable.strategy, tf.distribute.MirroredStrategy)
    assert [d.rsplit("/", 1)[-1] for d in servable.strategy.extended.worker_devices] == ["device:CPU:0"]
    (run,) = servable.runners("serving_default")
    got = run({"image": IMAGES[:3]})["output_0"]
    np.testing.assert_allclose(got, in_process("cnn", {"image": IMAGES[:3]})["output_0"], rtol=1e-5, atol=1e-7)
    assert loader.placer.held() == {"/device:CPU:0": 0}  # mirrored uses every device without holding one

    resolver = object()

    class FakeTPUStrategy:
        def __init__(self, tpu_cluster_resolver: object) -> None:
            self.resolver = tpu_cluster_resolver

        def scope(self) -> contextlib.AbstractContextManager[None]:
            return contextlib.nullcontext()

    monkeypatch.setattr(tf.distribute, "TPUStrategy", FakeTPUStrategy)
    tpu = DeviceSet("tpu", ("/device:TPU:0", "/device:TPU:1"), resolver)
    servable = ReplicaLoader(tpu)(model_repo / "cnn" / "1", mirrored)
    assert isinstance(servable, MirroredServable) and isinstance(servable.strategy, FakeTPUStrategy)
    assert servable.strategy.resolver is resolver
    assert servable.runner_devices == ["mirrored:/device:TPU:0,/device:TPU:1"]
    assert tpu.pad_batches


def test_a_replica_runs_two_batches_at_once_with_batches_per_replica_2(model_repo: Path, tmp_path: Path) -> None:
    """config.yaml `batching: {batches_per_replica: 2}`: the one CPU replica's batches overlap in time (read from
    Triton traces of every request); a value out of range fails that model alone, with the reason."""
    repo = tmp_path / "repo"
    for name in ("slots", "bad"):
        shutil.copytree(model_repo / "cnn", repo / name)
    # batches of one row, so that each request is its own batch, and no holding for fuller ones
    (repo / "slots" / "config.yaml").write_text(
        "batching: {batches_per_replica: 2, max_batch_size: 1, max_queue_delay_s: 0}\n"
    )
    (repo / "bad" / "config.yaml").write_text("batching: {batches_per_replica: 0}\n")
    trace_file = tmp_path / "trace.json"
    with running_server(repo, tmp_path, "--trace-file", str(trace_file)) as (target, _):
        client = triton.InferenceServerClient(target)
        try:
            settings = {"trace_level": ["TIMESTAMPS"], "trace_rate": "1", "log_frequency": "64"}
            client.update_trace_settings("slots", settings)
            results = send_concurrently(target, threads=8, rounds=8, model="slots")
            assert len(results) == 64 and all(version == "1" for _, _, version in results)
            wait_for(lambda: (tmp_path / "trace.json.0").exists(), "64 traces in one file", timeout_s=30)
            index = client.get_model_repository_index(as_json=True)["models"]
        finally:
            client.close()
    spans = []
    for trace in json.loads((tmp_path / "trace.json.0").read_text()):
        stamps = {stamp["name"]: int(stamp["ns"]) for stamp in trace["timestamps"]}
        spans.append((stamps["COMPUTE_START"], stamps["COMPUTE_END"]))
    spans.sort()
    # with one batch per replica each batch starts after the last one ended; here some start before it ends
    overlapping = sum(1 for (_, end), (start, _) in itertools.pairwise(spans) if start < end)
    assert overlapping > 0, spans
    bad = [m for m in index if m["name"] == "bad"]
    assert bad and bad[0]["state"] == "FAILED" and "batches_per_replica" in bad[0]["reason"], bad


def test_batches_per_replica_auto_learns_that_two_batches_at_once_serve_more(tmp_path: Path) -> None:
    """`--batches-per-replica auto` on a model that sleeps 20 ms per call (the CPU idle, as an LSTM's call leaves a
    core), batches of one row: the batcher times one and two batches at once under load and keeps two, which serve
    twice the rows; Triton's model config counts the two. A word other than auto fails that model alone."""
    repo = tmp_path / "repo"
    build_sleeping_model(repo / "sleepy" / "1", sleep_us=20_000)
    (repo / "sleepy" / "config.yaml").write_text("batching: {max_batch_size: 1, max_queue_delay_s: 0}\n")
    shutil.copytree(repo / "sleepy", repo / "bad")
    (repo / "bad" / "config.yaml").write_text("batching: {batches_per_replica: two}\n")
    chosen = re.compile(r"slot_choice: sleepy:1:serving_default: (\d) batch\(es\) at once per replica")
    x = np.array([[1.0, -2.0]], np.float32)
    with running_server(repo, tmp_path, "--batches-per-replica", "auto") as (target, _):
        client = triton.InferenceServerClient(target)
        try:
            with Client(target) as sdk, ThreadPoolExecutor(8) as pool:

                def one(_: int) -> np.ndarray:
                    return sdk.infer("sleepy", {"x": x}).outputs["y"]

                deadline = time.monotonic() + 60
                for _ in range(100):  # rounds of 64 calls: 1.3 s each with one batch at a time, 0.65 s with two
                    outputs = list(pool.map(one, range(64)))
                    assert all(np.array_equal(y, 2 * x) for y in outputs)
                    log = "".join(path.read_text() for path in tmp_path.glob("server-*.log"))
                    if chosen.search(log) or time.monotonic() > deadline:
                        break
            config = client.get_model_config("sleepy", as_json=True)["config"]
            index = client.get_model_repository_index(as_json=True)["models"]
        finally:
            client.close()
    assert [m[1] for m in chosen.finditer(log)] == ["2"], log
    assert config["instance_group"] == [{"name": "sleepy_cpu", "kind": "KIND_CPU", "count": 2}]
    bad = [m for m in index if m["name"] == "bad"]
    assert bad and bad[0]["state"] == "FAILED", bad
    assert "batches_per_replica must be an integer or 'auto', got 'two'" in bad[0]["reason"]


def test_fewer_workers_than_batch_slots_is_warned_and_still_serves(model_repo: Path, tmp_path: Path) -> None:
    """The flag is checked at startup; a model's own config.yaml count when its batcher is made, once."""
    repo = tmp_path / "repo"
    for name in ("cnn", "three"):
        shutil.copytree(model_repo / "cnn", repo / name)
    (repo / "three" / "config.yaml").write_text("batching: {batches_per_replica: 3}\n")
    args = ("--workers", "1", "--batches-per-replica", "2")
    with running_server(repo, tmp_path, *args) as (target, _):
        results = send_concurrently(target, threads=4, rounds=2)
        results += send_concurrently(target, threads=4, rounds=2, model="three")
    assert len(results) == 16 and all(version == "1" for _, _, version in results)
    log = "".join(path.read_text() for path in tmp_path.glob("server-*.log"))
    assert "--workers 1 runs fewer batches at once than the 2" in log
    warned = "model 'three' runs up to 3 batches at once (1 replica(s) x batches_per_replica 3) on --workers 1"
    assert log.count(warned) == 1, log
    assert "model 'cnn' runs up to" not in log  # the flag's count: warned about at startup already
