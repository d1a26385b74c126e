"""The gate on a text model: each run builds its vocabulary from its own data, so the version in the repository
reads token ids by another one; it must be scored on the same texts in its own ids (kerve.json's vocabulary)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kerve.training import data, gate

pytestmark = pytest.mark.integration

CURRENT = ("", "[UNK]", "x", "y", "alpha", "beta")  # the version in the repository: "beta" is id 5
CANDIDATE = ("", "[UNK]", "alpha", "beta", "s", "u")  # this run's: "beta" is id 3, ids 4-5 unknown to the other
TEXTS = ("beta s u", "alpha s u", "s beta", "u alpha")
LABELS = np.array([1, 0, 1, 0])  # 1: the text has "beta"


def _current_version(repo: Path) -> None:
    """Version 1 of `txt`: class 1 iff its input holds id 5 ("beta" in its vocabulary), as a trained model would."""
    import tensorflow as tf

    class Text(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.int64, name="tokens")])
        def serve(self, tokens: tf.Tensor) -> dict[str, tf.Tensor]:
            hit = tf.cast(tf.reduce_any(tokens == 5, axis=1), tf.float32)[:, None]
            return {"output_0": tf.concat([1.0 - hit, hit], axis=1)}

    path = repo / "txt" / "1"
    module = Text()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    (path / "kerve.json").write_text(json.dumps({"task": "classification", "dataset": {"vocabulary": list(CURRENT)}}))


def test_the_current_text_version_is_scored_on_the_same_texts_in_its_own_vocabulary(tmp_path: Path) -> None:
    _current_version(tmp_path)
    x = data.vectorize(TEXTS, CANDIDATE, 4)  # what this run's model takes

    def accuracy(**text: object) -> float:
        scored = gate.evaluate_current(tmp_path, "txt", "tokens", x, LABELS, 2, "classification", CANDIDATE, **text)
        assert scored is not None
        return scored[1]["accuracy"]

    assert accuracy(texts=TEXTS) == 1.0  # re-tokenized from the raw texts (text folders)
    assert accuracy() == 1.0  # the candidate's ids mapped back to words, then to its ids (.npz: no raw texts)
    scored = gate.evaluate_current(tmp_path, "txt", "tokens", x, LABELS, 2, "classification")
    assert scored is not None and scored[1]["accuracy"] == 0.25  # the candidate's ids as-is (as before): wrong


def test_an_unreadable_kerve_json_makes_the_text_baseline_not_comparable(tmp_path: Path) -> None:
    """A BaselineError (kerve train: publish, noting it; retrain: exit 1 with the reason), not a traceback."""
    _current_version(tmp_path)
    (tmp_path / "txt" / "1" / "kerve.json").write_text("{not json")
    x = data.vectorize(TEXTS, CANDIDATE, 4)
    with pytest.raises(gate.BaselineError, match="unreadable metadata"):
        gate.evaluate_current(tmp_path, "txt", "tokens", x, LABELS, 2, "classification", CANDIDATE, TEXTS)
