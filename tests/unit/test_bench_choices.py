"""bench.run's line per replica of kerve's caller-thread choices, read from the server's log."""

from __future__ import annotations

import pytest

from bench.run import print_caller_thread_choices


def test_a_bucket_whose_choice_changed_is_listed_once_with_its_last_choice(capsys: pytest.CaptureFixture[str]) -> None:
    def choice(rows: str, caller_thread: bool) -> dict[str, object]:
        return {"label": "m/1", "rows": rows, "caller_thread": caller_thread, "median_ms": 1.0, "other_ms": 2.0}

    print_caller_thread_choices([choice("1", True), choice("3-4", True), choice("2", False), choice("3-4", False)])
    assert capsys.readouterr().out.splitlines()[-1] == "  m/1: 1 | 2, 3-4"
    print_caller_thread_choices([])
    assert capsys.readouterr().out == ""
