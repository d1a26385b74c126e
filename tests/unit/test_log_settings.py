"""Run-time logging settings (server/log_settings.py, Triton's LogSettings): checked as a whole, applied to the
kerve loggers and the handlers' format, and the per-request switch the engine reads."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from kerve.server.errors import ErrorCode, ServingError
from kerve.server.log_settings import DEFAULT_FORMAT, REQUESTS, LogSettings


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def capture() -> Iterator[Capture]:
    handler = Capture()
    root = logging.getLogger()
    root.addHandler(handler)
    level, kerve_level = root.level, logging.getLogger("kerve").level
    saved = [(h, h.formatter, list(h.filters)) for h in root.handlers]  # pytest's own handlers too
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:  # leave logging as the other tests found it
        REQUESTS.verbose = False
        for h, formatter, filters in saved:
            h.setFormatter(formatter)
            h.filters[:] = filters
        root.removeHandler(handler)
        root.setLevel(level)
        logging.getLogger("kerve").setLevel(kerve_level)


def test_defaults_and_a_bad_change_changes_nothing(capture: Capture) -> None:
    settings = LogSettings(DEFAULT_FORMAT)
    assert settings.update({}) == {
        "log_file": "", "log_info": True, "log_warning": True, "log_error": True, "log_verbose_level": 0,
        "log_format": "default",
    }  # fmt: skip
    for change, message in [
        ({"log_colour": True}, "unknown log setting 'log_colour'"),
        ({"log_info": 1}, "log setting 'log_info' takes true or false, got 1"),
        ({"log_verbose_level": True}, "log setting 'log_verbose_level' takes an integer >= 0, got True"),
        ({"log_file": "/tmp/x.log"}, "log_file must stay empty"),
        ({"log_format": "json"}, "log_format must be one of"),
        ({"log_info": False, "log_format": "json"}, "log_format must be one of"),
    ]:
        with pytest.raises(ServingError, match=message) as info:
            settings.update(change)
        assert info.value.code is ErrorCode.INVALID_ARGUMENT
    assert settings.values["log_info"] is True  # the last one's good half was not applied either


def test_levels_turn_off_one_by_one_for_kerve_only(capture: Capture) -> None:
    settings = LogSettings("%(levelname)s %(name)s: %(message)s")
    settings.update({"log_info": False})
    logging.getLogger("kerve.server.x").info("hidden")
    logging.getLogger("kerve.server.x").warning("shown")
    logging.getLogger("other").info("not ours")
    assert capture.lines == ["WARNING kerve.server.x: shown", "INFO other: not ours"]
    settings.update({"log_info": True, "log_warning": False, "log_format": "ISO8601"})
    logging.getLogger("kerve.server.x").info("back")
    logging.getLogger("kerve.server.x").warning("gone")
    assert capture.lines[-1] == "INFO kerve.server.x: back"


def test_verbose_logs_debug_lines_and_turns_the_request_log_on(capture: Capture) -> None:
    settings = LogSettings("%(message)s")
    assert REQUESTS.verbose is False
    settings.update({"log_verbose_level": 1})
    assert REQUESTS.verbose is True and logging.getLogger("kerve").level == logging.DEBUG
    logging.getLogger("kerve.server.x").debug("detail")
    assert capture.lines == ["detail"]
    settings.update({"log_verbose_level": 0})
    assert REQUESTS.verbose is False and logging.getLogger("kerve").level == logging.INFO


def test_iso8601_timestamps(capture: Capture) -> None:
    import re

    LogSettings("%(asctime)s").update({"log_format": "ISO8601"})
    logging.getLogger("kerve.server.x").warning("w")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", capture.lines[-1])
