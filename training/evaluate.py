"""Classification and regression metrics in plain numpy, returned JSON-ready so they go into kerve.json unchanged.

No TensorFlow or scikit-learn here: the gate that compares versions and the tests both use these numbers.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np


class Predictor(Protocol):
    def predict(self, x: np.ndarray, batch_size: int = ..., verbose: Any = ...) -> np.ndarray: ...


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> dict[str, Any]:
    """Accuracy, macro precision/recall/F1 and the confusion matrix (rows: true class, columns: predicted).

    Macro averages weigh equally every class that occurs (in the labels or the predictions), as scikit-learn's do:
    a class absent from both says nothing about the model (a small test split may lack one) and must not pull
    the averages down. A class that is never predicted (or never present) counts as 0 precision (or recall)
    rather than NaN, matching scikit-learn's zero_division=0, so the result is always valid JSON.
    """
    y_true = np.asarray(y_true, dtype=np.int64).reshape(-1)
    y_pred = np.asarray(y_pred, dtype=np.int64).reshape(-1)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has {y_true.size} labels but y_pred has {y_pred.size}")
    if y_true.size == 0:
        raise ValueError("cannot evaluate on zero examples")
    for label, values in (("y_true", y_true), ("y_pred", y_pred)):
        if values.min() < 0 or values.max() >= num_classes:
            raise ValueError(f"{label} has class ids outside [0, {num_classes})")

    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (y_true, y_pred), 1)
    true_positive = np.diag(confusion).astype(np.float64)
    predicted = confusion.sum(axis=0).astype(np.float64)
    actual = confusion.sum(axis=1).astype(np.float64)
    precision = np.divide(true_positive, predicted, out=np.zeros(num_classes), where=predicted > 0)
    recall = np.divide(true_positive, actual, out=np.zeros(num_classes), where=actual > 0)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros(num_classes), where=denominator > 0)
    seen = (actual + predicted) > 0
    return {
        "accuracy": float(true_positive.sum() / y_true.size),
        "precision": float(precision[seen].mean()),
        "recall": float(recall[seen].mean()),
        "f1": float(f1[seen].mean()),
        "num_examples": int(y_true.size),
        "confusion_matrix": confusion.tolist(),
    }


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, Any]:
    """Mean squared and mean absolute error (and R^2, 0 when the targets are constant)."""
    y_true = np.asarray(y_true, dtype=np.float64).reshape(-1)
    y_pred = np.asarray(y_pred, dtype=np.float64).reshape(-1)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has {y_true.size} targets but y_pred has {y_pred.size}")
    if y_true.size == 0:
        raise ValueError("cannot evaluate on zero examples")
    errors = y_pred - y_true
    total = float(((y_true - y_true.mean()) ** 2).sum())
    return {
        "mse": float((errors**2).mean()),
        "mae": float(np.abs(errors).mean()),
        "r2": float(1.0 - (errors**2).sum() / total) if total > 0 else 0.0,
        "num_examples": int(y_true.size),
    }


def evaluate_model(
    model: Predictor,
    x: np.ndarray,
    y: np.ndarray,
    num_classes: int,
    batch_size: int = 256,
    task: str = "classification",
) -> dict[str, Any]:
    """Metrics of a softmax classifier's argmax predictions (or a regressor's outputs) on held-out data."""
    predictions = np.asarray(model.predict(x, batch_size=batch_size, verbose=0))
    if task == "regression":
        return regression_metrics(y, predictions)
    return classification_metrics(y, predictions.argmax(axis=-1), num_classes)
