"""Changes every process of a `--processes` group must make alike, answered once all have: explicit model control
(load, unload, TF Serving's reload config), system shared memory registrations, LogSettings and TraceSetting.

An RPC reaches the one process that holds the caller's connection, yet every process must serve the same models and
know the same regions, or a client would see a model loaded through one connection and missing through the next. In
a group, the process that takes the RPC appends the change to the group's journal (group_settings.py) and applies it
when it reads it back; every process applies these changes as it reads them, its own included, so all apply them in
the journal's one order (two loads of one model with different configs through two processes end the same
everywhere). Each other process appends, once its change has ended, whether it succeeded; the answering process
answers once every process has, with the first error any of them met. The others read the journal every
JOURNAL_READ_S, so a group's change takes about that much longer than a lone server's.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any

from .errors import ErrorCode, ServingError
from .group_settings import SettingsJournal
from .manager import ModelManager

log = logging.getLogger("kerve.server.group_control")

CHANGE, DONE = "change", "change_done"  # the journal's kinds: a change to apply, and a process having ended one
JOURNAL_READ_S = 0.1  # how often each process of a group reads the journal (app.py)
DONE_POLL_S = 0.05  # how often the answering process reads the journal while it waits for the others
DONE_TIMEOUT_S = 900.0  # a process that has not ended a change this long after it was asked is reported, not awaited

Action = Callable[[Mapping[str, Any]], Awaitable[None]]  # applies one change (its JSON payload) in this process


class GroupChanges:
    def __init__(self, journal: SettingsJournal, processes: int) -> None:
        self.journal = journal
        self.processes = processes
        self._actions: dict[str, Action] = {}
        self._changes: dict[str, asyncio.Future[None]] = {}  # this process's own changes, read back, by id
        self._done: dict[str, dict[int, tuple[str, str] | None]] = {}  # id -> process -> (code, message) | None
        journal.register(CHANGE, self._apply, in_order=True)
        journal.register(DONE, self._record_done)

    def add(self, op: str, action: Action) -> None:
        """How this process applies changes of kind `op` (each process adds the same ops at its start)."""
        self._actions[op] = action

    async def run(self, op: str, payload: Mapping[str, Any]) -> None:
        """Apply a change in every process; returns once all have, raises the first error any met (another
        process's naming it)."""
        journal = self.journal
        change_id = uuid.uuid4().hex
        change = {"op": op, "payload": dict(payload), "id": change_id, "from": journal.origin}
        self._done[change_id] = {}  # the others may end it before this process does
        try:
            if not journal.share(CHANGE, None, change):
                raise ServingError(ErrorCode.UNAVAILABLE, "cannot share the change with the group's other processes")
            journal.catch_up()  # applies what came before this change, then this one: the journal's order
            own = self._changes.pop(change_id, None)
            if own is None:  # its line did not apply (logged by the journal)
                raise ServingError(ErrorCode.INTERNAL, "the change did not apply in this process; see its log")
            errors: list[ServingError] = []
            try:
                await asyncio.shield(own)  # a cancelled RPC leaves the change running (manager._to_the_end)
            except ServingError as exc:
                errors.append(exc)
            errors += await self._others(change_id)
        finally:
            del self._done[change_id]
        if errors:
            raise errors[0]

    async def _others(self, change_id: str) -> list[ServingError]:
        """Wait for every other process to end the change; their errors, each naming its process."""
        others = set(range(self.processes)) - {self.journal.origin}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DONE_TIMEOUT_S
        done = self._done[change_id]
        while not others <= done.keys():
            if loop.time() > deadline:
                missing = ", ".join(f"p{i}" for i in sorted(others - done.keys()))
                message = f"server process {missing} has not ended the change after {DONE_TIMEOUT_S:.0f}s (it may yet)"
                return [ServingError(ErrorCode.UNAVAILABLE, message)]
            await asyncio.sleep(DONE_POLL_S)
            self.journal.catch_up()
        errors = []
        for index in sorted(others):
            failure = done[index]
            if failure is not None:
                code, message = failure
                errors.append(ServingError(ErrorCode(code), f"in server process p{index}: {message}"))
        return errors

    # --- appliers: every process, as it reads the journal ------------------------------------------------------

    def _apply(self, _model: str | None, change: Mapping[str, Any]) -> None:
        task = asyncio.ensure_future(self._actions[change["op"]](change["payload"]))
        journal = self.journal
        if change["from"] == journal.origin:
            self._changes[change["id"]] = task  # the RPC that asked for it awaits it, unless it is cancelled first:
            task.add_done_callback(_retrieved)  # then its failure must not be logged as never retrieved
            return

        def report(ended: asyncio.Future[None]) -> None:
            failure = None
            if ended.cancelled():
                failure = (ErrorCode.UNAVAILABLE.value, "the change was cancelled (the server is stopping)")
            elif isinstance(ended.exception(), ServingError):
                error = ended.exception()
                assert isinstance(error, ServingError)
                failure = (error.code.value, error.message)
            elif ended.exception() is not None:
                log.error("a %s change from the group failed", change["op"], exc_info=ended.exception())
                failure = (ErrorCode.INTERNAL.value, f"the change failed: {ended.exception()!r}")
            journal.share(DONE, None, {"id": change["id"], "process": journal.origin, "failure": failure})

        task.add_done_callback(report)

    def _record_done(self, _model: str | None, done: Mapping[str, Any]) -> None:
        if done["id"] in self._done:  # a change this process asked for and still waits on
            failure = done["failure"]
            self._done[done["id"]][int(done["process"])] = tuple(failure) if failure is not None else None


class ModelControl:
    """What the repository RPCs call: the manager itself in a lone server; in a group, the manager in every process
    (a refused change, checked here first, reaches none)."""

    def __init__(self, manager: ModelManager, group: GroupChanges | None = None) -> None:
        self.manager = manager
        self.group = group
        if group is not None:
            group.add("apply", self._apply)
            group.add("unload", self._unload)

    async def load(self, name: str, overrides: Mapping[str, Any] | None = None) -> None:
        await self.apply({name: dict(overrides or {})}, exclusive=False)

    async def apply(self, models: Mapping[str, Mapping[str, Any]], exclusive: bool) -> None:
        """Load these models (name -> config overrides); with `exclusive`, unload every other (manager.apply_models)."""
        if self.group is None:
            await self.manager.apply_models(models, exclusive)
            return
        self.manager.check_models(models)
        await self.group.run("apply", {"models": {n: dict(o) for n, o in models.items()}, "exclusive": exclusive})

    async def unload(self, name: str) -> None:
        if self.group is None:
            await self.manager.unload_model(name)
            return
        self.manager.check_unload(name)
        await self.group.run("unload", {"name": name})

    def _apply(self, payload: Mapping[str, Any]) -> Coroutine[Any, Any, None]:
        return self.manager.apply_models(payload["models"], payload["exclusive"])

    def _unload(self, payload: Mapping[str, Any]) -> Coroutine[Any, Any, None]:
        return self.manager.unload_model(payload["name"])


def _retrieved(ended: asyncio.Future[None]) -> None:
    if not ended.cancelled():
        ended.exception()
