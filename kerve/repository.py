"""The model repository layout: the only contract shared by training (writer) and server (reader).

    <repo>/<model>/config.yaml        optional per-model settings
    <repo>/<model>/<version>/         a SavedModel (integer version >= 1) with kerve.json beside saved_model.pb
    <repo>/<model>/<version>/labels.txt   optional class names, one per line (line i names class i)
    <repo>/<model>/<version>/<output>.labels.txt   the same for one output of a model with several
    <repo>/<model>/.tmp-*/            a publish in progress; readers ignore every dot-directory

Publishing writes into a dot-directory and renames it into place, so a reader sees a version either whole or
not at all, and a publisher killed half-way leaves only a dot-directory behind. The rename is also a
compare-and-swap: a publisher gated against version N publishes only while N is still the latest servable
version (`publish(expected_latest=N)`), so no candidate lands above a version it was never compared with.
No TensorFlow here.
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SAVED_MODEL_FILE = "saved_model.pb"
METADATA_FILE = "kerve.json"
CONFIG_FILE = "config.yaml"
WARMUP_DIR = "assets.extra"
WARMUP_FILE = "tf_serving_warmup_requests"
LABELS_FILE = "labels.txt"
LABELS_SUFFIX = ".labels.txt"
TMP_PREFIX = ".tmp-"

_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class RepositoryError(Exception):
    """A repository path, name or metadata file is invalid."""


class LatestChangedError(RepositoryError):
    """Another version became the latest while this publish was gated against an older one; nothing published."""

    def __init__(self, model: str, expected: int | None, latest: int | None) -> None:
        was = f"version {expected}" if expected is not None else "no version"
        super().__init__(
            f"model {model!r}: the latest version is now {latest}, not the {was} this candidate was compared with"
        )
        self.expected = expected
        self.latest = latest


class Unchecked(enum.Enum):
    """The type of UNCHECKED (a typed sentinel)."""

    UNCHECKED = "unchecked"


UNCHECKED = Unchecked.UNCHECKED  # publish(expected_latest=UNCHECKED): whatever the latest version is


def validate_model_name(name: str) -> str:
    """Return name if it is safe to use as one path component, else raise RepositoryError.

    Names come from the network (explicit load RPCs) and from the command line, so path traversal
    ("..", "/", absolute paths) must be impossible by construction.
    """
    if not isinstance(name, str) or not _MODEL_NAME.match(name) or name in {".", ".."} or ".." in name:
        raise RepositoryError(
            f"invalid model name {name!r}: use 1-128 characters from [A-Za-z0-9_.-], starting with a letter or digit"
        )
    return name


def model_dir(repo: str | os.PathLike[str], model: str) -> Path:
    return Path(repo) / validate_model_name(model)


def version_dir(repo: str | os.PathLike[str], model: str, version: int) -> Path:
    if version < 1:
        raise RepositoryError(f"version must be >= 1, got {version}")
    return model_dir(repo, model) / str(version)


def is_version_dir(path: Path) -> bool:
    """A version is a directory named by a positive integer; dot-directories are in-progress publishes."""
    name = path.name
    return name.isascii() and name.isdigit() and int(name) >= 1 and path.is_dir()  # "²".isdigit() too: ascii


def list_models(repo: str | os.PathLike[str]) -> list[str]:
    """Model names present in the repository (directories with a valid name), sorted."""
    root = Path(repo)
    if not root.is_dir():
        return []
    names = []
    for entry in root.iterdir():
        if entry.is_dir() and not entry.name.startswith(".") and _MODEL_NAME.match(entry.name):
            names.append(entry.name)
    return sorted(names)


def list_version_dirs(repo: str | os.PathLike[str], model: str) -> list[int]:
    """Every integer version directory of a model, complete or not, ascending."""
    root = model_dir(repo, model)
    if not root.is_dir():
        return []
    return sorted(int(p.name) for p in root.iterdir() if is_version_dir(p))


def list_versions(repo: str | os.PathLike[str], model: str) -> list[int]:
    """Servable versions: integer directories that contain a saved_model.pb, ascending."""
    return [v for v in list_version_dirs(repo, model) if (version_dir(repo, model, v) / SAVED_MODEL_FILE).is_file()]


def latest_version(repo: str | os.PathLike[str], model: str) -> int | None:
    versions = list_versions(repo, model)
    return versions[-1] if versions else None


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """kerve.json of a version directory, or {} when the version has none."""
    meta = Path(path) / METADATA_FILE
    if not meta.is_file():
        return {}
    try:
        data = json.loads(meta.read_text())
    except (OSError, ValueError) as exc:
        raise RepositoryError(f"{meta}: unreadable metadata: {exc}") from exc
    if not isinstance(data, dict):
        raise RepositoryError(f"{meta}: metadata must be a JSON object")
    return data


@dataclass(frozen=True)
class ClassLabels:
    """A version's class names, index i -> name i, by output: Triton names a label file per output
    (`label_filename`), and a model with several outputs (two heads, say) has different classes on each."""

    by_output: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # from <output>.labels.txt
    single: tuple[str, ...] | None = None  # labels.txt or kerve.json: the classes of a signature with one output
    single_file: str = ""  # LABELS_FILE when `single` came from it
    _resolved: dict[tuple[str, ...], dict[str, tuple[str, ...]]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def for_outputs(self, outputs: Collection[str]) -> Mapping[str, tuple[str, ...]]:
        """Class names by output for a signature with these outputs: each output's own file, else the single
        list when the signature has one output. Cached per signature: requests read it on the serving path."""
        key = tuple(outputs)
        resolved = self._resolved.get(key)
        if resolved is None:
            resolved = {name: self.by_output[name] for name in key if name in self.by_output}
            if len(key) == 1 and not resolved and self.single is not None:
                resolved = {key[0]: self.single}
            self._resolved[key] = resolved
        return resolved

    def file_of(self, output: str, outputs: Collection[str]) -> str:
        """The label file naming `output`'s classes (Triton's `label_filename`), "" when no file does."""
        if output in self.by_output:
            return output + LABELS_SUFFIX
        return self.single_file if len(outputs) == 1 and output in outputs else ""


def _read_labels(path: Path) -> tuple[str, ...]:
    try:
        return tuple(path.read_text(encoding="utf-8").splitlines())
    except (OSError, UnicodeDecodeError) as exc:
        raise RepositoryError(f"{path}: unreadable labels: {exc}") from exc


def class_labels(path: str | os.PathLike[str]) -> ClassLabels | None:
    """A classifier version's class names: `<output>.labels.txt` for one output, `labels.txt` (one name per line,
    like a Triton label file) for a signature with a single output, else the `dataset.class_names` kerve's
    training records in kerve.json for a classification task; None when none names any. Raises RepositoryError
    for an unreadable file."""
    root = Path(path)
    by_output = {}
    for file in sorted(root.glob("*" + LABELS_SUFFIX)):
        names = _read_labels(file) if file.is_file() and file.name != LABELS_SUFFIX else ()
        if names:
            by_output[file.name[: -len(LABELS_SUFFIX)]] = names
    labels = root / LABELS_FILE
    single: tuple[str, ...] | None = None
    single_file = ""
    if labels.is_file():
        single, single_file = _read_labels(labels) or None, LABELS_FILE
    else:
        meta = read_metadata(path)
        dataset = meta.get("dataset")
        classifier = meta.get("task") == "classification" and isinstance(dataset, dict)
        names = dataset.get("class_names") if classifier else None
        if isinstance(names, list) and names and all(isinstance(n, str) for n in names):
            single = tuple(names)
    if not by_output and single is None:
        return None
    return ClassLabels(by_output, single, single_file if single is not None else "")


def clean_stale_tmp(
    repo: str | os.PathLike[str], model: str, max_age_seconds: float, now: float | None = None
) -> list[Path]:
    """Remove `.tmp-*` directories of `model` not modified for `max_age_seconds`: publishes whose process died.

    Younger ones are left alone: they may belong to a publisher that is still writing. Readers ignore both.
    """
    root = model_dir(repo, model)
    if not root.is_dir():
        return []
    now = time.time() if now is None else now
    removed = []
    for entry in root.iterdir():
        if not entry.name.startswith(TMP_PREFIX) or not entry.is_dir():
            continue
        try:
            age = now - entry.stat().st_mtime
        except OSError:
            continue
        if age >= max_age_seconds:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return sorted(removed)


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as fh:
                os.fsync(fh.fileno())
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(
    repo: str | os.PathLike[str],
    model: str,
    write: Callable[[Path], None],
    metadata: dict[str, Any],
    version: int | None = None,
    expected_latest: int | None | Unchecked = UNCHECKED,
) -> int:
    """Atomically publish a new version of `model` and return its number.

    `write(tmp_dir)` must produce a SavedModel inside tmp_dir. kerve.json is added, everything is fsynced,
    and the directory is renamed to `<repo>/<model>/<version>`. With version=None the next free number is
    taken; if another publisher wins the race for it, the next one is tried.

    `expected_latest`: the latest servable version (None: no version) the candidate was gated against. If another
    version is the latest when the rename would happen, nothing is published and LatestChangedError says which
    (the caller gates again against that one). No lock is needed: the number is taken (the highest version
    directory + 1) before the check, so a version renamed into place after the check takes that same number,
    or a higher one because a directory of that number already existed; either way this rename finds the
    number taken, and the next attempt's check sees the new version.
    """
    try:
        json.dumps(metadata)
    except (TypeError, ValueError) as exc:  # fail before the expensive export, not after
        raise RepositoryError(f"metadata is not JSON-serializable: {exc}") from exc
    root = model_dir(repo, model)
    created_root = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f"{TMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
    published = False
    try:
        write(tmp)
        if not (tmp / SAVED_MODEL_FILE).is_file():
            raise RepositoryError(f"writer produced no {SAVED_MODEL_FILE} in {tmp}")
        for _attempt in range(100):
            number = version if version is not None else (max(list_version_dirs(repo, model), default=0) + 1)
            if expected_latest is not UNCHECKED:  # after taking the number: see the docstring
                latest = latest_version(repo, model)
                if latest != expected_latest:
                    raise LatestChangedError(model, expected_latest, latest)
            (tmp / METADATA_FILE).write_text(json.dumps({**metadata, "version": number}, indent=2, sort_keys=True))
            _fsync_tree(tmp)
            target = root / str(number)
            if target.exists():
                if version is not None:
                    raise RepositoryError(f"{target} already exists")
                continue
            try:
                os.rename(tmp, target)
            except OSError:
                if version is not None:
                    raise
                continue
            _fsync_dir(root)
            published = True
            return number
        raise RepositoryError(f"could not find a free version number under {root}")
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if created_root and not published:
            with contextlib.suppress(OSError):
                root.rmdir()  # only if still empty: never leave a model with no versions behind
