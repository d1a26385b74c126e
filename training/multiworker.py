"""Training under MultiWorkerMirroredStrategy (TF_CONFIG with several workers) with Keras 3.

Keras 3's `Model.fit` cannot run under a multi-worker strategy (keras-team/keras#20585): before the first step
it reduces a distributed batch eagerly, which a cluster cannot do, and its per-step logs are reduced over
axis 0 of scalars. `fit` here is the same training, written as the loop `Model.fit` would run: Keras's own
`train_step` / `test_step` on each replica through `strategy.run`, logs reduced as means over the replicas,
and the Keras callbacks (EarlyStopping, TensorBoard, KerasTuner's best-epoch checkpoint) driven per epoch.

Every worker runs the same steps: each collective (a step's gradient all-reduce, a log reduce) needs all of
them. A worker's share of a batch can be empty at the end of an epoch; the distributed iterator agrees on
the end of the data across workers, so none waits for a step the others never take. After training, only
the chief publishes (`strategy.is_chief`); predictions for evaluation and export checks are local to each worker
(`predict`), so no collective is left that the chief would wait on alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import keras
import numpy as np
import tensorflow as tf


def fit(
    model: keras.Model,
    strategy: tf.distribute.Strategy,
    x: tf.data.Dataset,
    *,
    validation_data: tf.data.Dataset | None = None,
    epochs: int = 1,
    callbacks: list[keras.callbacks.Callback] | None = None,
    verbose: int = 0,
    initial_epoch: int = 0,
    **unused: Any,
) -> keras.callbacks.History:
    """`model.fit(x, validation_data=..., epochs=..., callbacks=...)` for a multi-worker strategy; the logs
    (loss and compiled metrics, `val_` ones after each epoch) are means over all replicas of the cluster."""
    if not isinstance(x, tf.data.Dataset):
        raise TypeError(f"multi-worker training takes a batched tf.data.Dataset, got {type(x).__name__}")
    first_x, first_y = next(iter(x))
    with strategy.scope():
        # What fit's own pre-build does, from a local batch instead of a distributed one it cannot reduce.
        model._symbolic_build(data_batch=(first_x, first_y, None))

    def mean(logs: Mapping[str, Any]) -> dict[str, tf.Tensor]:
        return {name: strategy.reduce("MEAN", value, axis=None) for name, value in logs.items()}

    @tf.function
    def train_step(batch: Any) -> dict[str, tf.Tensor]:
        return mean(strategy.run(model.train_step, args=(batch,)))

    @tf.function
    def test_step(batch: Any) -> dict[str, tf.Tensor]:
        return mean(strategy.run(model.test_step, args=(batch,)))

    train = strategy.experimental_distribute_dataset(x)
    validation = None if validation_data is None else strategy.experimental_distribute_dataset(validation_data)
    callback_list = keras.callbacks.CallbackList(
        callbacks, add_history=True, add_progbar=verbose != 0, verbose=verbose, epochs=epochs, model=model
    )
    model.stop_training = False
    callback_list.on_train_begin()
    epoch_logs: dict[str, float] = {}
    for epoch in range(initial_epoch, epochs):
        model.reset_metrics()
        callback_list.on_epoch_begin(epoch)
        logs: dict[str, tf.Tensor] = {}
        for step, batch in enumerate(train):
            callback_list.on_train_batch_begin(step)
            logs = train_step(batch)
            callback_list.on_train_batch_end(step, logs)
        epoch_logs = _floats(logs)
        if validation is not None:
            model.reset_metrics()
            val_logs: dict[str, tf.Tensor] = {}
            for batch in validation:
                val_logs = test_step(batch)
            epoch_logs.update({f"val_{name}": value for name, value in _floats(val_logs).items()})
        callback_list.on_epoch_end(epoch, epoch_logs)
        if model.stop_training:
            break
    callback_list.on_train_end(epoch_logs)
    return model.history


def predict(model: keras.Model, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """`model.predict(x)`; under a multi-worker strategy computed by this worker alone: `Model.predict` there
    gathers every worker's shard, a collective that a worker calling it alone (the chief checking its export)
    would wait on forever."""
    if not isinstance(model.distribute_strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return np.asarray(model.predict(x, batch_size=batch_size, verbose=0))
    parts = [
        keras.ops.convert_to_numpy(model(tf.constant(x[start : start + batch_size]), training=False))
        for start in range(0, len(x), batch_size)
    ]
    return np.concatenate(parts)


class Predictor:
    """`model` with `predict` as above, for code that takes anything with a Keras-like `predict`."""

    def __init__(self, model: keras.Model) -> None:
        self.model = model

    def predict(self, x: np.ndarray, batch_size: int = 256, verbose: Any = 0) -> np.ndarray:
        return predict(self.model, x, batch_size)


def _floats(logs: Mapping[str, Any]) -> dict[str, float]:
    return {name: float(value) for name, value in logs.items()}
