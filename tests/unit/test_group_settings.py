"""The settings journal of a --processes group (server/group_settings.py), without a server: a change one process
shares is applied by the others, in the journal's order, never twice by its origin; a line still being written
waits; a bad line is logged and skipped."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from kerve.server.group_settings import SettingsJournal


def process(path: Path, origin: int) -> tuple[SettingsJournal, list[tuple[str, str | None, Any]]]:
    seen: list[tuple[str, str | None, Any]] = []
    journal = SettingsJournal(path, origin)
    for kind in ("log", "trace"):
        journal.register(kind, lambda model, changes, kind=kind: seen.append((kind, model, changes)))
    return journal, seen


def test_changes_reach_the_other_processes_in_order_and_not_their_origin(tmp_path: Path) -> None:
    path = tmp_path / "settings.jsonl"
    p0, seen0 = process(path, 0)
    p1, seen1 = process(path, 1)
    assert p1.catch_up() == 0  # no journal yet
    p0.share("trace", "cnn", {"trace_level": ["TIMESTAMPS"], "trace_rate": ["1"]})
    p0.share("log", None, {"log_verbose_level": 1})
    p1.share("trace", None, {"trace_count": ["5"]})
    assert p1.catch_up() == 2 and p0.catch_up() == 1
    assert seen1 == [("trace", "cnn", {"trace_level": ["TIMESTAMPS"], "trace_rate": ["1"]}),
                     ("log", None, {"log_verbose_level": 1})]  # fmt: skip
    assert seen0 == [("trace", None, {"trace_count": ["5"]})]
    assert p0.catch_up() == p1.catch_up() == 0  # each line once


def test_a_partial_line_waits_and_a_bad_line_is_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "settings.jsonl"
    p1, seen = process(path, 1)
    line = '{"origin": 0, "kind": "log", "model": null, "changes": {"log_info": false}}\n'
    with open(path, "w") as journal:
        journal.write("not json\n")
        journal.write('{"origin": 0, "kind": "colour", "model": null, "changes": {}}\n')
        journal.write(line[:20])
    with caplog.at_level(logging.ERROR, logger="kerve.server.group_settings"):
        assert p1.catch_up() == 0
    assert caplog.text.count("cannot apply a settings change") == 2 and seen == []
    with open(path, "a") as journal:
        journal.write(line[20:])
    assert p1.catch_up() == 1 and seen == [("log", None, {"log_info": False})]


def test_a_journal_that_cannot_be_written_is_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    p0, _ = process(tmp_path / "missing-dir" / "settings.jsonl", 0)
    with caplog.at_level(logging.ERROR, logger="kerve.server.group_settings"):
        assert p0.share("log", None, {"log_info": False}) is False
    assert "cannot share a log change" in caplog.text


def test_an_in_order_kind_applies_in_its_origin_too_in_the_journals_order(tmp_path: Path) -> None:
    """Model control (group_control.py) applies its own changes as it reads them back, so that every process
    applies them in one order; other kinds stay the others' only."""
    path = tmp_path / "settings.jsonl"
    p0, seen0 = process(path, 0)
    p1, seen1 = process(path, 1)
    for journal, seen in ((p0, seen0), (p1, seen1)):
        journal.register("model", lambda model, changes, seen=seen: seen.append(("model", model, changes)), True)
    assert p1.share("model", None, {"n": 1}) and p0.share("log", None, {"log_info": False})
    assert p0.share("model", None, {"n": 2})
    assert p0.catch_up() == 2 and p1.catch_up() == 3  # p0 skips its own log change
    assert seen0 == [("model", None, {"n": 1}), ("model", None, {"n": 2})]
    assert seen1 == [("model", None, {"n": 1}), ("log", None, {"log_info": False}), ("model", None, {"n": 2})]


def test_a_trace_change_that_repeats_this_processs_own_file_shares_the_rest(tmp_path: Path) -> None:
    """Each process of a group writes its own trace file (<file>.p0, .p1): a client's get, edit, update echoes this
    process's name back, which the others would refuse (and with it the whole change). The fixed keys stay in the
    process that got the call; the rest reaches the others. (Imports the V2 servicer, which imports TensorFlow.)"""
    import asyncio
    from types import SimpleNamespace

    from kerve.protos import grpc_service_pb2 as pb
    from kerve.server.group_control import ModelControl
    from kerve.server.trace import Tracer
    from kerve.server.v2_service import V2Servicer

    own = tmp_path / "t.json.p0"
    shared: list[tuple[str, Any]] = []

    async def run(op: str, payload: Any) -> None:
        shared.append((op, payload))

    group = SimpleNamespace(add=lambda op, action: None, run=run)  # group_control.GroupChanges' surface
    engine = SimpleNamespace(tracer=Tracer(trace_file=own))
    control = ModelControl(SimpleNamespace(), group)  # type: ignore[arg-type]
    servicer = V2Servicer(SimpleNamespace(), engine, lambda: True, control=control)  # type: ignore[arg-type]
    request = pb.TraceSettingRequest()
    request.settings["trace_file"].value.append(str(own))
    request.settings["trace_level"].value.append("TIMESTAMPS")
    answer = asyncio.run(servicer.TraceSetting(request, SimpleNamespace()))  # type: ignore[arg-type]
    assert list(answer.settings["trace_level"].value) == ["TIMESTAMPS"]
    assert shared == [("trace", {"model": None, "changes": {"trace_level": ["TIMESTAMPS"]}})]
