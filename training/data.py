"""Built-in datasets as plain numpy arrays. No TensorFlow here, so data handling is testable on its own."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DigitsData:
    """A fixed train/test split; x is float32 (n, 8, 8, 1) in [0, 1], y is int64 class ids."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int = 10
    input_name: str = "image"
    class_names: tuple[str, ...] = tuple(str(i) for i in range(10))
    name: str = "digits"

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


def load_digits_split(seed: int = 0, test_fraction: float = 0.2) -> DigitsData:
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
    return DigitsData(
        x_train=np.ascontiguousarray(x_train),
        y_train=np.ascontiguousarray(y_train),
        x_test=np.ascontiguousarray(x_test),
        y_test=np.ascontiguousarray(y_test),
        class_names=tuple(str(name) for name in bunch.target_names),
    )


def validation_split(
    x: np.ndarray, y: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Stratified (x_fit, y_fit, x_val, y_val): the tuner scores trials on data it never fits on."""
    from sklearn.model_selection import train_test_split

    x_fit, x_val, y_fit, y_val = train_test_split(x, y, test_size=fraction, random_state=seed, stratify=y)
    return x_fit, y_fit, x_val, y_val


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
