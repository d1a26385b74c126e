"""ModelManager lifecycle without TensorFlow: a fake loader reads the word in each version's saved_model.pb."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from kerve import repository
from kerve.server.errors import ErrorCode, ServingError
from kerve.server.manager import EXPLICIT, ModelManager, VersionState, parse_version
from kerve.server.metrics import Metrics
from kerve.server.model_config import ModelConfig


class FakeServable:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.closed = False

    def close(self) -> None:
        self.closed = True


class Loader:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def __call__(self, path: Path, config: ModelConfig) -> FakeServable:
        assert config.device_mode in ("replica", "mirrored")
        self.calls.append((path.parent.name, int(path.name)))
        if (path / "saved_model.pb").read_text() != "ok":
            raise ValueError(f"corrupt SavedModel at {path.name}")
        return FakeServable(path)


def version(repo: Path, model: str, number: int, content: str = "ok") -> Path:
    path = repo / model / str(number)
    path.mkdir(parents=True, exist_ok=True)
    (path / "saved_model.pb").write_text(content)
    return path


def run(
    repo: Path,
    body: Callable[[ModelManager, Loader], Awaitable[None]],
    manager_class: type[ModelManager] = ModelManager,
    loader: Loader | None = None,
    **kwargs: Any,
) -> None:
    loader = loader or Loader()

    async def main() -> None:
        with ThreadPoolExecutor(2) as executor:
            manager = manager_class(repo, loader, executor, Metrics(), **kwargs)
            await manager.load_all()
            await body(manager, loader)
            await manager.close()

    asyncio.run(asyncio.wait_for(main(), 30))


def states(manager: ModelManager, model: str) -> dict[int, str]:
    return {e.version: e.state.value for e in manager.entries(model)}


def code_of(call: Callable[[], object]) -> ErrorCode:
    with pytest.raises(ServingError) as info:
        call()
    return info.value.code


def test_manager_does_not_import_tensorflow() -> None:
    code = "import sys, kerve.server.manager; sys.exit('tensorflow' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def test_version_policies_and_labels(tmp_path: Path) -> None:
    for model, config in (("latest2", "version_policy: {latest: 2}"), ("every", "version_policy: all"),
                          ("some", "version_policy: {specific: [1, 3]}"), ("plain", "")):  # fmt: skip
        for number in (1, 2, 3):
            version(tmp_path, model, number)
        (tmp_path / model / "config.yaml").write_text(config + "\n")
    (tmp_path / "plain" / "config.yaml").write_text("labels: {stable: 1, canary: 3}\n")

    async def body(manager: ModelManager, _loader: Loader) -> None:
        assert manager.ready_versions("latest2") == [2, 3]
        assert manager.ready_versions("every") == [1, 2, 3]
        assert manager.ready_versions("some") == [1, 3]
        assert manager.ready_versions("plain") == [1, 3]  # latest 1, plus the labelled version 1
        assert manager.resolve("plain", label="stable").version == 1
        assert manager.resolve("plain").version == 3
        assert code_of(lambda: manager.resolve("plain", label="beta")) is ErrorCode.NOT_FOUND
        assert code_of(lambda: manager.resolve("plain", 1, "stable")) is ErrorCode.INVALID_ARGUMENT
        assert code_of(lambda: manager.resolve("some", 2)) is ErrorCode.NOT_FOUND
        # a policy change applies on the next poll: 2 loads, 1 and 3 unload
        (tmp_path / "some" / "config.yaml").write_text("version_policy: {specific: [2]}\n")
        await manager.poll()
        assert states(manager, "some") == {1: "UNLOADED", 2: "READY", 3: "UNLOADED"}
        assert code_of(lambda: manager.resolve("some", 1)) is ErrorCode.NOT_FOUND

    run(tmp_path, body)


def test_broken_version_is_isolated_and_retried_only_when_its_files_change(tmp_path: Path) -> None:
    version(tmp_path, "m", 1)

    async def body(manager: ModelManager, loader: Loader) -> None:
        v1 = manager.resolve("m")
        version(tmp_path, "m", 2, "garbage")
        await manager.poll()
        assert states(manager, "m") == {1: "READY", 2: "FAILED"}
        assert manager.resolve("m") is v1  # the previous version keeps serving
        assert "corrupt SavedModel" in manager.entries("m")[1].reason
        assert code_of(lambda: manager.resolve("m", 2)) is ErrorCode.UNAVAILABLE
        calls = len(loader.calls)
        await manager.poll()
        assert len(loader.calls) == calls  # not retried while unchanged
        (tmp_path / "m" / "2" / "saved_model.pb").write_text("ok")
        os.utime(tmp_path / "m" / "2" / "saved_model.pb", ns=(1, 1))  # a different fingerprint, whatever the clock
        await manager.poll()
        assert states(manager, "m") == {1: "UNLOADED", 2: "READY"}
        assert v1.servable is None

    run(tmp_path, body)


def test_first_load_falls_back_to_the_newest_healthy_version(tmp_path: Path) -> None:
    version(tmp_path, "m", 1)
    version(tmp_path, "m", 2, "garbage")

    async def body(manager: ModelManager, _loader: Loader) -> None:
        assert states(manager, "m") == {1: "READY", 2: "FAILED"}

    run(tmp_path, body)


def test_unload_waits_for_in_flight_requests(tmp_path: Path) -> None:
    version(tmp_path, "m", 1)

    async def body(manager: ModelManager, _loader: Loader) -> None:
        held = manager.acquire("m")
        servable = held.servable
        version(tmp_path, "m", 2)
        poll = asyncio.create_task(manager.poll())
        for _ in range(200):  # bounded: until v2 serves and v1 waits for its request
            if held.state is VersionState.UNLOADING:
                break
            await asyncio.sleep(0.01)
        assert held.state is VersionState.UNLOADING
        assert manager.resolve("m").version == 2  # new requests already go to v2
        assert not poll.done() and not servable.closed
        manager.release(held)
        await asyncio.wait_for(poll, 5)
        assert held.state is VersionState.UNLOADED and servable.closed

    run(tmp_path, body)


def test_a_changed_placement_reloads_a_serving_version_beside_itself(tmp_path: Path) -> None:
    """config.yaml's replicas / device_mode apply to a loaded version as a hot reload does: a new copy loads while
    the old one serves, takes the new requests once READY, and the old one unloads after its in-flight request;
    the version's state never leaves READY and its statistics go on. A placement whose copy cannot load leaves the
    old copy serving and is not tried again until it changes."""
    version(tmp_path, "m", 1)

    class Picky(Loader):
        def __call__(self, path: Path, config: ModelConfig) -> FakeServable:
            if config.replicas == 2:
                self.calls.append((path.parent.name, int(path.name)))
                raise RuntimeError("no room for two replicas")
            return super().__call__(path, config)

    def ready_metric(manager: ModelManager) -> float | None:
        labels = {"model": "m", "version": "1", "state": "READY"}
        return manager._metrics.registry.get_sample_value("kerve_model_state", labels)

    async def body(manager: ModelManager, loader: Loader) -> None:
        old = manager.acquire("m")
        old.stats.record_failure(0.5)
        (tmp_path / "m" / "config.yaml").write_text("replicas: 1\n")
        poll = asyncio.create_task(manager.poll())
        for _ in range(500):  # bounded: until the new copy serves and the old one waits for its request
            if old.state is VersionState.UNLOADING:
                break
            await asyncio.sleep(0.01)
        new = manager.resolve("m")
        assert new is not old and new.version == 1 and new.config.replicas == 1
        assert old.state is VersionState.UNLOADING and not old.servable.closed and not poll.done()
        assert states(manager, "m") == {1: "READY"} and ready_metric(manager) == 1.0
        manager.release(old)
        await asyncio.wait_for(poll, 5)
        assert old.state is VersionState.UNLOADED and not new.servable.closed
        assert ready_metric(manager) == 1.0 and new.stats.fail.count == 1
        assert loader.calls == [("m", 1), ("m", 1)]

        def load_seconds() -> float | None:
            labels = {"model": "m", "version": "1"}
            return manager._metrics.registry.get_sample_value("kerve_model_load_duration_seconds", labels)

        assert load_seconds() == new.load_seconds  # the serving copy's load
        (tmp_path / "m" / "config.yaml").write_text("replicas: 2\n")
        await manager.poll()
        assert manager.resolve("m") is new and states(manager, "m") == {1: "READY"} and len(loader.calls) == 3
        assert load_seconds() == new.load_seconds  # the failed copy's load left the serving copy's figure
        await manager.poll()
        assert len(loader.calls) == 3  # that placement failed: not retried on every poll
        await manager.poll()
        servable = new.servable
        (tmp_path / "m" / "config.yaml").write_text("device_mode: mirrored\n")
        await manager.poll()
        assert manager.resolve("m").config.device_mode == "mirrored" and len(loader.calls) == 4
        assert new.state is VersionState.UNLOADED and servable.closed

    run(tmp_path, body, loader=Picky())


def test_a_config_change_that_moves_nothing_reloads_nothing(tmp_path: Path) -> None:
    """The loader says where a config puts a version (ReplicaLoader.placement): `replicas: 1` on a one-device
    server places it where it already is."""
    version(tmp_path, "m", 1)

    class OneDevice(Loader):
        def placement(self, config: ModelConfig) -> tuple[str, int]:
            return config.device_mode, 1

    async def body(manager: ModelManager, loader: Loader) -> None:
        serving = manager.resolve("m")
        (tmp_path / "m" / "config.yaml").write_text("replicas: 1\n")
        await manager.poll()
        assert manager.resolve("m") is serving and loader.calls == [("m", 1)]

    run(tmp_path, body, loader=OneDevice())


def test_a_version_leaving_the_policy_is_not_re_placed(tmp_path: Path) -> None:
    version(tmp_path, "m", 1)

    async def body(manager: ModelManager, loader: Loader) -> None:
        version(tmp_path, "m", 2)
        (tmp_path / "m" / "config.yaml").write_text("replicas: 1\n")
        await manager.poll()
        assert states(manager, "m") == {1: "UNLOADED", 2: "READY"}
        assert loader.calls == [("m", 1), ("m", 2)]  # version 1 unloads as it is: no copy with the new placement

    run(tmp_path, body)


def test_response_cache_turns_on_and_off_without_a_reload_and_stale_entries_are_reported(tmp_path: Path) -> None:
    """config.yaml's `response_cache:` applies to the loaded version at once (as `batching:` does); the engine's
    `forget` hook hears of a version whose cached responses are stale: cache turned off, version unloaded."""
    version(tmp_path, "m", 1)
    forgotten: list[tuple[str, int]] = []

    async def body(manager: ModelManager, loader: Loader) -> None:
        manager.forget = lambda entry: forgotten.append((entry.model, entry.version))
        serving = manager.resolve("m")
        assert not serving.config.response_cache
        (tmp_path / "m" / "config.yaml").write_text("response_cache: true\n")
        await manager.poll()
        assert manager.resolve("m") is serving and serving.config.response_cache and forgotten == []
        (tmp_path / "m" / "config.yaml").write_text("response_cache: false\n")
        await manager.poll()
        assert not serving.config.response_cache and forgotten == [("m", 1)]
        version(tmp_path, "m", 2)
        await manager.poll()
        assert states(manager, "m") == {1: "UNLOADED", 2: "READY"} and forgotten == [("m", 1), ("m", 1)]
        assert loader.calls == [("m", 1), ("m", 2)]  # no reload for the cache settings

    run(tmp_path, body)


def test_a_model_asking_for_a_response_cache_the_server_lacks_is_served_uncached_and_the_log_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    version(tmp_path, "m", 1)
    version(tmp_path, "plain", 1)
    (tmp_path / "m" / "config.yaml").write_text("response_cache: true\n")

    class Uncached(ModelManager):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.has_response_cache = False  # as KerveServer sets it without --response-cache-mb

    async def body(manager: ModelManager, loader: Loader) -> None:
        assert states(manager, "m") == {1: "READY"}
        warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert warned == [
            "m version 1: config.yaml sets response_cache: true, but the server has no response cache "
            "(--response-cache-mb 0): its responses are not cached"
        ]
        caplog.clear()
        (tmp_path / "plain" / "config.yaml").write_text("response_cache: true\n")  # turned on while loaded
        await manager.poll()
        assert [r.getMessage()[:16] for r in caplog.records if r.levelname == "WARNING"] == ["plain version 1:"]

    with caplog.at_level("WARNING", logger="kerve.server.manager"):
        run(tmp_path, body, manager_class=Uncached)


def test_deleted_version_unloads_and_is_forgotten(tmp_path: Path) -> None:
    version(tmp_path, "m", 1)
    version(tmp_path, "m", 2)
    (tmp_path / "m" / "config.yaml").write_text("version_policy: all\n")

    async def body(manager: ModelManager, _loader: Loader) -> None:
        shutil.rmtree(tmp_path / "m" / "2")
        await manager.poll()
        assert states(manager, "m") == {1: "READY"}
        shutil.rmtree(tmp_path / "m")
        await manager.poll()
        assert manager.models() == []

    run(tmp_path, body)


def test_invalid_config_fails_only_that_model(tmp_path: Path) -> None:
    version(tmp_path, "good", 1)
    version(tmp_path, "bad", 1)
    (tmp_path / "bad" / "config.yaml").write_text("version_policy: {latest: 0}\n")

    async def body(manager: ModelManager, _loader: Loader) -> None:
        assert manager.ready_versions("good") == [1]
        assert manager.ready_versions("bad") == []
        rows = [(r.model, r.version, r.state) for r in manager.index()]
        assert ("bad", "", "FAILED") in rows
        with pytest.raises(ServingError, match="latest must be a positive integer"):
            manager.resolve("bad")
        (tmp_path / "bad" / "config.yaml").write_text("version_policy: {latest: 1}\n")
        await manager.poll()
        assert manager.ready_versions("bad") == [1]
        assert [r for r in manager.index() if r.model == "bad" and not r.version] == []
        # a config broken while serving keeps the loaded versions and their last good config
        (tmp_path / "bad" / "config.yaml").write_text("labels: nope\n")
        version(tmp_path, "bad", 2)
        await manager.poll()
        assert manager.ready_versions("bad") == [1]

    run(tmp_path, body)


def test_warmup_failure_fails_the_version(tmp_path: Path) -> None:
    version(tmp_path, "m", 1)
    warmed: list[int] = []
    failed: list[FakeServable] = []

    def warmup(model: str, path: Path, servable: Any) -> int:
        requests = path / "assets.extra" / "tf_serving_warmup_requests"
        if requests.exists() and requests.read_text() == "bad":
            failed.append(servable)
            raise RuntimeError("warmup request 1 of 1 failed: input 'x': bad")
        warmed.append(int(path.name))
        return 3

    async def body(manager: ModelManager, _loader: Loader) -> None:
        assert manager.entries("m")[0].warmup_requests == 3
        (version(tmp_path, "m", 2) / "assets.extra").mkdir()
        requests = tmp_path / "m" / "2" / "assets.extra" / "tf_serving_warmup_requests"
        requests.write_text("bad")
        await manager.poll()
        assert states(manager, "m") == {1: "READY", 2: "FAILED"}
        assert "warmup request 1 of 1 failed" in manager.entries("m")[1].reason
        assert warmed == [1]
        assert [s.closed for s in failed] == [True]  # what it holds (its devices' placement) is given back
        await manager.poll()
        assert states(manager, "m") == {1: "READY", 2: "FAILED"} and len(failed) == 1  # unchanged: not retried
        requests.write_text("good")  # fixed in place: saved_model.pb and the directories are untouched
        os.utime(requests, ns=(1, 1))  # a different fingerprint, whatever the clock
        await manager.poll()
        assert states(manager, "m") == {1: "UNLOADED", 2: "READY"} and warmed == [1, 2]

    run(tmp_path, body, warmup=warmup)


def test_after_change_runs_once_per_sync_that_loaded_or_unloaded(tmp_path: Path) -> None:
    """The server's heap.settle (a full garbage collection) must follow every change to the loaded models, and
    only those: a poll that changes nothing must not stall the event loop for it."""
    version(tmp_path, "a", 1)
    version(tmp_path, "b", 1)
    changes: list[dict[str, dict[int, str]]] = []
    holder: list[ModelManager] = []

    def after_change() -> None:  # what was loaded when it ran: the versions of this sync have settled
        changes.append({m: states(holder[0], m) for m in holder[0].models()})

    async def body(manager: ModelManager, _loader: Loader) -> None:
        assert changes == [{"a": {1: "READY"}, "b": {1: "READY"}}]  # two loads at start: one call
        await manager.poll()
        assert len(changes) == 1  # nothing changed
        version(tmp_path, "a", 2)
        await manager.poll()  # a: 2 loads, 1 unloads
        assert changes[1:] == [{"a": {1: "UNLOADED", 2: "READY"}, "b": {1: "READY"}}]
        version(tmp_path, "b", 2, content="corrupt")
        await manager.poll()  # a failed load leaves garbage behind too
        assert len(changes) == 3 and changes[2]["b"] == {1: "READY", 2: "FAILED"}
        await manager.poll()  # the failed version is not retried: no change
        assert len(changes) == 3
        shutil.rmtree(tmp_path / "a")
        await manager.poll()
        assert len(changes) == 4 and "a" not in changes[3]

    class Recording(ModelManager):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            holder.append(self)  # after_change runs inside load_all, before body gets the manager

    run(tmp_path, body, manager_class=Recording, after_change=after_change)


def test_after_change_runs_after_explicit_loads_and_unloads(tmp_path: Path) -> None:
    version(tmp_path, "a", 1)
    changes: list[dict[int, str]] = []
    holder: list[ModelManager] = []

    class Recording(ModelManager):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            holder.append(self)

    async def body(manager: ModelManager, _loader: Loader) -> None:
        assert changes == [{1: "READY"}]
        await manager.unload_model("a")  # the unloaded version's memory is garbage now: settle the heap
        assert changes[1:] == [{1: "UNLOADED"}]
        await manager.load_model("a")
        assert changes[2:] == [{1: "READY"}]

    run(tmp_path, body, manager_class=Recording, control=EXPLICIT,
        after_change=lambda: changes.append(states(holder[0], "a")))  # fmt: skip


def test_explicit_control(tmp_path: Path) -> None:
    version(tmp_path, "a", 1)
    version(tmp_path, "b", 1)

    async def poll_mode(manager: ModelManager, _loader: Loader) -> None:
        with pytest.raises(ServingError) as info:
            await manager.load_model("a")
        assert info.value.code is ErrorCode.FAILED_PRECONDITION

    run(tmp_path, poll_mode)

    async def body(manager: ModelManager, _loader: Loader) -> None:
        assert manager.models() == ["a", "b"]  # what is there at start is loaded
        version(tmp_path, "a", 2)
        await manager.poll()  # explicit control ignores polls ...
        assert manager.ready_versions("a") == [1]
        await manager.load_model("a")  # ... and applies the repository when told
        assert manager.ready_versions("a") == [2]
        await manager.unload_model("b")
        assert code_of(lambda: manager.resolve("b")) is ErrorCode.NOT_FOUND
        assert ("b", "", "UNLOADED") in [(r.model, r.version, r.state) for r in manager.index()]
        for bad, code in (("../a", ErrorCode.INVALID_ARGUMENT), ("/etc", ErrorCode.INVALID_ARGUMENT),
                          ("nope", ErrorCode.NOT_FOUND)):  # fmt: skip
            with pytest.raises(ServingError) as info:
                await manager.load_model(bad)
            assert info.value.code is code
        version(tmp_path, "c", 1, "garbage")
        with pytest.raises(ServingError, match="failed to load model 'c'"):
            await manager.load_model("c")
        await manager.apply_models({"b": {"labels": {"stable": 1}}})  # exclusive: a and c go
        assert manager.ready_versions("b") == [1] and manager.ready_versions("a") == []
        assert manager.resolve("b", label="stable").version == 1
        with pytest.raises(ServingError) as info:
            await manager.apply_models({"b": {"version_policy": {"latest": 0}}})
        assert info.value.code is ErrorCode.INVALID_ARGUMENT
        assert manager.ready_versions("b") == [1]

    run(tmp_path, body, control=EXPLICIT)


def test_explicit_control_can_load_only_some_models_at_start(tmp_path: Path) -> None:
    for model in ("a", "b", "c"):
        version(tmp_path, model, 1)

    async def main() -> None:
        with ThreadPoolExecutor(2) as executor:
            manager = ModelManager(tmp_path, Loader(), executor, Metrics(), control=EXPLICIT)
            with pytest.raises(FileNotFoundError, match="--load-model zz: not in model repository"):
                await manager.load_all(["a", "zz"])
            await manager.load_all(["c", "a"])
            assert manager.models() == ["a", "c"]
            assert [(r.model, r.state, r.reason) for r in manager.index() if r.model == "b"] == [
                ("b", "UNLOADED", "not loaded")
            ]
            await manager.load_model("b")  # the others wait for RepositoryModelLoad
            assert manager.ready_versions("b") == [1]
            polled = ModelManager(tmp_path, Loader(), executor, Metrics())
            with pytest.raises(ServingError, match="needs explicit model control"):
                await polled.load_all(["a"])

    asyncio.run(asyncio.wait_for(main(), 30))


class GatedLoader(Loader):
    """Loads wait for `gate` (set by the test) once `held` (a version number) is asked for."""

    def __init__(self, held: int) -> None:
        super().__init__()
        self.held = held
        self.gate = threading.Event()
        self.waiting = threading.Event()

    def __call__(self, path: Path, config: ModelConfig) -> FakeServable:
        if int(path.name) == self.held:
            self.waiting.set()
            assert self.gate.wait(10)
        return super().__call__(path, config)


def test_a_load_or_unload_whose_rpc_went_away_still_finishes(tmp_path: Path) -> None:
    """A client deadline or cancel cancels the RPC's coroutine: the change it asked for runs to its end anyway,
    never leaving a version LOADING or UNLOADING for good (and a later load finds nothing stuck)."""
    version(tmp_path, "m", 1)
    loader = GatedLoader(held=2)

    async def body(manager: ModelManager, _loader: Loader) -> None:
        version(tmp_path, "m", 2)
        rpc = asyncio.ensure_future(manager.load_model("m"))
        assert await asyncio.to_thread(loader.waiting.wait, 10)
        rpc.cancel()  # the client gave up while version 2 was loading
        with pytest.raises(asyncio.CancelledError):
            await rpc
        loader.gate.set()
        settled = {1: "UNLOADED", 2: "READY"}  # 1 unloaded once 2 served, as in any load
        for _ in range(1000):  # bounded: the load finishes in its thread, then on the loop
            if states(manager, "m") == settled:
                break
            await asyncio.sleep(0.01)
        assert states(manager, "m") == settled
        await manager.load_model("m")  # nothing stuck: a retry changes nothing
        assert states(manager, "m") == settled

        entry = manager.acquire("m")  # a request in flight holds the unload in its drain
        rpc = asyncio.ensure_future(manager.unload_model("m"))
        for _ in range(100):
            if states(manager, "m")[2] == "UNLOADING":
                break
            await asyncio.sleep(0)
        rpc.cancel()
        with pytest.raises(asyncio.CancelledError):
            await rpc
        manager.release(entry)
        for _ in range(1000):
            if states(manager, "m")[2] == "UNLOADED":
                break
            await asyncio.sleep(0.01)
        assert states(manager, "m") == {1: "UNLOADED", 2: "UNLOADED"} and entry.servable is None
        await manager.load_model("m")
        assert manager.ready_versions("m") == [2]

    run(tmp_path, body, loader=loader, control=EXPLICIT)


def test_a_request_naming_no_version_follows_the_policy_not_a_labelled_canary(tmp_path: Path) -> None:
    """Labelled versions load beside the policy's; a request without a version or label goes to the newest ready
    version the policy chose (here 2), never to one loaded only because a label names it (the canary 3)."""
    for number in (1, 2, 3):
        version(tmp_path, "m", number)
    (tmp_path / "m" / "config.yaml").write_text("version_policy: {specific: [2]}\nlabels: {stable: 2, canary: 3}\n")

    async def body(manager: ModelManager, _loader: Loader) -> None:
        assert manager.ready_versions("m") == [2, 3]
        assert manager.resolve("m").version == 2
        assert manager.resolve("m", label="canary").version == 3
        (tmp_path / "m" / "config.yaml").write_text("version_policy: {specific: [2, 3]}\n")
        await manager.poll()
        assert manager.resolve("m").version == 3  # now the policy's too

    run(tmp_path, body)


def _stable_moving_to_a_broken_version(repo: Path) -> Path:
    """Model m: version 1 with `stable: 1` in its config.yaml (returned), which the tests move to a broken 2."""
    version(repo, "m", 1)
    config = repo / "m" / "config.yaml"
    config.write_text("labels: {stable: 1}\n")
    return config


def test_a_label_stays_on_its_version_when_the_version_it_moves_to_cannot_serve(tmp_path: Path) -> None:
    """As TF Serving, which refuses a label on a version that is not available: moving `stable` to a version that
    fails to load, or is not in the repository, leaves it where it was while that version serves; once the new
    target serves, the label moves."""
    config = _stable_moving_to_a_broken_version(tmp_path)

    async def body(manager: ModelManager, _loader: Loader) -> None:
        version(tmp_path, "m", 2, "garbage")
        config.write_text("labels: {stable: 2}\n")
        await manager.poll()
        assert states(manager, "m") == {1: "READY", 2: "FAILED"}
        assert manager.resolve("m", label="stable").version == 1
        assert manager.labels("m") == {"stable": 1}
        config.write_text("labels: {stable: 7}\n")  # a typo: no version 7
        await manager.poll()
        assert manager.resolve("m", label="stable").version == 1
        (tmp_path / "m" / "2" / "saved_model.pb").write_text("ok")
        os.utime(tmp_path / "m" / "2" / "saved_model.pb", ns=(1, 1))
        config.write_text("labels: {stable: 2}\n")
        await manager.poll()
        assert manager.resolve("m", label="stable").version == 2 and manager.labels("m") == {"stable": 2}

    run(tmp_path, body)


def test_a_batching_config_the_servers_flags_cannot_take_is_a_config_error(tmp_path: Path) -> None:
    """A `batching:` valid alone but not with the server's flags (the engine's check) would fail every request
    of a healthy model: it is refused as an invalid config.yaml is, and the model keeps its last good config."""
    from kerve.server.batcher import BatchingConfig
    from kerve.server.inference import InferenceEngine

    version(tmp_path, "m", 1)
    config = tmp_path / "m" / "config.yaml"
    flags = BatchingConfig(max_batch_size=16, allowed_batch_sizes=(8, 16))

    async def body(manager: ModelManager, _loader: Loader) -> None:
        engine = InferenceEngine(manager, ThreadPoolExecutor(1), Metrics(), flags)
        manager.check_config = engine.check_config
        config.write_text("batching: {max_queued: 99}\n")
        await manager.poll()
        assert engine.config_for(manager.resolve("m")).max_queued == 99
        config.write_text("batching: {max_batch_size: 32}\n")
        await manager.poll()
        entry = manager.resolve("m")  # still served, with the last good config
        assert engine.config_for(entry) == BatchingConfig(max_batch_size=16, allowed_batch_sizes=(8, 16), max_queued=99)
        [row] = [r for r in manager.index() if r.model == "m" and not r.version]
        assert row.state == "FAILED" and "m/config.yaml: batching does not combine" in row.reason

    run(tmp_path, body)


def test_a_failed_placement_is_tried_again_once_config_yaml_went_back_and_returns_to_it(tmp_path: Path) -> None:
    version(tmp_path, "m", 1)
    config = tmp_path / "m" / "config.yaml"

    class Picky(Loader):
        room = False

        def __call__(self, path: Path, config: ModelConfig) -> FakeServable:
            if config.replicas == 2 and not self.room:
                self.calls.append((path.parent.name, int(path.name)))
                raise RuntimeError("no room for two replicas")
            return super().__call__(path, config)

    loader = Picky()

    async def body(manager: ModelManager, _loader: Loader) -> None:
        config.write_text("replicas: 2\n")
        await manager.poll()
        await manager.poll()
        assert len(loader.calls) == 2 and manager.resolve("m").config.replicas is None  # tried once, failed
        config.write_text("")  # back to the serving copy's placement ...
        await manager.poll()
        loader.room = True
        config.write_text("replicas: 2\n")  # ... and to two replicas again, which fit now
        await manager.poll()
        assert manager.resolve("m").config.replicas == 2 and len(loader.calls) == 3

    run(tmp_path, body, loader=loader)


def test_a_model_whose_directory_cannot_be_read_fails_alone(tmp_path: Path) -> None:
    """A version directory named by a digit Python's int() cannot read ("²") is no version; an unreadable
    directory fails that model only: the other models load, and the server starts."""
    version(tmp_path, "good", 1)
    version(tmp_path, "odd", 1)
    (tmp_path / "odd" / "²").mkdir()

    async def body(manager: ModelManager, _loader: Loader) -> None:
        assert manager.ready_versions("good") == [1] and manager.ready_versions("odd") == [1]
        real = repository.list_versions

        def unreadable(repo: Path, model: str) -> list[int]:
            if model == "odd":
                raise PermissionError(13, "Permission denied", str(repo / model))
            return real(repo, model)

        repository.list_versions = unreadable  # type: ignore[assignment]
        try:
            version(tmp_path, "good", 2)
            await manager.poll()
        finally:
            repository.list_versions = real  # type: ignore[assignment]
        assert manager.ready_versions("good") == [2] and manager.ready_versions("odd") == [1]
        [row] = [r for r in manager.index() if r.model == "odd" and not r.version]
        assert row.state == "FAILED" and "cannot read the model's directory" in row.reason

    run(tmp_path, body)


def test_a_load_rpc_fails_when_the_models_config_is_broken(tmp_path: Path) -> None:
    """As Triton: RepositoryModelLoad of a model whose config.yaml is invalid fails (FAILED_PRECONDITION naming
    the problem), even though its loaded version keeps serving with the last good config."""
    version(tmp_path, "m", 1)

    async def body(manager: ModelManager, _loader: Loader) -> None:
        (tmp_path / "m" / "config.yaml").write_text("version_policy: {latest: 0}\n")
        with pytest.raises(ServingError) as info:
            await manager.load_model("m")
        assert info.value.code is ErrorCode.FAILED_PRECONDITION and "latest must be a positive integer" in str(
            info.value
        )
        assert manager.ready_versions("m") == [1]

    run(tmp_path, body, control=EXPLICIT)


def test_an_unload_goes_through_when_the_models_directory_cannot_be_read(tmp_path: Path) -> None:
    """Unloading reads nothing it needs: an unreadable directory must not keep the model serving after an unload
    RPC that answered OK."""
    version(tmp_path, "m", 1)

    async def body(manager: ModelManager, _loader: Loader) -> None:
        real = repository.list_versions

        def unreadable(repo: Path, model: str) -> list[int]:
            raise PermissionError(13, "Permission denied", str(repo / model))

        repository.list_versions = unreadable  # type: ignore[assignment]
        try:
            await manager.unload_model("m")
        finally:
            repository.list_versions = real  # type: ignore[assignment]
        assert manager.ready_versions("m") == []
        assert code_of(lambda: manager.resolve("m")) is ErrorCode.NOT_FOUND

    run(tmp_path, body, control=EXPLICIT)


def test_a_label_does_not_stay_on_a_version_deleted_from_the_repository(tmp_path: Path) -> None:
    """A label held on its old version while its new one cannot serve moves on once the old one is deleted too:
    it would otherwise name a version that is being unloaded."""
    config = _stable_moving_to_a_broken_version(tmp_path)

    async def body(manager: ModelManager, _loader: Loader) -> None:
        version(tmp_path, "m", 2, "garbage")
        config.write_text("labels: {stable: 2}\n")
        shutil.rmtree(tmp_path / "m" / "1")  # in the same poll: the old version goes as well
        await manager.poll()
        assert manager.labels("m") == {"stable": 2}  # not held on the deleted version 1
        assert manager.gone_versions("m") == {1: ""}

    run(tmp_path, body)


@pytest.mark.parametrize("text", ["0", "-1", "abc", "1.0", " 1", "²", "١", "9" * 19, "9" * 5000])
def test_a_version_string_that_is_not_a_positive_integer_is_not_found(text: str) -> None:
    with pytest.raises(ServingError) as info:
        parse_version("m", text)
    assert info.value.code is ErrorCode.NOT_FOUND
    assert "versions are positive integers" in info.value.message and len(info.value.message) < 200


def test_version_strings_that_name_a_version() -> None:
    assert parse_version("m", "") is None
    assert parse_version("m", "7") == 7
    assert parse_version("m", "007") == 7
    assert parse_version("m", "9" * 18) == int("9" * 18)


def test_gauges_of_versions_and_models_removed_from_the_repository_go_with_them(tmp_path: Path) -> None:
    """kerve_model_load_duration_seconds of deleted versions, and kerve_inflight_requests / kerve_queue_depth of
    deleted models, stayed forever: series piled up with every publish-and-delete cycle."""
    version(tmp_path, "m", 1)
    version(tmp_path, "gone", 1)

    def sample(manager: ModelManager, name: str, **labels: str) -> float | None:
        manager._metrics.push()
        return manager._metrics.registry.get_sample_value(name, labels)

    async def body(manager: ModelManager, _loader: Loader) -> None:
        load = "kerve_model_load_duration_seconds"
        assert sample(manager, load, model="m", version="1") is not None
        assert sample(manager, "kerve_inflight_requests", model="gone") == 0.0
        assert sample(manager, "kerve_queue_depth", model="gone") == 0.0
        version(tmp_path, "m", 2)
        await manager.poll()
        shutil.rmtree(tmp_path / "m" / "1")
        shutil.rmtree(tmp_path / "gone")
        await manager.poll()
        assert sample(manager, load, model="m", version="1") is None
        assert sample(manager, load, model="m", version="2") is not None
        assert sample(manager, "kerve_inflight_requests", model="gone") is None
        assert sample(manager, "kerve_queue_depth", model="gone") is None
        assert sample(manager, load, model="gone", version="1") is None
        assert sample(manager, "kerve_inflight_requests", model="m") == 0.0

    run(tmp_path, body)


def test_a_re_placed_copy_leaves_the_versions_cache_and_counts_no_reload(tmp_path: Path) -> None:
    """The old copy of a re-placed version shares the response cache owner (model, version, files) with the new
    one: its unload emptied the cache of the copy now serving, and counted a load and an unload for a version
    that never stopped serving."""
    version(tmp_path, "m", 1)
    forgotten: list[tuple[str, int]] = []

    def events(manager: ModelManager, event: str) -> float | None:
        labels = {"model": "m", "event": event}
        return manager._metrics.registry.get_sample_value("kerve_model_reload_events_total", labels)

    async def body(manager: ModelManager, _loader: Loader) -> None:
        manager.forget = lambda entry: forgotten.append((entry.model, entry.version))
        old = manager.resolve("m")
        (tmp_path / "m" / "config.yaml").write_text("replicas: 1\n")
        await manager.poll()
        assert manager.resolve("m") is not old and old.state is VersionState.UNLOADED
        assert forgotten == [] and events(manager, "loaded") == 1.0 and events(manager, "unloaded") is None
        shutil.rmtree(tmp_path / "m" / "1")
        version(tmp_path, "m", 2)
        await manager.poll()  # a real unload still tells the engine and counts
        assert forgotten == [("m", 1)] and events(manager, "unloaded") == 1.0

    run(tmp_path, body)


def test_a_version_draining_a_long_request_does_not_hold_up_other_models(tmp_path: Path) -> None:
    """The poller awaited each whole poll, and a poll awaited every model's drain: one version with a long request
    in flight kept every other model's new versions unloaded for up to the drain timeout."""
    version(tmp_path, "a", 1)
    version(tmp_path, "b", 1)

    async def until(condition: Callable[[], bool]) -> None:
        for _ in range(1000):  # bounded: 10 s of polls at most
            if condition():
                return
            await asyncio.sleep(0.01)
        raise AssertionError("condition not reached")

    async def body(manager: ModelManager, _loader: Loader) -> None:
        held = manager.acquire("a")  # a long request on a/1
        manager.start_polling(0.01)
        version(tmp_path, "a", 2)
        await until(lambda: held.state is VersionState.UNLOADING)  # a/2 serves, a/1 drains its request
        version(tmp_path, "b", 2)
        await until(lambda: manager.ready_versions("b") == [2])
        assert held.state is VersionState.UNLOADING  # still draining: b did not wait for it
        manager.release(held)
        await until(lambda: held.state is VersionState.UNLOADED)

    run(tmp_path, body)
