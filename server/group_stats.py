"""ModelStatistics for a `--processes` group: every process's counts, summed.

An RPC reaches whichever process holds the caller's connection, so a process answering with its own counts would
give perf_analyzer (which divides the server's times by its request count) one process's share of N. Every second
each process writes its ready versions' statistics to a file of its own in the group's directory (whole, then
renamed over the last, so a reader never sees half of one); the process answering adds the others' latest files
to its own live counts. The others' part may be a second old, as the group's /metrics is.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from .stats import VersionStats

log = logging.getLogger("kerve.server.group_stats")

_PREFIX = "stats.p"


class GroupStats:
    def __init__(self, directory: Path, index: int) -> None:
        self.directory = directory  # the group's, where its journal is (group_settings.py)
        self._path = directory / f"{_PREFIX}{index}.json"
        self._written = ""

    def publish(self, versions: Iterable[tuple[str, int, VersionStats]]) -> None:
        """This process's counts of `versions` (model, version, stats), for the others; unchanged counts are not
        written again."""
        records = [{"model": m, "version": v, "stats": s.to_record()} for m, v, s in versions]
        text = json.dumps(records, sort_keys=True)
        if text == self._written:
            return
        partial = self._path.with_suffix(".tmp")
        try:
            partial.write_text(text)
            os.replace(partial, self._path)
        except OSError as exc:  # the answer through another process lacks this one's latest counts, no more
            log.error("cannot share this process's model statistics with the group: %s", exc)
            return
        self._written = text

    def others(self) -> dict[tuple[str, int], list[VersionStats]]:
        """The other processes' latest counts, by (model, version)."""
        found: dict[tuple[str, int], list[VersionStats]] = {}
        for path in self.directory.glob(f"{_PREFIX}*.json"):
            if path == self._path:
                continue
            try:
                records = json.loads(path.read_text())
                for record in records:
                    key = (str(record["model"]), int(record["version"]))
                    found.setdefault(key, []).append(VersionStats.from_record(record["stats"]))
            except (OSError, ValueError, KeyError, TypeError) as exc:  # one unreadable file must not fail the RPC
                log.error("cannot read a group process's model statistics from %s: %s", path.name, exc)
        return found
