"""The publish gate: the candidate is published only if it is not worse than the version currently in the
repository, on the same evaluation data, by more than a tolerance.

`decide` is plain Python; `evaluate_current` loads the current version exactly as the server would (its
SavedModel's serving signature, not the Keras model) and scores it on the candidate's evaluation data.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from kerve import repository

from . import evaluate
from .config import GateConfig


class BaselineError(RuntimeError):
    """The current version cannot be evaluated on the candidate's data (other inputs or outputs)."""

    def __init__(self, message: str, version: int | None = None) -> None:
        super().__init__(message)
        self.version = version  # the version that could not be compared


@dataclass(frozen=True)
class Decision:
    publish: bool
    reason: str
    metric: str
    tolerance: float
    candidate: float
    baseline: float | None = None
    baseline_version: int | None = None
    enforced: bool = True

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def decide(
    candidate: dict[str, Any],
    baseline: dict[str, Any] | None,
    gate: GateConfig,
    baseline_version: int | None = None,
    enforced: bool = True,
) -> Decision:
    """Publish when there is no current version, or the candidate's metric is within `tolerance` of it."""
    metric, tolerance = gate.metric, float(gate.tolerance)
    new = float(candidate[metric])
    if baseline is None:
        return Decision(True, "no current version to compare with", metric, tolerance, new, None, None, enforced)
    old = float(baseline[metric])
    if gate.higher_is_better:
        ok, bound, worse = new >= old - tolerance, old - tolerance, "lower"
    else:
        ok, bound, worse = new <= old + tolerance, old + tolerance, "higher"
    if ok:
        reason = f"{metric} {new:.4f} vs {old:.4f} of version {baseline_version} (bound {bound:.4f})"
    else:
        reason = (
            f"{metric} {new:.4f} is {worse} than {bound:.4f} ({old:.4f} of version {baseline_version} ± {tolerance})"
        )
    if not enforced and not ok:
        reason += "; not enforced by `kerve train`"
    return Decision(ok or not enforced, reason, metric, tolerance, new, old, baseline_version, enforced)


def evaluate_current(
    repo: str | os.PathLike[str],
    model: str,
    input_name: str,
    x: np.ndarray,
    y: np.ndarray,
    num_classes: int,
    task: str,
    vocabulary: tuple[str, ...] = (),
    texts: tuple[str, ...] = (),
) -> tuple[int, dict[str, Any]] | None:
    """(version, metrics) of the latest servable version on (x, y), or None when there is no version yet.

    Text (`vocabulary`: the candidate's, which made the token ids in x): each run builds its vocabulary from its
    own data, so the current version reads ids by another one. It gets the same test texts tokenized with its own
    vocabulary (kerve.json's), from `texts` when the loader kept them, else by mapping x's ids back to words."""
    import tensorflow as tf

    version = repository.latest_version(repo, model)
    if version is None:
        return None
    path = repository.version_dir(repo, model, version)
    if vocabulary:
        x = _in_own_vocabulary(path, version, x, vocabulary, texts)
    try:
        serve = tf.saved_model.load(str(path)).signatures["serving_default"]
    except (OSError, KeyError, ValueError, tf.errors.OpError) as exc:
        raise BaselineError(f"cannot load version {version} at {path}: {exc}", version) from exc
    _args, inputs = serve.structured_input_signature
    if list(inputs) != [input_name]:
        raise BaselineError(
            f"version {version} takes inputs {list(inputs)}, the candidate takes [{input_name!r}]", version
        )
    spec = inputs[input_name]
    if not spec.shape[1:].is_compatible_with(x.shape[1:]) or spec.dtype != tf.as_dtype(x.dtype):
        raise BaselineError(
            f"version {version} takes {input_name} {spec.dtype.name}{spec.shape.as_list()}, the evaluation data is "
            f"{x.dtype}{[None, *x.shape[1:]]}",
            version,
        )
    outputs = []
    for start in range(0, len(x), 256):
        try:
            result = serve(**{input_name: tf.constant(x[start : start + 256])})
        except tf.errors.OpError as exc:  # inputs it cannot take after all: not comparable, not a crash
            raise BaselineError(f"version {version} cannot run the evaluation data: {exc.message}", version) from exc
        if len(result) != 1:
            raise BaselineError(f"version {version} has outputs {sorted(result)}, expected one", version)
        outputs.append(next(iter(result.values())).numpy())
    predictions = np.concatenate(outputs)
    # Another task's model (a classifier's [n, C] where a regressor's [n, 1] is due, or the reverse) cannot be
    # compared: a BaselineError, which `kerve train` records and publishes past, never a crash.
    if task == "regression":
        if predictions.shape not in ((len(y),), (len(y), 1)):
            raise BaselineError(
                f"version {version} predicts shape {list(predictions.shape)}, a regressor's is [n, 1]", version
            )
        return version, evaluate.regression_metrics(y, predictions)
    if predictions.ndim != 2 or predictions.shape[1] != num_classes:
        raise BaselineError(
            f"version {version} predicts shape {list(predictions.shape)}, expected [n, {num_classes}]", version
        )
    return version, evaluate.classification_metrics(y, predictions.argmax(axis=-1), num_classes)


def _in_own_vocabulary(
    path: os.PathLike[str], version: int, x: np.ndarray, vocabulary: tuple[str, ...], texts: tuple[str, ...]
) -> np.ndarray:
    """x's texts as token ids of the vocabulary the version at `path` was trained with (its kerve.json)."""
    from . import data

    try:
        dataset = repository.read_metadata(path).get("dataset")
    except repository.RepositoryError as exc:
        raise BaselineError(f"version {version}: {exc}", version) from exc
    own = dataset.get("vocabulary") if isinstance(dataset, dict) else None
    if not isinstance(own, list) or not own:
        raise BaselineError(
            f"version {version} records no vocabulary: its token ids cannot be matched to these", version
        )
    own_vocabulary = tuple(str(token) for token in own)
    if own_vocabulary == tuple(vocabulary):
        return x
    if texts:
        return data.vectorize(texts, own_vocabulary, x.shape[1])
    index = {token: i for i, token in enumerate(own_vocabulary) if i >= 2}
    words = np.asarray(vocabulary, dtype=object)
    mapped = np.vectorize(lambda word: index.get(word, data.OOV), otypes=[np.int64])(words)
    mapped[: min(2, len(mapped))] = (data.PAD, data.OOV)[: min(2, len(mapped))]  # padding stays, unknown stays
    return mapped[np.clip(x, 0, len(vocabulary) - 1)].astype(x.dtype)
