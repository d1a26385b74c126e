"""Explicit model control through a --processes group (server/group_control.py), without a server: two processes'
controls share one journal in one event loop, each with a fake manager. A change through either is answered once
both have applied it, with the other's error naming its process; a refused change reaches no one; every process
applies changes in the journal's one order; a lone server calls its manager directly."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from kerve.server.errors import ErrorCode, ServingError
from kerve.server.group_control import GroupChanges, ModelControl
from kerve.server.group_settings import SettingsJournal


class FakeManager:
    def __init__(self, broken: str = "") -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.broken = broken  # a model whose load fails here (a FAILED_PRECONDITION after the change)

    def check_models(self, models: Mapping[str, Mapping[str, Any]]) -> None:
        if "missing" in models:
            raise ServingError(ErrorCode.NOT_FOUND, "model 'missing' is not in the model repository")

    def check_unload(self, name: str) -> None:
        self.check_models({name: {}})

    async def apply_models(self, models: Mapping[str, Mapping[str, Any]], exclusive: bool = True) -> None:
        self.check_models(models)
        self.calls.append(("apply", {n: dict(o) for n, o in models.items()}, exclusive))
        await asyncio.sleep(0.01)  # a load takes a while: the processes' changes overlap
        if self.broken in models:
            raise ServingError(ErrorCode.FAILED_PRECONDITION, f"failed to load model {self.broken!r}")

    async def unload_model(self, name: str) -> None:
        self.calls.append(("unload", name))


def group(tmp_path: Path, broken: str = "") -> tuple[list[ModelControl], list[FakeManager]]:
    managers = [FakeManager(), FakeManager(broken)]
    path = tmp_path / "settings.jsonl"
    groups = [GroupChanges(SettingsJournal(path, i), processes=2) for i in range(2)]
    controls = [ModelControl(m, g) for m, g in zip(managers, groups, strict=True)]  # type: ignore[arg-type]
    return controls, managers


async def reading(controls: list[ModelControl]) -> None:
    """Each process's periodic read of the journal (every second in a server; faster here)."""
    while True:
        for control in controls:
            assert control.group is not None
            control.group.journal.catch_up()
        await asyncio.sleep(0.005)


def run_with_readers(controls: list[ModelControl], main: Any) -> Any:
    async def body() -> Any:
        readers = asyncio.ensure_future(reading(controls))
        try:
            return await main
        finally:
            readers.cancel()

    return asyncio.run(body())


def test_a_load_is_answered_once_every_process_has_applied_it(tmp_path: Path) -> None:
    controls, managers = group(tmp_path)
    run_with_readers(controls, controls[0].load("cnn", {"max_batch_size": 4}))
    assert managers[0].calls == managers[1].calls == [("apply", {"cnn": {"max_batch_size": 4}}, False)]
    run_with_readers(controls, controls[1].unload("cnn"))
    run_with_readers(controls, controls[1].apply({"pair": {}}, exclusive=True))  # TF Serving's reload config
    assert managers[0].calls == managers[1].calls
    assert managers[0].calls[1:] == [("unload", "cnn"), ("apply", {"pair": {}}, True)]
    assert all(c.group is not None and c.group._done == {} for c in controls)  # nothing left waiting


def test_another_processs_failure_is_the_answer_naming_it(tmp_path: Path) -> None:
    controls, managers = group(tmp_path, broken="cnn")
    with pytest.raises(ServingError) as failed:
        run_with_readers(controls, controls[0].load("cnn"))
    assert failed.value.code is ErrorCode.FAILED_PRECONDITION
    assert failed.value.message == "in server process p1: failed to load model 'cnn'"
    assert len(managers[0].calls) == len(managers[1].calls) == 1  # applied in both all the same


def test_a_refused_change_reaches_no_process(tmp_path: Path) -> None:
    controls, managers = group(tmp_path)
    for change in (controls[0].load("missing"), controls[1].unload("missing")):
        with pytest.raises(ServingError) as refused:
            run_with_readers(controls, change)
        assert refused.value.code is ErrorCode.NOT_FOUND
    assert managers[0].calls == managers[1].calls == []
    assert not (tmp_path / "settings.jsonl").exists()


def test_changes_through_two_processes_apply_in_one_order_everywhere(tmp_path: Path) -> None:
    controls, managers = group(tmp_path)

    async def both() -> None:
        await asyncio.gather(
            controls[0].load("cnn", {"max_batch_size": 2}), controls[1].load("cnn", {"max_batch_size": 8})
        )

    run_with_readers(controls, both())
    assert len(managers[0].calls) == 2 and managers[0].calls == managers[1].calls


def test_a_lone_server_calls_its_manager_directly(tmp_path: Path) -> None:
    manager = FakeManager(broken="bad")
    control = ModelControl(manager)  # type: ignore[arg-type]
    asyncio.run(control.load("cnn"))
    asyncio.run(control.unload("cnn"))
    with pytest.raises(ServingError, match="failed to load model 'bad'"):
        asyncio.run(control.apply({"bad": {}}, exclusive=True))
    assert manager.calls == [("apply", {"cnn": {}}, False), ("unload", "cnn"), ("apply", {"bad": {}}, True)]
