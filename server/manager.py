"""Owns which model versions exist, their lifecycle state, and resolution of (model, version|label) to a servable.

A version moves LOADING -> READY -> UNLOADING -> UNLOADED, or LOADING -> FAILED; only this class changes state,
always on the event loop thread. One mechanism does all lifecycle work: `_sync(model)` reads the model's
config.yaml and versions on disk, loads (and warms up, in a worker thread) the versions the policy aspires to,
then unloads the ones it no longer wants. The initial load, every repository poll, and the explicit-control RPCs
all call it, serialized per model by a lock.

- Availability first: a version that fails to load (or to warm up) is FAILED and the policy is applied again
  without it, so `latest: 1` keeps serving the previous version. A FAILED version is retried only when its
  files change.
- Atomic switch: a new version takes traffic the moment it is READY (warmup included); versions leaving the
  policy go UNLOADING at once (no new requests), and are unloaded after their in-flight requests drain
  (`acquire`/`release` count them).
- A broken config.yaml fails that model (it keeps serving what it had, with its last good config); other models
  are untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import inspect
import logging
import os
import re
import time
from collections.abc import Callable, Collection, Coroutine, Hashable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kerve import repository

from .errors import ErrorCode, ServingError, first_line, invalid, not_found, unavailable
from .metrics import Metrics
from .model_config import ModelConfig, ModelConfigError, VersionPolicy, load_model_config
from .stats import VersionStats

log = logging.getLogger("kerve.server.manager")

POLL = "poll"
EXPLICIT = "explicit"
MODEL_CONTROL_MODES = (POLL, EXPLICIT)
DRAIN_TIMEOUT_S = 120.0  # in-flight requests of an unloading version: longer than any sane request deadline


class VersionState(enum.Enum):
    LOADING = "LOADING"
    READY = "READY"
    UNLOADING = "UNLOADING"
    UNLOADED = "UNLOADED"
    FAILED = "FAILED"


STATES = [s.value for s in VersionState]
_LIVE = (VersionState.LOADING, VersionState.READY, VersionState.UNLOADING)


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
    batchers: dict[str, Any] = field(default_factory=dict)  # signature key -> Batcher, owned by the engine
    config: ModelConfig = field(default_factory=ModelConfig)  # the model's config when this version loaded
    fingerprint: tuple[int, ...] = ()  # of the files on disk when it loaded: a FAILED version retries on change
    warmup_requests: int = 0
    class_labels: repository.ClassLabels | None = None  # class names by output, for classification answers
    inflight: int = 0
    # False for a copy loading beside the serving one (a new placement), and for that one once replaced: the
    # version's state in metrics is the serving copy's
    published: bool = True
    failed_placement: Hashable = None  # a re-placement that failed: not retried unchanged
    # a copy replaced by one of the same files (a new placement): its unload leaves the response cache, which the
    # serving copy shares, and counts as no reload event (the version never stopped serving)
    replaced: bool = False
    _drained: asyncio.Event | None = field(default=None, repr=False)

    @property
    def pending(self) -> int:
        """Requests waiting in this copy's batchers for a batch (Triton's pending count): readable from another
        thread, as the batchers' dict is copied by one C call. Requests that run alone (no batcher) wait in the
        engine's thread pool instead and are not counted."""
        return sum(batcher.queued_requests for batcher in tuple(self.batchers.values()))


@dataclass
class IndexRow:
    """One line of the repository index: a version, or the model itself (version "") when it has a problem."""

    model: str
    version: str
    state: str
    reason: str = ""


@dataclass
class _Model:
    name: str
    versions: dict[int, ModelVersion] = field(default_factory=dict)
    config: ModelConfig = field(default_factory=ModelConfig)  # last valid config
    config_error: str = ""
    wanted: bool = True  # explicit control: loaded by request (poll mode: always)
    overrides: dict[str, Any] = field(default_factory=dict)  # config keys given by HandleReloadConfigRequest
    lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)
    # the versions the policy chose at the last sync: a request naming no version goes to the newest ready one
    # of them, not to a version loaded only for a label (a canary)
    policy: frozenset[int] = frozenset()
    held: dict[str, int] = field(default_factory=dict)  # label -> the target it was not moved to (logged once)
    gone: dict[int, str] = field(default_factory=dict)  # version -> why it failed ("" if it did not): deleted since


