"""The journal a `--processes` group's processes share: changes one process appends, every process reads.

The processes of a group share one port, and an RPC reaches whichever process holds the caller's connection, so a
change made through one connection (a model load, a shared memory region, a LogSettings or TraceSetting change) must
reach the others. The process that takes it appends it to a journal file the supervisor made for the group (one
JSON line: origin, kind, model, changes; O_APPEND writes of a line land whole); every JOURNAL_READ_S
(group_control.py) each process reads the lines it has not seen and applies them, in the journal's order: the
others' changes, and, for the kinds registered `in_order`, its own too (group_control.GroupChanges: every process
applies them in one order, and the process that took the call answers once all have). The journal lives as long as
the group.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("kerve.server.group_settings")

ENV = "KERVE_GROUP_SETTINGS"  # the journal's path, set by the supervisor in its children


class SettingsJournal:
    def __init__(self, path: Path, origin: int) -> None:
        self.path = path
        self.origin = origin
        self._appliers: dict[str, Callable[[str | None, Any], object]] = {}  # kind -> (model, changes) -> None
        self._in_order: set[str] = set()
        self._offset = 0
        self._partial = b""

    def register(self, kind: str, applier: Callable[[str | None, Any], object], in_order: bool = False) -> None:
        """Apply changes of `kind` with `applier`; `in_order`: this process's own too, as it reads them, so that
        every process applies them in the journal's one order (model control: group_control.py)."""
        self._appliers[kind] = applier
        if in_order:
            self._in_order.add(kind)

    def share(self, kind: str, model: str | None, changes: Any) -> bool:
        """A change this process has just applied (or, for an in-order kind, will apply when it reads it): append
        it for the others. A failure is logged and returns False, not raised: a settings change stands here, and
        the caller has been answered."""
        line = json.dumps({"origin": self.origin, "kind": kind, "model": model, "changes": changes}) + "\n"
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line.encode())
            finally:
                os.close(fd)
        except OSError as exc:
            log.error("cannot share a %s change with the group's other processes: %s", kind, exc)
            return False
        return True

    def catch_up(self) -> int:
        """Apply the other processes' changes appended since the last call; how many were applied."""
        try:
            with open(self.path, "rb") as journal:
                journal.seek(self._offset)
                data = journal.read()
        except FileNotFoundError:
            return 0
        self._offset += len(data)
        data = self._partial + data
        *lines, self._partial = data.split(b"\n")  # a line still being written waits for the next call
        applied = 0
        for line in lines:
            try:
                entry = json.loads(line)
                if entry["origin"] == self.origin and entry["kind"] not in self._in_order:
                    continue
                self._appliers[entry["kind"]](entry["model"], entry["changes"])
                applied += 1
            except Exception as exc:  # one bad line must not stop the rest
                log.error("cannot apply a settings change from the group's journal: %s", exc)
        return applied
