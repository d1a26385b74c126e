"""Data sources as plain numpy arrays: built-in digits, image folders, text folders, CSV and .npz.

TensorFlow is imported only inside the image-folder loader, so data handling is testable on its own. Every
source becomes the same `Dataset`: a train split (the tuner carves its validation split from it) and a test
split held out from tuning, which is the evaluation data of kerve.json and of the gate.
"""

from __future__ import annotations

import hashlib
import re
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


class DataError(ValueError):
    """The data is missing, empty, unreadable or inconsistent."""


@dataclass(frozen=True)
class Dataset:
    """A fixed train/test split. Images: float32 (n, h, w, c) in [0, 1]; text: int64 token ids (n, length)
    with 0 as padding and 1 as out-of-vocabulary; tabular: float32 (n, features). y: int64 class ids, or
    float32 targets for regression."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int = 10
    input_name: str = "image"
    class_names: tuple[str, ...] = tuple(str(i) for i in range(10))
    name: str = "digits"
    kind: str = "image"  # image | text | tabular
    task: str = "classification"  # classification | regression
    vocabulary: tuple[str, ...] = ()
    texts_test: tuple[str, ...] = ()  # text folders: the raw test texts, to tokenize with another vocabulary
    details: dict = field(default_factory=dict)
    # Images: {"scale": s, "image_size": [h, w], "color_mode": ...}: pixels * s at that size (kerve.json).
    preprocessing: dict = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


DigitsData = Dataset


def load_digits_split(seed: int = 0, test_fraction: float = 0.2) -> Dataset:
    """scikit-learn's 8x8 digits, split stratified so every class is in the test set for any seed.

    The test split is held out from tuning entirely: it is the evaluation data recorded in kerve.json.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    bunch = load_digits()
    # Pixel values are integers 0..16 in this dataset.
    x = (bunch.images.astype(np.float32) / 16.0)[..., np.newaxis]
    y = bunch.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=y)
    return Dataset(
        x_train=np.ascontiguousarray(x_train),
        y_train=np.ascontiguousarray(y_train),
        x_test=np.ascontiguousarray(x_test),
        y_test=np.ascontiguousarray(y_test),
        class_names=tuple(str(name) for name in bunch.target_names),
        preprocessing={"scale": 1 / 16, "image_size": [8, 8], "color_mode": "grayscale"},
    )