Loader = Callable[[Path, ModelConfig], Any]  # (version dir, its model's config) -> servable
Warmup = Callable[[str, Path, Any], int]  # (model, version dir, servable) -> requests replayed


def _placement(config: ModelConfig) -> Hashable:
    """What decides where a version's replicas go when it loads, for a loader that cannot say more."""
    return config.device_mode, config.replicas


def _fingerprint(path: Path) -> tuple[int, ...]:
    """What a version's files are now: every file's name, size, mtime and inode under its directory, so a
    FAILED version is retried after any fix (a warmup file replaced, a variables shard copied in place, an asset),
    not only a new saved_model.pb. A SavedModel is a handful of files: cheap at every poll."""
    found: list[int] = []
    try:
        for root, dirs, files in os.walk(path, onerror=_raise):
            dirs.sort()
            for name in sorted(files):
                stat = os.stat(os.path.join(root, name))
                found += (hash(os.path.relpath(os.path.join(root, name), path)), stat.st_size, stat.st_mtime_ns,
                          stat.st_ino)  # fmt: skip
    except OSError:
        return ()
    return tuple(found)


def _raise(error: OSError) -> None:
    raise error


def _close(servable: Any) -> object:
    """Release what a servable holds, if it has a close(); returns what close() returned (maybe awaitable)."""
    close = getattr(servable, "close", None)
    return close() if callable(close) else None


