"""Owns which model versions exist, their lifecycle state, and resolution of (model, version) to a servable.

A version moves loading -> ready -> unloading -> unloaded, or loading -> failed; only this class changes
state. Loading runs in a worker thread so the event loop keeps answering health and other models.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kerve import repository

from .errors import ErrorCode, ServingError, not_found, unavailable
from .metrics import Metrics
from .stats import VersionStats

log = logging.getLogger("kerve.server.manager")


class VersionState(enum.Enum):
    LOADING = "LOADING"
    READY = "READY"
    UNLOADING = "UNLOADING"
    UNLOADED = "UNLOADED"
    FAILED = "FAILED"


@dataclass
class ModelVersion:
    model: str
    version: int
    path: Path
    state: VersionState = VersionState.LOADING
    reason: str = ""
    servable: Any = None
    load_seconds: float = 0.0
    stats: VersionStats = field(default_factory=VersionStats)


Loader = Callable[[Path], Any]


class ModelManager:
    def __init__(self, repository_path: str | Path, loader: Loader, executor: Executor, metrics: Metrics) -> None:
        self.repository = Path(repository_path)
        self._loader = loader
        self._executor = executor
        self._metrics = metrics
        self._models: dict[str, dict[int, ModelVersion]] = {}
        self.initial_load_done = False

    async def load_all(self) -> None:
        """Load the latest version of every model in the repository; failures are recorded, not raised."""
        if not self.repository.is_dir():
            raise FileNotFoundError(f"model repository {self.repository} does not exist")
        tasks = []
        for model in repository.list_models(self.repository):
            latest = repository.latest_version(self.repository, model)
            if latest is None:
                log.warning("model %s has no servable version under %s", model, self.repository / model)
                self._models.setdefault(model, {})
                continue
            tasks.append(self.load_version(model, latest))
        await asyncio.gather(*tasks)
        self.initial_load_done = True

    async def load_version(self, model: str, version: int) -> ModelVersion:
        path = repository.version_dir(self.repository, model, version)
        entry = ModelVersion(model, version, path)
        self._models.setdefault(model, {})[version] = entry
        self._set_state(entry, VersionState.LOADING)
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        try:
            entry.servable = await loop.run_in_executor(self._executor, self._loader, path)
        except Exception as exc:  # a broken version must never take the server down
            entry.reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            self._set_state(entry, VersionState.FAILED)
            self._metrics.reloads.labels(model, "load_failed").inc()
            log.error("failed to load %s version %d from %s: %s", model, version, path, entry.reason)
        else:
            self._set_state(entry, VersionState.READY)
            self._metrics.reloads.labels(model, "loaded").inc()
            log.info("loaded %s version %d in %.2fs", model, version, time.monotonic() - started)
        entry.load_seconds = time.monotonic() - started
        self._metrics.load_seconds.labels(model, str(version)).set(entry.load_seconds)
        return entry

    def _set_state(self, entry: ModelVersion, state: VersionState) -> None:
        entry.state = state
        self._metrics.set_state(entry.model, entry.version, state.value, [s.value for s in VersionState])

    def models(self) -> list[str]:
        return sorted(self._models)

    def entries(self, model: str | None = None) -> list[ModelVersion]:
        names = [model] if model is not None else sorted(self._models)
        return [self._models[n][v] for n in names if n in self._models for v in sorted(self._models[n])]

    def ready_versions(self, model: str) -> list[int]:
        return sorted(v for v, e in self._models.get(model, {}).items() if e.state is VersionState.READY)

    def resolve(self, model: str, version: int | None = None) -> ModelVersion:
        """The ready version to serve, raising NOT_FOUND/UNAVAILABLE with a message the caller can act on."""
        versions = self._models.get(model)
        if versions is None:
            known = ", ".join(self.models()) or "none"
            raise not_found(f"model {model!r} not found; models served: {known}")
        if version is None:
            ready = self.ready_versions(model)
            if ready:
                return versions[ready[-1]]
            if any(e.state is VersionState.LOADING for e in versions.values()):
                raise unavailable(f"model {model!r} is loading")
            reasons = "; ".join(f"version {v}: {e.reason}" for v, e in sorted(versions.items()) if e.reason)
            raise unavailable(f"model {model!r} has no ready version" + (f" ({reasons})" if reasons else ""))
        entry = versions.get(version)
        if entry is None:
            raise not_found(f"model {model!r} has no version {version}; versions: {sorted(versions)}")
        if entry.state is VersionState.READY:
            return entry
        if entry.state is VersionState.LOADING:
            raise unavailable(f"model {model!r} version {version} is loading")
        raise ServingError(
            ErrorCode.UNAVAILABLE,
            f"model {model!r} version {version} is {entry.state.value.lower()}"
            + (f": {entry.reason}" if entry.reason else ""),
        )


def parse_version(model: str, text: str) -> int | None:
    """Wire version strings: '' means the policy's choice, otherwise a positive integer."""
    if text == "":
        return None
    if not text.isdigit() or int(text) < 1:
        raise not_found(f"model {model!r} has no version {text!r}: versions are positive integers")
    return int(text)