def validation_split(
    x: np.ndarray, y: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Stratified (x_fit, y_fit, x_val, y_val): the tuner scores trials on data it never fits on."""
    x_fit, x_val, y_fit, y_val = _split(x, y, fraction, seed, stratify=y.dtype.kind in "iu")
    return x_fit, y_fit, x_val, y_val


def _split(
    x: np.ndarray, y: np.ndarray, fraction: float, seed: int, stratify: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """train_test_split, stratified when every class has enough examples for it, else plain random."""
    from sklearn.model_selection import train_test_split

    if len(y) < 2:
        raise DataError(f"need at least 2 examples to split, got {len(y)}")
    if stratify:
        try:
            return tuple(train_test_split(x, y, test_size=fraction, random_state=seed, stratify=y))  # type: ignore[return-value]
        except ValueError:
            pass  # a class with a single example, or fewer test slots than classes
    return tuple(train_test_split(x, y, test_size=fraction, random_state=seed))  # type: ignore[return-value]


def fingerprint(arrays: Iterable[np.ndarray]) -> str:
    """sha256 over dtype, shape and bytes of each array, so kerve.json can tell which data a version saw.

    dtype and shape are hashed too: the same bytes reinterpreted (float32 vs int32, or reshaped) are
    different data.
    """
    digest = hashlib.sha256()
    for array in arrays:
        a = np.ascontiguousarray(array)
        digest.update(f"{a.dtype.str}{a.shape}".encode())
        digest.update(a.tobytes())
    return "sha256:" + digest.hexdigest()


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
_TOKEN = re.compile(r"[a-z0-9']+")
PAD, OOV = 0, 1


def load(config: Any, seed: int = 0) -> Dataset:
    """The dataset a `DataConfig` describes, split into train and test."""
    source = config.source
    if source == "digits":
        return load_digits_split(seed=seed, test_fraction=config.test_fraction)
    path = Path(config.path)
    if not path.exists():
        raise DataError(f"{source} data path {path} does not exist")
    if source == "image_folder":
        return load_image_folder(path, tuple(config.image_size), config.color_mode, config.test_fraction, seed)
    if source == "text_folder":
        return load_text_folder(path, config.max_tokens, config.sequence_length, config.test_fraction, seed)
    if source == "csv":
        return load_csv(path, config.label_column, config.task, config.test_fraction, seed)
    if source == "npz":
        return load_npz(path, config.task, config.test_fraction, seed)
    raise DataError(f"unknown data source {source!r}")


def _class_dirs(path: Path, suffixes: tuple[str, ...]) -> list[tuple[str, list[Path]]]:
    """(class name, files) for each subdirectory, sorted; at least two classes, none of them empty."""
    if not path.is_dir():
        raise DataError(f"{path} is not a directory with one subdirectory per class")
    classes = []
    for sub in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(f for f in sub.iterdir() if f.is_file() and f.suffix.lower() in suffixes)
        if not files:
            raise DataError(f"class directory {sub} has no {'/'.join(suffixes)} files")
        classes.append((sub.name, files))
    if len(classes) < 2:
        raise DataError(f"{path} must hold at least two class subdirectories, found {[c for c, _ in classes]}")
    return classes


def load_image_folder(
    path: Path, image_size: tuple[int, int], color_mode: str, test_fraction: float, seed: int
) -> Dataset:
    """<path>/<class>/<image>, read with keras.utils.image_dataset_from_directory, scaled to [0, 1]."""
    classes = _class_dirs(path, IMAGE_EXTENSIONS)
    import keras
    import tensorflow as tf

    try:
        ds = keras.utils.image_dataset_from_directory(
            str(path),
            labels="inferred",
            label_mode="int",
            class_names=[name for name, _ in classes],
            color_mode=color_mode,
            image_size=image_size,
            batch_size=None,
            shuffle=False,
            verbose=False,
        )
        xs, ys = [], []
        for image, label in ds.as_numpy_iterator():
            xs.append(image)
            ys.append(label)
    except (tf.errors.OpError, ValueError) as exc:
        raise DataError(f"cannot read images under {path}: {exc}") from exc
    if not xs:
        raise DataError(f"no images found under {path}")
    x = (np.stack(xs).astype(np.float32) / 255.0).astype(np.float32)
    y = np.asarray(ys, dtype=np.int64)
    x_train, x_test, y_train, y_test = _split(x, y, test_fraction, seed, stratify=True)
    return Dataset(
        x_train, y_train, x_test, y_test, num_classes=len(classes), input_name="image",
        class_names=tuple(name for name, _ in classes), name=f"image_folder:{path}", kind="image",
        preprocessing={
            "scale": 1 / 255, "image_size": [int(image_size[0]), int(image_size[1])], "color_mode": color_mode,
            "interpolation": "bilinear",
        },
    )  # fmt: skip


def tokenize(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def build_vocabulary(texts: Iterable[str], max_tokens: int) -> tuple[str, ...]:
    """Most frequent tokens first (ties alphabetical); ids 0 and 1 are reserved for padding and unknown."""
    counts: dict[str, int] = {}
    for text in texts:
        for token in tokenize(text):
            counts[token] = counts.get(token, 0) + 1
    ranked = sorted(counts, key=lambda t: (-counts[t], t))
    return ("", "[UNK]", *ranked[: max(0, max_tokens - 2)])


def vectorize(texts: Iterable[str], vocabulary: tuple[str, ...], sequence_length: int) -> np.ndarray:
    index = {token: i for i, token in enumerate(vocabulary) if i >= 2}
    rows = []
    for text in texts:
        ids = [index.get(token, OOV) for token in tokenize(text)][:sequence_length]
        rows.append(ids + [PAD] * (sequence_length - len(ids)))
    return np.asarray(rows, dtype=np.int64).reshape(-1, sequence_length)


def load_text_folder(path: Path, max_tokens: int, sequence_length: int, test_fraction: float, seed: int) -> Dataset:
    """<path>/<class>/<file>.txt; the vocabulary is built from the train split only and recorded in kerve.json,
    so clients tokenize the same way (lowercase, [a-z0-9']+ tokens, 0 padding, 1 unknown)."""
    classes = _class_dirs(path, (".txt",))
    texts, labels = [], []
    for label, (_name, files) in enumerate(classes):
        for file in files:
            try:
                texts.append(file.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError) as exc:
                raise DataError(f"cannot read {file}: {exc}") from exc
            labels.append(label)
    y = np.asarray(labels, dtype=np.int64)
    t_train, t_test, y_train, y_test = _split(np.asarray(texts, dtype=object), y, test_fraction, seed, stratify=True)
    vocabulary = build_vocabulary(t_train, max_tokens)
    if len(vocabulary) <= 2:
        raise DataError(f"the texts under {path} contain no tokens")
    return Dataset(
        vectorize(t_train, vocabulary, sequence_length), y_train, vectorize(t_test, vocabulary, sequence_length),
        y_test, num_classes=len(classes), input_name="tokens", class_names=tuple(name for name, _ in classes),
        name=f"text_folder:{path}", kind="text", vocabulary=vocabulary, texts_test=tuple(t_test),
    )  # fmt: skip


def _labels(values: np.ndarray, task: str, where: str) -> tuple[np.ndarray, tuple[str, ...]]:
    if task == "regression":
        try:
            return values.astype(np.float32), ()
        except (TypeError, ValueError) as exc:
            raise DataError(f"{where}: regression targets must be numeric: {exc}") from exc
    names = sorted({str(v) for v in values.tolist()}, key=lambda s: (not s.lstrip("-").isdigit(), _num(s), s))
    if len(names) < 2:
        raise DataError(f"{where}: classification needs at least two classes, found {names}")
    index = {name: i for i, name in enumerate(names)}
    return np.asarray([index[str(v)] for v in values.tolist()], dtype=np.int64), tuple(names)


def _num(text: str) -> int:
    return int(text) if text.lstrip("-").isdigit() else 0


def load_csv(path: Path, label_column: str, task: str, test_fraction: float, seed: int) -> Dataset:
    """A CSV with a header; every column but `label_column` is a numeric feature."""
    import csv

    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            rows = [row for row in reader if row]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read CSV {path}: {exc}") from exc
    if not header:
        raise DataError(f"CSV {path} is empty")
    if label_column not in header:
        raise DataError(f"CSV {path} has no label column {label_column!r}: columns are {header}")
    if not rows:
        raise DataError(f"CSV {path} has a header but no rows")
    label_at = header.index(label_column)
    features = [name for name in header if name != label_column]
    if not features:
        raise DataError(f"CSV {path} has no feature columns besides {label_column!r}")
    x = np.empty((len(rows), len(features)), dtype=np.float32)
    raw_labels = []
    for line, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise DataError(f"{path}:{line}: {len(row)} fields, the header has {len(header)}")
        raw_labels.append(row[label_at])
        try:
            x[line - 2] = [float(v) for i, v in enumerate(row) if i != label_at]
        except ValueError as exc:
            raise DataError(f"{path}:{line}: features must be numeric: {exc}") from exc
    y, class_names = _labels(np.asarray(raw_labels, dtype=object), task, str(path))
    x_train, x_test, y_train, y_test = _split(x, y, test_fraction, seed, stratify=task == "classification")
    return Dataset(
        x_train, y_train, x_test, y_test, num_classes=len(class_names) if class_names else 1,
        input_name="features", class_names=class_names, name=f"csv:{path}", kind="tabular", task=task,
        details={"feature_names": features, "label_column": label_column},
    )  # fmt: skip


def load_npz(path: Path, task: str, test_fraction: float, seed: int) -> Dataset:
    """An .npz with `x` and `y` (split here) or `x_train`, `y_train`, `x_test`, `y_test`. Rank 4 float x is
    images, rank 2 integer x with a `vocabulary` array is text, rank 2 float x is tabular."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    # An empty file is EOFError, a truncated archive BadZipFile (or zlib.error / EOFError for a member).
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise DataError(f"cannot read {path} as .npz: {type(exc).__name__}: {exc}") from exc
    if {"x_train", "y_train", "x_test", "y_test"} <= set(arrays):
        parts = [arrays[k] for k in ("x_train", "y_train", "x_test", "y_test")]
    elif {"x", "y"} <= set(arrays):
        x_all, y_all = arrays["x"], arrays["y"]
        if len(x_all) != len(y_all):
            raise DataError(f"{path}: x has {len(x_all)} rows but y has {len(y_all)}")
        parts = None
    else:
        raise DataError(f"{path} must hold x and y, or x_train, y_train, x_test, y_test; it holds {sorted(arrays)}")
    if parts is not None:
        for x_part, y_part, split in ((parts[0], parts[1], "train"), (parts[2], parts[3], "test")):
            if len(x_part) != len(y_part):
                raise DataError(f"{path}: x_{split} has {len(x_part)} rows but y_{split} has {len(y_part)}")
            if len(x_part) == 0:
                raise DataError(f"{path}: the {split} split is empty")
        if parts[0].shape[1:] != parts[2].shape[1:]:
            raise DataError(f"{path}: x_train rows {parts[0].shape[1:]} differ from x_test rows {parts[2].shape[1:]}")
        x_all, y_all = np.concatenate([parts[0], parts[2]]), np.concatenate([parts[1], parts[3]])
    if len(x_all) == 0:
        raise DataError(f"{path} holds no examples")
    if x_all.dtype.kind not in "fiub":
        raise DataError(f"{path}: x must be numeric, got dtype {x_all.dtype}")
    vocabulary = tuple(str(v) for v in arrays["vocabulary"].tolist()) if "vocabulary" in arrays else ()
    if x_all.ndim == 4:
        kind, input_name, x_all = "image", "image", x_all.astype(np.float32)
    elif x_all.ndim == 2 and vocabulary and x_all.dtype.kind in "iu":
        kind, input_name, x_all = "text", "tokens", x_all.astype(np.int64)
        low, high = int(x_all.min()), int(x_all.max())
        if low < 0 or high >= len(vocabulary):
            raise DataError(
                f"{path}: token ids must be in [0, {len(vocabulary)}) (the vocabulary's size), got ids from "
                f"{low} to {high}"
            )
    elif x_all.ndim == 2:
        kind, input_name, x_all = "tabular", "features", x_all.astype(np.float32)
    else:
        raise DataError(f"{path}: x must be (n, h, w, c) images or (n, features) rows, got shape {x_all.shape}")
    y, class_names = _labels(np.asarray(y_all).reshape(len(y_all)), task, str(path))
    if parts is not None:
        n_train = len(parts[0])
        x_train, x_test, y_train, y_test = x_all[:n_train], x_all[n_train:], y[:n_train], y[n_train:]
    else:
        x_train, x_test, y_train, y_test = _split(x_all, y, test_fraction, seed, stratify=task == "classification")
    return Dataset(
        x_train, y_train, x_test, y_test, num_classes=len(class_names) if class_names else 1,
        input_name=input_name, class_names=class_names, name=f"npz:{path}", kind=kind, task=task,
        vocabulary=vocabulary,
        # npz images are used as stored (scale 1): clients send them scaled like the file's x.
        preprocessing={"scale": 1.0, "image_size": [int(x_all.shape[1]), int(x_all.shape[2])]}
        if kind == "image"
        else {},
    )  # fmt: skip