def _load_failure(exc: BaseException) -> str:
    text = first_line(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class ModelManager:
    def __init__(
        self,
        repository_path: str | Path,
        loader: Loader,
        executor: Executor,
        metrics: Metrics,
        *,
        warmup: Warmup | None = None,
        control: str = POLL,
        drain_timeout_s: float = DRAIN_TIMEOUT_S,
        after_change: Callable[[], object] | None = None,
    ) -> None:
        if control not in MODEL_CONTROL_MODES:
            raise ValueError(f"model control must be one of {MODEL_CONTROL_MODES}, got {control!r}")
        self.repository = Path(repository_path)
        self.control = control
        self._loader = loader
        # what decides where a version goes: the loader's own view when it has one (model.ReplicaLoader)
        self._placement: Callable[[ModelConfig], Hashable] = getattr(loader, "placement", _placement)
        self._warmup = warmup
        self._executor = executor
        self._metrics = metrics
        self._drain_timeout_s = drain_timeout_s
        self._after_change = after_change  # run once the versions loaded or unloaded by a sync have settled
        self._changes = 0  # loads attempted and versions unloaded, ever
        self._models: dict[str, _Model] = {}
        self._poller: asyncio.Task[None] | None = None
        self._requested: set[asyncio.Task[None]] = set()  # changes asked for by RPCs, running to their end
        self.initial_load_done = False
        self.forget: Callable[[ModelVersion], None] | None = None
        self.check_config: Callable[[ModelConfig], None] | None = None
        """Raises ServingError for a config.yaml this server cannot serve as it is set (its `batching:` does not
        combine with the server's batching flags): the model keeps its last good config, as for an invalid file."""
        """Told when what the engine keeps for a version is stale (its cached responses): the version (copy)
        finished unloading, or its config.yaml turned the response cache off."""
        self.has_response_cache = True
        """False when the server runs without a response cache: a version whose config.yaml asks for one is
        served uncached, and the log says so (as Triton serves it; its log is silent)."""

    # --- lifecycle entry points ---------------------------------------------------------------------------

    async def load_all(self, only: Sequence[str] | None = None) -> None:
        """Load every model in the repository (both control modes), or with `only` (explicit control's
        --load-model, as Triton's) just those, the rest left for RepositoryModelLoad; failures are recorded, not
        raised. A name in `only` that the repository lacks raises FileNotFoundError: the server must not start."""
        if not self.repository.is_dir():
            raise FileNotFoundError(f"model repository {self.repository} does not exist")
        names = repository.list_models(self.repository)
        if only is not None:
            self.require_explicit("loading only some models at start")
            wanted = set(only)
            missing = sorted(wanted - set(names))
            if missing:
                raise FileNotFoundError(f"--load-model {', '.join(missing)}: not in model repository {self.repository}")
            names = [name for name in names if name in wanted]
        await self._sync_many(names)
        self.initial_load_done = True

    async def poll(self, skip_busy: bool = False) -> None:
        """Apply the repository as it is now: new models and versions, removed ones, config changes.

        Explicit control ignores polls: only the repository RPCs change what is served. `skip_busy` (the
        poller's): leave out models whose last change is still running (a version draining a long request), to
        the next poll after it ends."""
        if self.control != POLL:
            return
        if not self.repository.is_dir():  # an unmounted volume must not unload everything
            log.error("model repository %s is missing; keeping the loaded models", self.repository)
            return
        names = sorted(set(repository.list_models(self.repository)) | set(self._models))
        if skip_busy:
            names = [name for name in names if name not in self._models or not self._models[name].lock.locked()]
        await self._sync_many(names)

    def start_polling(self, interval_s: float) -> None:
        """Poll the repository every interval_s seconds (poll control only; 0 disables)."""
        if self.control != POLL or interval_s <= 0 or self._poller is not None:
            return

        async def run() -> None:
            # Each poll runs on its own, not awaited here: one version draining a long request (up to the drain
            # timeout) must not hold up new versions of every other model; busy models sit the polls out.
            polls: set[asyncio.Task[None]] = set()
            try:
                while True:
                    await asyncio.sleep(interval_s)
                    task = asyncio.ensure_future(self.poll(skip_busy=True))
                    polls.add(task)
                    task.add_done_callback(polls.discard)
                    task.add_done_callback(_log_poll_failure)
            finally:
                for task in polls:
                    task.cancel()
                await asyncio.gather(*polls, return_exceptions=True)

        self._poller = asyncio.get_running_loop().create_task(run(), name="kerve-repository-poll")

    async def close(self, timeout_s: float | None = None) -> None:
        """Stop polling; let changes an RPC asked for settle rather than stop one halfway, for up to `timeout_s`
        (None: however long they take): a server draining on SIGTERM must not outlast its grace period."""
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None
        if self._requested:
            _, pending = await asyncio.wait(set(self._requested), timeout=timeout_s)
            if pending:
                log.warning("%d model loads or unloads still running after %gs; stopping without them",
                            len(pending), timeout_s)  # fmt: skip

    def require_explicit(self, what: str) -> None:
        if self.control != EXPLICIT:
            raise ServingError(
                ErrorCode.FAILED_PRECONDITION,
                f"{what} needs explicit model control (kerve serve --model-control explicit); "
                f"this server polls its repository",
            )

    def _checked_name(self, name: str) -> str:
        try:
            repository.validate_model_name(name)
        except repository.RepositoryError as exc:
            raise invalid(str(exc)) from None
        return name

    def _require_on_disk(self, name: str) -> None:
        if not (self.repository / name).is_dir():
            raise not_found(f"model {name!r} is not in the model repository")

    async def load_model(self, name: str, overrides: Mapping[str, Any] | None = None) -> None:
        """Explicit control: (re)load a model from disk with its current config and versions."""
        await self.apply_models({name: dict(overrides or {})}, exclusive=False)

    def check_unload(self, name: str) -> None:
        """Refuse an unload that cannot be (ServingError), before anything changes."""
        self.require_explicit("unloading a model")
        self._checked_name(name)
        if name not in self._models:
            self._require_on_disk(name)

    async def unload_model(self, name: str) -> None:
        """Explicit control: unload every version of a model (after in-flight requests drain)."""
        self.check_unload(name)
        record = self._models.setdefault(name, _Model(name))
        record.wanted = False
        record.overrides = {}
        await self._to_the_end(self._sync_many([name]))  # through _sync_many: an unload is a change (after_change)

    async def apply_models(self, models: Mapping[str, Mapping[str, Any]], exclusive: bool = True) -> None:
        """Explicit control: load these models (name -> config overrides); with exclusive, unload all others.

        Everything is validated before anything changes. Raises FAILED_PRECONDITION naming the models that
        ended up with no ready version.
        """
        self.check_models(models)
        for name, overrides in models.items():
            record = self._models.setdefault(name, _Model(name))
            record.wanted, record.overrides = True, dict(overrides)
        others = [n for n, r in self._models.items() if n not in models and r.wanted] if exclusive else []
        for name in others:
            self._models[name].wanted, self._models[name].overrides = False, {}
        await self._to_the_end(self._sync_many([*models, *others]))
        failed = []
        for name in models:
            record = self._models.get(name)  # gone if its directory went while it synced
            error = record.config_error if record is not None else "it left the model repository"
            if error or not self.ready_versions(name):  # Triton fails a load with a broken config too
                reasons = [error] if error else []
                reasons += [f"version {e.version}: {e.reason}" for e in self.entries(name) if e.reason]
                failed.append(f"{name!r} ({'; '.join(reasons) or 'no servable version'})")
        if failed:
            raise ServingError(ErrorCode.FAILED_PRECONDITION, f"failed to load model {', '.join(failed)}")

    def check_models(self, models: Mapping[str, Mapping[str, Any]]) -> None:
        """Refuse a load that cannot be (ServingError), before anything changes: a name that is not a model's, a
        model not on disk, overrides that make its config invalid (a config.yaml broken on its own loads, and
        fails, as Triton's)."""
        self.require_explicit("loading models")
        for name, overrides in models.items():
            self._checked_name(name)
            self._require_on_disk(name)
            try:
                self._read_config(self.repository / name, overrides)
            except ModelConfigError as exc:
                if overrides:
                    raise invalid(f"model {name!r}: {exc}") from None

    async def _to_the_end(self, change: Coroutine[Any, Any, None]) -> None:
        """Run a change an RPC asked for to its end, even if the RPC goes away (its deadline passes, the client
        cancels): cut off midway, a version would stay LOADING or UNLOADING for good, its servable never closed.
        The caller still waits for it, and hears its error."""
        task = asyncio.ensure_future(change)
        self._requested.add(task)
        task.add_done_callback(self._requested.discard)
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(_log_orphaned_failure)
            raise

    # --- the one place versions change --------------------------------------------------------------------

    async def _sync_many(self, names: list[str]) -> None:
        """Sync these models; then, if any version was loaded (or failed to) or unloaded, run ``after_change``
        once for all of them (the server's heap.settle: one full garbage collection per model change)."""
        changes = self._changes
        try:
            await asyncio.gather(*(self._sync(name) for name in names))
        finally:
            if self._changes != changes and self._after_change is not None:
                self._after_change()

    def _scan(self, record: _Model) -> tuple[ModelConfig | None, str, dict[int, tuple[int, ...]]]:
        """Read config.yaml and the servable versions on disk (in a thread: the disk may be remote)."""
        model_dir = self.repository / record.name
        versions = {
            v: _fingerprint(repository.version_dir(self.repository, record.name, v))
            for v in repository.list_versions(self.repository, record.name)
        }
        try:
            return self._read_config(model_dir, record.overrides), "", versions
        except ModelConfigError as exc:
            return None, str(exc), versions

    def _read_config(self, model_dir: Path, overrides: Mapping[str, Any] | None) -> ModelConfig:
        config = load_model_config(model_dir, overrides)
        if self.check_config is not None:
            try:
                self.check_config(config)
            except ServingError as exc:
                raise ModelConfigError(f"{model_dir.name}/{repository.CONFIG_FILE}: {exc.message}") from None
        return config

    async def _sync(self, name: str) -> None:
        record = self._models.setdefault(name, _Model(name))
        async with record.lock:
            try:
                config, error, on_disk = await asyncio.to_thread(self._scan, record)
            except OSError as exc:  # an unreadable model directory fails that model alone, keeping what it serves
                if record.wanted:
                    self._set_model_error(record, f"{name}: cannot read the model's directory: {exc}")
                    return
                config, error, on_disk = None, "", {}  # being unloaded: nothing to read, everything goes
            if record.wanted and config is None:
                self._set_model_error(record, error)
                return  # keep serving what is loaded, with the last good config
            self._set_model_error(record, "")
            aspired: set[int] = set()
            if record.wanted and config is not None:
                policy: set[int] = set()
                for _ in range(len(on_disk) + 1):  # each round settles at least one version: bounded
                    failed = {
                        v
                        for v, e in record.versions.items()
                        if e.state is VersionState.FAILED and v in on_disk and e.fingerprint == on_disk[v]
                    }
                    candidates = {v for v in on_disk if v not in failed}
                    policy = config.version_policy.select(candidates)
                    aspired = config.aspired(candidates)
                    to_load = sorted(v for v in aspired if self._needs_load(record, v))
                    if not to_load:
                        break
                    await asyncio.gather(*(self._load(record, v, config, on_disk[v]) for v in to_load))
                labels = self._settled_labels(record, config, on_disk.keys())
                if labels != config.labels:
                    config = dataclasses.replace(config, labels=labels)
                    aspired |= set(labels.values()) & on_disk.keys()
                record.config = config  # labels move now, together with the versions they may point to
                record.policy = frozenset(policy)
                await self._replace(record, config, on_disk, aspired)
                await self._rebatch(record, config)
                self._recache(record, config)
            leaving = [e for v, e in record.versions.items() if e.state is VersionState.READY and v not in aspired]
            await self._unload(leaving)
            for v in [v for v, e in record.versions.items() if v not in on_disk and e.state not in _LIVE]:
                left = record.versions.pop(v)
                self._forget(left)
                record.gone[v] = left.reason if left.state is VersionState.FAILED else ""
            for v in record.gone.keys() & record.versions.keys():  # published again
                del record.gone[v]
            if not record.versions and not (self.repository / name).is_dir() and self._models.get(name) is record:
                self._set_model_error(record, "")
                del self._models[name]
                self._metrics.forget_model(name)

    def _settled_labels(self, record: _Model, config: ModelConfig, on_disk: Collection[int]) -> dict[str, int]:
        """config.yaml's labels, except that a label whose new version did not come up (failed, not on disk)
        stays on the version it names now while that one serves: as TF Serving, which refuses to point a label
        at a version that is not available, requests by label never fail for a move that could not happen."""
        labels = dict(config.labels)
        for name, target in config.labels.items():
            now = record.config.labels.get(name)
            current = record.versions.get(now) if now is not None else None
            wanted = record.versions.get(target)
            if now == target or (wanted is not None and wanted.state is VersionState.READY):
                record.held.pop(name, None)
                continue
            if current is None or current.state is not VersionState.READY or now not in on_disk:  # going too
                continue
            labels[name] = now
            if record.held.get(name) != target:
                record.held[name] = target
                why = wanted.reason if wanted is not None and wanted.reason else "it is not in the repository"
                log.error("model %s: label %r stays on version %d: version %d cannot serve (%s)",
                          record.name, name, now, target, why)  # fmt: skip
        return labels

    async def _replace(
        self, record: _Model, config: ModelConfig, on_disk: Mapping[int, tuple[int, ...]], staying: set[int]
    ) -> None:
        """A changed `replicas` or `device_mode` applies to loaded versions as a hot reload does: a copy with the
        new placement loads and warms beside the serving one (both in memory for that time), takes the new
        requests once READY, and the old copy finishes its in-flight requests and unloads, so none fails. If the
        new copy cannot load, the old one keeps serving; that placement is not tried again until it changes. Only
        versions `staying` (the policy keeps them) are re-placed: the others are about to unload."""
        target = self._placement(config)
        for version, old in list(record.versions.items()):
            if old.state is not VersionState.READY or version not in staying:
                continue
            if target == self._placement(old.config):
                old.failed_placement = None  # config.yaml went back: a later move to that placement is new again
                continue
            if target == old.failed_placement:
                continue
            log.info("%s version %d: re-placing %s -> %s",
                     record.name, version, self._placement(old.config), target)  # fmt: skip
            fingerprint = on_disk.get(version, old.fingerprint)
            new = ModelVersion(record.name, version, old.path, config=config, fingerprint=fingerprint, published=False)
            await self._bring_up(new)
            if new.state is not VersionState.READY:
                old.failed_placement = target
                log.error("%s version %d keeps its placement: the re-placed copy failed: %s",
                          record.name, version, new.reason)  # fmt: skip
                continue
            new.stats = old.stats  # the same version to its clients: its statistics go on
            new.published, old.published = True, False
            old.replaced = new.fingerprint == old.fingerprint
            record.versions[version] = new
            self._set_state(new, VersionState.READY)
            self._metrics.load_seconds.labels(record.name, str(version)).set(new.load_seconds)
            await self._unload([old])

    async def _rebatch(self, record: _Model, config: ModelConfig) -> None:
        """A changed `batching:` applies to loaded versions at once, without reloading them: batching is the
        engine's, not the model's. Their batchers finish what they hold; the next request makes new ones."""
        for entry in record.versions.values():
            if entry.state is not VersionState.READY or entry.config.batching == config.batching:
                continue
            entry.config = dataclasses.replace(entry.config, batching=config.batching)
            batchers = list(entry.batchers.values())
            entry.batchers.clear()
            shown = dict(config.batching) or "the server's"
            log.info("%s version %d: batching now %s", entry.model, entry.version, shown)
            for batcher in batchers:
                await batcher.close(drain=True)

    def _recache(self, record: _Model, config: ModelConfig) -> None:
        """A changed `response_cache:` applies to loaded versions at once, as `batching:` does; turned off, their
        cached responses go."""
        for entry in record.versions.values():
            if entry.state is not VersionState.READY or entry.config.response_cache == config.response_cache:
                continue
            entry.config = dataclasses.replace(entry.config, response_cache=config.response_cache)
            log.info("%s version %d: response cache %s", entry.model, entry.version,
                     "on" if config.response_cache else "off")  # fmt: skip
            self._warn_if_uncached(entry)
            if not config.response_cache:
                self._stale(entry)

    def _warn_if_uncached(self, entry: ModelVersion) -> None:
        if entry.config.response_cache and not self.has_response_cache:
            log.warning("%s version %d: config.yaml sets response_cache: true, but the server has no response "
                        "cache (--response-cache-mb 0): its responses are not cached",
                        entry.model, entry.version)  # fmt: skip

    @staticmethod
    def _needs_load(record: _Model, version: int) -> bool:
        entry = record.versions.get(version)
        return entry is None or entry.state in (VersionState.UNLOADED, VersionState.FAILED)

    def _load_and_warm(self, model: str, path: Path, config: ModelConfig) -> tuple[Any, int, tuple[str, ...] | None]:
        servable = self._loader(path, config)
        try:
            warmed = self._warmup(model, path, servable) if self._warmup is not None else 0
        except BaseException:
            _close(servable)  # a version that fails warm-up gives back its devices (servables close synchronously)
            raise
        try:
            labels = repository.class_labels(path)
        except repository.RepositoryError as exc:  # labels are a nicety: the version still serves without them
            log.warning("%s: serving without class labels: %s", path, exc)
            labels = None
        return servable, warmed, labels

    async def _load(self, record: _Model, version: int, config: ModelConfig, fingerprint: tuple[int, ...]) -> None:
        path = repository.version_dir(self.repository, record.name, version)
        entry = ModelVersion(record.name, version, path, config=config, fingerprint=fingerprint)
        record.versions[version] = entry
        await self._bring_up(entry)

    async def _bring_up(self, entry: ModelVersion) -> None:
        """Load and warm ``entry`` in a worker thread: READY, or FAILED with the reason."""
        self._set_state(entry, VersionState.LOADING)
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        try:
            entry.servable, entry.warmup_requests, entry.class_labels = await loop.run_in_executor(
                self._executor, self._load_and_warm, entry.model, entry.path, entry.config
            )
        except Exception as exc:  # a broken version must never take the server down
            entry.reason = _load_failure(exc)
            self._set_state(entry, VersionState.FAILED)
            self._metrics.reloads.labels(entry.model, "load_failed").inc()
            log.error("failed to load %s version %d from %s: %s", entry.model, entry.version, entry.path, entry.reason)
        else:
            self._set_state(entry, VersionState.READY)
            if entry.published:  # a copy loading beside the serving one (a new placement) is no reload
                self._metrics.reloads.labels(entry.model, "loaded").inc()
            warmed = f", {entry.warmup_requests} warmup requests" if entry.warmup_requests else ""
            log.info("loaded %s version %d in %.2fs%s", entry.model, entry.version, time.monotonic() - started, warmed)
            self._warn_if_uncached(entry)
        self._changes += 1
        entry.load_seconds = time.monotonic() - started
        if entry.published:
            self._metrics.load_seconds.labels(entry.model, str(entry.version)).set(entry.load_seconds)

    async def _unload(self, entries: list[ModelVersion]) -> None:
        for entry in entries:  # all stop taking requests at once, before any waiting
            self._set_state(entry, VersionState.UNLOADING)
        await asyncio.gather(*(self._drain_and_unload(e) for e in entries))

    async def _drain_and_unload(self, entry: ModelVersion) -> None:
        if entry.inflight:
            entry._drained = asyncio.Event()
            log.info("unloading %s version %d: %d requests in flight", entry.model, entry.version, entry.inflight)
            try:
                await asyncio.wait_for(entry._drained.wait(), self._drain_timeout_s)
            except asyncio.TimeoutError:
                log.warning("%s version %d: requests still in flight after %.0fs; unloading anyway",
                            entry.model, entry.version, self._drain_timeout_s)  # fmt: skip
        for batcher in list(entry.batchers.values()):
            await batcher.close(drain=True)
        entry.batchers.clear()
        result = _close(entry.servable)
        if inspect.isawaitable(result):
            await result
        entry.servable = None
        self._changes += 1
        self._set_state(entry, VersionState.UNLOADED)
        if entry.replaced:
            log.info("unloaded the replaced copy of %s version %d", entry.model, entry.version)
            return
        self._metrics.reloads.labels(entry.model, "unloaded").inc()
        log.info("unloaded %s version %d", entry.model, entry.version)
        self._stale(entry)

    def _stale(self, entry: ModelVersion) -> None:
        """Tell the engine (the `forget` hook) that what it keeps for `entry` is stale."""
        if self.forget is not None:
            try:
                self.forget(entry)
            except Exception:
                log.exception("the forget hook failed for %s version %d", entry.model, entry.version)

    def _set_state(self, entry: ModelVersion, state: VersionState) -> None:
        entry.state = state
        if entry.published:
            self._metrics.set_state(entry.model, entry.version, state.value, STATES)

    def _forget(self, entry: ModelVersion) -> None:
        self._metrics.clear_state(entry.model, entry.version, STATES)

    def _set_model_error(self, record: _Model, error: str) -> None:
        if error == record.config_error:
            return
        if error:
            log.error("model %s: %s", record.name, error)
            self._metrics.set_state(record.name, "", VersionState.FAILED.value, STATES)
        else:
            self._metrics.clear_state(record.name, "", STATES)
        record.config_error = error

    # --- requests -----------------------------------------------------------------------------------------

    def models(self) -> list[str]:
        return sorted(self._models)

    def knows(self, model: str) -> bool:
        return model in self._models

    def labels(self, model: str) -> Mapping[str, int]:
        record = self._models.get(model)
        return dict(record.config.labels) if record is not None else {}

    def version_policy(self, model: str) -> VersionPolicy | None:
        """The policy the model's versions are chosen by now: a load that changed only the policy keeps the
        versions it still selects loaded with their old config, which must not be what a client reads back."""
        record = self._models.get(model)
        return record.config.version_policy if record is not None else None

    def snapshot(self) -> list[ModelVersion]:
        """The versions being served (READY, or UNLOADING while they drain), safe to read from another thread (a
        metrics scrape): each dict is copied by one C call, which the event loop thread cannot interleave with."""
        serving = (VersionState.READY, VersionState.UNLOADING)
        return [
            entry
            for record in tuple(self._models.values())
            for entry in tuple(record.versions.values())
            if entry.state in serving
        ]

    def entries(self, model: str | None = None) -> list[ModelVersion]:
        names = [model] if model is not None else sorted(self._models)
        return [
            self._models[n].versions[v] for n in names if n in self._models for v in sorted(self._models[n].versions)
        ]

    def gone_versions(self, model: str) -> dict[int, str]:
        """Versions of `model` deleted from the repository since they were served or failed, with the failure's
        reason ("" for one that had served): TF Serving's GetModelStatus keeps reporting them (END), as its servable
        state monitor never forgets one."""
        record = self._models.get(model)
        return dict(record.gone) if record is not None else {}

    def index(self) -> list[IndexRow]:
        """Every version the manager knows, plus a row per model that is failed or not loaded as a whole."""
        rows = []
        for name in sorted(set(self._models) | set(repository.list_models(self.repository))):
            record = self._models.get(name)
            if record is None or not (record.wanted or any(e.state in _LIVE for e in record.versions.values())):
                rows.append(IndexRow(name, "", VersionState.UNLOADED.value, "not loaded"))
            elif record.config_error:
                rows.append(IndexRow(name, "", VersionState.FAILED.value, record.config_error))
            for entry in self.entries(name):
                rows.append(IndexRow(name, str(entry.version), entry.state.value, entry.reason))
        return rows

    def ready_versions(self, model: str) -> list[int]:
        record = self._models.get(model)
        if record is None:
            return []
        return sorted(v for v, e in record.versions.items() if e.state is VersionState.READY)

    def resolve(self, model: str, version: int | None = None, label: str | None = None) -> ModelVersion:
        """The ready version to serve, raising NOT_FOUND/UNAVAILABLE with a message the caller can act on."""
        record = self._models.get(model)
        if record is None and not self.initial_load_done:  # the model may be about to appear: retry, not 404
            raise unavailable(f"server is starting: model {model!r} is not loaded yet")
        if record is None:
            known = ", ".join(self.models()) or "none"
            raise not_found(f"model {model!r} not found; models served: {known}")
        versions = record.versions
        if label is not None:
            if version is not None:
                raise invalid(f"request for model {model!r} names both version {version} and label {label!r}")
            if label not in record.config.labels:
                raise not_found(f"model {model!r} has no label {label!r}; labels: {sorted(record.config.labels)}")
            version = record.config.labels[label]
        if version is None:
            ready = self.ready_versions(model)
            if ready:
                chosen = [v for v in ready if v in record.policy]  # not a version loaded for a label only
                return versions[(chosen or ready)[-1]]
            if any(e.state is VersionState.LOADING for e in versions.values()):
                raise unavailable(f"model {model!r} is loading")
            if not record.wanted:
                raise not_found(f"model {model!r} is not loaded")
            reasons = [record.config_error] if record.config_error else []
            reasons += [f"version {v}: {e.reason}" for v, e in sorted(versions.items()) if e.reason]
            raise unavailable(f"model {model!r} has no ready version" + (f" ({'; '.join(reasons)})" if reasons else ""))
        entry = versions.get(version)
        if entry is None:
            raise not_found(f"model {model!r} has no version {version}; versions: {self.ready_versions(model)}")
        if entry.state is VersionState.UNLOADED:
            raise not_found(f"model {model!r} version {version} is not loaded; versions: {self.ready_versions(model)}")
        if entry.state is VersionState.READY:
            return entry
        if entry.state is VersionState.LOADING:
            raise unavailable(f"model {model!r} version {version} is loading")
        raise ServingError(
            ErrorCode.UNAVAILABLE,
            f"model {model!r} version {version} is {entry.state.value.lower()}"
            + (f": {entry.reason}" if entry.reason else ""),
        )

    def acquire(self, model: str, version: int | None = None, label: str | None = None) -> ModelVersion:
        """resolve(), counting the request in flight on that version until release(): unloading waits for it."""
        entry = self.resolve(model, version, label)
        entry.inflight += 1
        return entry

    def release(self, entry: ModelVersion) -> None:
        entry.inflight -= 1
        if entry.inflight == 0 and entry._drained is not None:
            entry._drained.set()


def _log_poll_failure(task: asyncio.Task[None]) -> None:
    """The poller must survive anything the filesystem throws at it: a failed poll is logged, the next one runs."""
    if not task.cancelled() and task.exception() is not None:
        log.error("repository poll failed", exc_info=task.exception())


def _log_orphaned_failure(task: asyncio.Task[None]) -> None:
    """A change whose RPC went away has nobody to tell of its error but the log."""
    if not task.cancelled() and task.exception() is not None:
        log.error("a model change asked for by a cancelled RPC failed", exc_info=task.exception())


def parse_version(model: str, text: str) -> int | None:
    """Wire version strings: '' means the policy's choice, otherwise a positive integer."""
    if text == "":
        return None
    # ASCII digits only, at most 18 of them (an int64, as Triton's version numbers): str.isdigit also takes "²",
    # which int() refuses, and a string of thousands of digits int() refuses too, each an UNKNOWN status
    if _VERSION.fullmatch(text) is None or int(text) < 1:
        shown = text if len(text) <= 40 else f"{text[:40]}... ({len(text)} characters)"
        raise not_found(f"model {model!r} has no version {shown!r}: versions are positive integers")
    return int(text)


_VERSION = re.compile(r"[0-9]{1,18}")
