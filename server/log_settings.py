"""The server's logging, changed at run time (Triton's LogSettings RPC): turn info, warning or error lines off,
log every request at verbose level 1 or more, switch timestamps to ISO 8601, without a restart.

Pure Python (logging), no wire format: the V2 adapter translates its messages to the mapping `update` takes.
Settings live in each server process; with --processes N a change made through one reaches the others through the
group's journal (group_settings.py).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from .errors import invalid

LOGGER = "kerve"
DEFAULT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
FORMATS = {"default": None, "ISO8601": "%Y-%m-%dT%H:%M:%S"}  # log_format -> strftime for the timestamps
_LEVELS = {"log_info": logging.INFO, "log_warning": logging.WARNING, "log_error": logging.ERROR}
KEYS = ("log_file", "log_info", "log_warning", "log_error", "log_verbose_level", "log_format")


class RequestLog:
    """Whether to log every request, read per request as a plain attribute (no call on the request path)."""

    verbose = False
    logger = logging.getLogger("kerve.server.requests")


REQUESTS = RequestLog()


class _Drop(logging.Filter):
    """Drops the kerve records of the levels turned off (Triton's toggles are per level, not a threshold)."""

    def __init__(self) -> None:
        super().__init__()
        self.off: set[int] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.off or record.levelno not in self.off or not record.name.startswith(LOGGER)


_KINDS = {bool: "true or false", int: "an integer >= 0", str: "a string"}  # as the messages name them


class LogSettings:
    def __init__(self, line_format: str) -> None:
        self._format = line_format
        self.values: dict[str, bool | int | str] = {
            "log_file": "",
            "log_info": True,
            "log_warning": True,
            "log_error": True,
            "log_verbose_level": 0,
            "log_format": "default",
        }
        self._drop = _Drop()

    def update(self, changes: Mapping[str, bool | int | str]) -> dict[str, bool | int | str]:
        """Apply `changes` (all checked first: a bad one changes nothing) and return every setting."""
        merged = dict(self.values)
        for key, value in changes.items():
            if key not in self.values:
                raise invalid(f"unknown log setting {key!r}; settings are {', '.join(KEYS)}")
            expected = type(self.values[key])
            if type(value) is not expected:
                raise invalid(f"log setting {key!r} takes {_KINDS[expected]}, got {value!r}")
            merged[key] = value
        if merged["log_file"]:
            raise invalid("kerve logs to standard error (the container's log): log_file must stay empty")
        if merged["log_format"] not in FORMATS:
            raise invalid(f"log_format must be one of {sorted(FORMATS)}, got {merged['log_format']!r}")
        self.values = merged
        self._apply()
        return dict(self.values)

    def _apply(self) -> None:
        verbose = int(self.values["log_verbose_level"]) > 0
        logging.getLogger(LOGGER).setLevel(logging.DEBUG if verbose else logging.INFO)
        REQUESTS.verbose = verbose
        self._drop.off = {level for key, level in _LEVELS.items() if not self.values[key]}
        formatter = logging.Formatter(self._format, datefmt=FORMATS[str(self.values["log_format"])])
        for handler in logging.getLogger().handlers:
            handler.setFormatter(formatter)
            if self._drop not in handler.filters:
                handler.addFilter(self._drop)
