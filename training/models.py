"""Model families as KerasTuner HyperModels: the search space lives next to the architecture it tunes.

Every family shares the regularization and optimization part of the space (`_Family.compile_space`):
dropout, L1/L2 weight penalties, batch-norm on/off, learning rate, optimizer (Adam, RMSprop, SGD with
momentum) and learning-rate schedule (constant or cosine decay). Every input is a named `keras.Input`: the
name becomes the input key of the exported SavedModel's serving signature, which clients address by name.
"""

from __future__ import annotations

import math

import keras
import keras_tuner
import tensorflow as tf

from . import multiworker
from .config import ConfigError

IMAGE_FAMILIES = ("cnn", "resnet")


def augmenter(seed: int | None = None):  # noqa: ANN201 - a tf.data map function
    """(images, labels) -> (randomly flipped, rotated and zoomed images, labels)."""
    layers = keras.Sequential(
        [
            keras.layers.RandomFlip("horizontal", seed=seed),
            keras.layers.RandomRotation(0.1, seed=seed),
            keras.layers.RandomZoom(0.1, seed=seed),
        ],
        name="augmentation",
    )

    def apply(images: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return layers(images, training=True), labels

    return apply


TEXT_FAMILIES = ("lstm", "gru", "transformer")
FAMILIES = (*IMAGE_FAMILIES, "mlp", *TEXT_FAMILIES)


class _Family(keras_tuner.HyperModel):
    family = ""

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        input_name: str,
        *,
        task: str = "classification",
        decay_steps: int = 1000,
        augment: bool = False,
        vocab_size: int = 0,
        seed: int | None = None,
    ) -> None:
        super().__init__(name=self.family)
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        self.input_name = input_name
        self.task = task
        self.decay_steps = max(1, decay_steps)
        self.augment = augment
        self.vocab_size = vocab_size
        self.seed = seed

    def size_schedule(self, examples: int, batch_size: int, epochs: int) -> None:
        """Size the cosine-decay schedule of models built from now on for `epochs` epochs over `examples`
        examples: the data the next fit actually trains on (a tuning split, a fold, the whole training split),
        so the learning rate never reaches 0 early because the schedule was sized for fewer steps."""
        self.decay_steps = max(1, math.ceil(examples / max(1, batch_size)) * max(1, epochs))

    # -- shared space --------------------------------------------------------------------------------------

    def regularizer(self, hp: keras_tuner.HyperParameters) -> keras.regularizers.Regularizer | None:
        l1 = hp.Choice("l1", [0.0, 1e-5, 1e-4], default=0.0)
        l2 = hp.Choice("l2", [0.0, 1e-4, 1e-3], default=0.0)
        return keras.regularizers.L1L2(l1=l1, l2=l2) if (l1 or l2) else None

    def normalize(self, hp: keras_tuner.HyperParameters, x: keras.KerasTensor) -> keras.KerasTensor:
        if hp.Boolean("batch_norm", default=False):
            x = keras.layers.BatchNormalization()(x)
        return x

    def dropout(self, hp: keras_tuner.HyperParameters) -> float:
        return hp.Float("dropout", 0.0, 0.5, step=0.1, default=0.2)

    def head(self, hp: keras_tuner.HyperParameters, inputs: keras.KerasTensor, x: keras.KerasTensor) -> keras.Model:
        x = keras.layers.Dropout(self.dropout(hp))(x)
        if self.task == "regression":
            outputs = keras.layers.Dense(1, name="prediction")(x)
        else:
            outputs = keras.layers.Dense(self.num_classes, activation="softmax", name="probabilities")(x)
        model = keras.Model(inputs, outputs, name=self.family)
        model.compile(optimizer=self.optimizer(hp), **self.loss())
        return model

    def loss(self) -> dict[str, object]:
        if self.task == "regression":
            # "mse" as a metric too: val_loss adds the L1/L2 penalties, so trials are ranked by val_mse.
            return {"loss": "mse", "metrics": ["mse", "mae"]}
        return {"loss": "sparse_categorical_crossentropy", "metrics": ["accuracy"]}

    def optimizer(self, hp: keras_tuner.HyperParameters) -> keras.optimizers.Optimizer:
        learning_rate = hp.Float("learning_rate", 1e-4, 1e-2, sampling="log", default=1e-3)
        schedule = hp.Choice("lr_schedule", ["constant", "cosine"], default="constant")
        rate: float | keras.optimizers.schedules.LearningRateSchedule = learning_rate
        if schedule == "cosine":
            rate = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=self.decay_steps)
        name = hp.Choice("optimizer", ["adam", "rmsprop", "sgd"], default="adam")
        if name == "adam":
            return keras.optimizers.Adam(learning_rate=rate)
        if name == "rmsprop":
            return keras.optimizers.RMSprop(learning_rate=rate)
        return keras.optimizers.SGD(learning_rate=rate, momentum=0.9, nesterov=True)

    def image_input(self) -> tuple[keras.KerasTensor, keras.KerasTensor]:
        inputs = keras.Input(shape=self.input_shape, name=self.input_name)
        return inputs, inputs

    def fit(self, hp: keras_tuner.HyperParameters, model: keras.Model, x: object, *args: object, **kwargs: object):  # noqa: ANN201
        """Augmentation (random flip, rotation, zoom) is mapped over the training tf.data pipeline, not built
        into the model: the exported SavedModel then serves exactly the trained network, and the Random*
        layers' inference-time behaviour cannot leak into serving.

        A model built under a multi-worker strategy trains through `multiworker.fit`: Keras 3's own `fit`
        cannot run there."""
        if self.augment and isinstance(x, tf.data.Dataset):
            # Sequential map with seeded layers: the same seed gives the same augmented batches every run.
            x = x.map(augmenter(self.seed))
        strategy = model.distribute_strategy
        if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            return multiworker.fit(model, strategy, x, *args, **kwargs)
        return model.fit(x, *args, **kwargs)


class CNN(_Family):
    """Conv blocks (Conv2D -> [BatchNorm] -> ReLU -> MaxPool) -> Flatten -> Dropout -> Dense."""

    family = "cnn"

    def build(self, hp: keras_tuner.HyperParameters) -> keras.Model:
        filters1 = hp.Choice("filters1", [16, 32], default=32)
        filters2 = hp.Choice("filters2", [32, 64], default=64)
        reg = self.regularizer(hp)
        inputs, x = self.image_input()
        for filters in (filters1, filters2):
            x = keras.layers.Conv2D(filters, 3, padding="same", kernel_regularizer=reg)(x)
            x = self.normalize(hp, x)
            x = keras.layers.Activation("relu")(x)
            if min(x.shape[1], x.shape[2]) >= 2:
                x = keras.layers.MaxPooling2D(2)(x)
        x = keras.layers.Flatten()(x)
        return self.head(hp, inputs, x)


SeedCNN = CNN  # the name the first version of kerve gave its only family


class ResNet(_Family):
    """A stem convolution, then residual blocks (two 3x3 convs plus an identity/1x1 shortcut) -> global pool."""

    family = "resnet"

    def build(self, hp: keras_tuner.HyperParameters) -> keras.Model:
        width = hp.Choice("width", [16, 32], default=16)
        blocks = hp.Int("blocks", 1, 3, default=2)
        reg = self.regularizer(hp)
        inputs, x = self.image_input()
        x = keras.layers.Conv2D(width, 3, padding="same", kernel_regularizer=reg)(x)
        for i in range(blocks):
            filters = width * (2 if i > 0 else 1)
            shortcut = x
            y = keras.layers.Conv2D(filters, 3, padding="same", kernel_regularizer=reg)(x)
            y = keras.layers.Activation("relu")(self.normalize(hp, y))
            y = keras.layers.Conv2D(filters, 3, padding="same", kernel_regularizer=reg)(y)
            y = self.normalize(hp, y)
            if shortcut.shape[-1] != filters:
                shortcut = keras.layers.Conv2D(filters, 1, kernel_regularizer=reg)(shortcut)
            x = keras.layers.Activation("relu")(keras.layers.Add()([y, shortcut]))
        x = keras.layers.GlobalAveragePooling2D()(x)
        return self.head(hp, inputs, x)


class MLP(_Family):
    """Dense layers over flattened features; classification (softmax) or regression (one linear output)."""

    family = "mlp"

    def build(self, hp: keras_tuner.HyperParameters) -> keras.Model:
        layers = hp.Int("layers", 1, 3, default=2)
        units = hp.Choice("units", [32, 64, 128], default=64)
        reg = self.regularizer(hp)
        inputs = keras.Input(shape=self.input_shape, name=self.input_name)
        x = keras.layers.Flatten()(inputs) if len(self.input_shape) > 1 else inputs
        for _ in range(layers):
            x = keras.layers.Dense(units, kernel_regularizer=reg)(x)
            x = keras.layers.Activation("relu")(self.normalize(hp, x))
        return self.head(hp, inputs, x)


class RecurrentText(_Family):
    """Token ids -> Embedding (0 masks padding) -> [bidirectional] LSTM or GRU -> Dense."""

    family = "lstm"

    def build(self, hp: keras_tuner.HyperParameters) -> keras.Model:
        embed = hp.Choice("embedding_dim", [16, 32], default=32)
        units = hp.Choice("rnn_units", [16, 32], default=32)
        bidirectional = hp.Boolean("bidirectional", default=False)
        reg = self.regularizer(hp)
        inputs = keras.Input(shape=self.input_shape, dtype="int64", name=self.input_name)
        x = keras.layers.Embedding(self.vocab_size, embed, mask_zero=True, embeddings_regularizer=reg)(inputs)
        cell = keras.layers.LSTM if self.family == "lstm" else keras.layers.GRU
        rnn = cell(units, kernel_regularizer=reg)
        x = keras.layers.Bidirectional(rnn)(x) if bidirectional else rnn(x)
        x = self.normalize(hp, x)
        return self.head(hp, inputs, x)


class GRUText(RecurrentText):
    family = "gru"


class TransformerText(_Family):
    """Token + position embeddings -> Transformer encoder blocks (self-attention, feed-forward, residual
    connections, layer norm) -> global average pooling -> Dense."""

    family = "transformer"

    def build(self, hp: keras_tuner.HyperParameters) -> keras.Model:
        dim = hp.Choice("model_dim", [16, 32], default=32)
        heads = hp.Choice("heads", [1, 2], default=2)
        blocks = hp.Int("encoder_blocks", 1, 2, default=1)
        reg = self.regularizer(hp)
        rate = self.dropout(hp)
        length = self.input_shape[0]
        inputs = keras.Input(shape=self.input_shape, dtype="int64", name=self.input_name)
        x = keras.layers.Embedding(self.vocab_size, dim, embeddings_regularizer=reg)(inputs)
        x = PositionEmbedding(length, dim)(x)
        for _ in range(blocks):
            attention = keras.layers.MultiHeadAttention(heads, key_dim=dim // heads, dropout=rate)(x, x)
            x = keras.layers.LayerNormalization()(keras.layers.Add()([x, attention]))
            ff = keras.layers.Dense(dim * 2, activation="relu", kernel_regularizer=reg)(x)
            ff = keras.layers.Dense(dim, kernel_regularizer=reg)(ff)
            x = keras.layers.LayerNormalization()(keras.layers.Add()([x, keras.layers.Dropout(rate)(ff)]))
        x = keras.layers.GlobalAveragePooling1D()(x)
        x = self.normalize(hp, x)
        return self.head(hp, inputs, x)


@keras.saving.register_keras_serializable(package="kerve")
class PositionEmbedding(keras.layers.Layer):
    """Adds a learned embedding of each position to the token embeddings."""

    def __init__(self, length: int, dim: int, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.length, self.dim = length, dim
        self.positions = keras.layers.Embedding(length, dim)

    def build(self, input_shape: tuple[int, ...]) -> None:
        self.positions.build((None, self.length))
        super().build(input_shape)

    def call(self, x: keras.KerasTensor) -> keras.KerasTensor:
        return x + self.positions(keras.ops.arange(self.length))

    def get_config(self) -> dict[str, object]:
        return {**super().get_config(), "length": self.length, "dim": self.dim}


_CLASSES: dict[str, type[_Family]] = {
    "cnn": CNN,
    "resnet": ResNet,
    "mlp": MLP,
    "lstm": RecurrentText,
    "gru": GRUText,
    "transformer": TransformerText,
}


def default_family(kind: str) -> str:
    return {"image": "cnn", "text": "lstm", "tabular": "mlp"}[kind]


def check_family(family: str, kind: str, task: str, augment: bool = False) -> None:
    """Raise ConfigError (a ValueError: `kerve train` exits 2, invalid configuration) when `family` cannot model
    data of this kind/task, or `augment` is asked for data that is not images."""
    if family not in _CLASSES:
        raise ConfigError(f"unknown model family {family!r}: choose from {list(FAMILIES)}")
    if family in IMAGE_FAMILIES and kind != "image":
        raise ConfigError(f"family {family!r} needs image data (rank-3 examples), the data is {kind}")
    if family in TEXT_FAMILIES and kind != "text":
        raise ConfigError(f"family {family!r} needs text data (token ids with a vocabulary), the data is {kind}")
    if family == "mlp" and kind == "text":
        raise ConfigError(
            "family 'mlp' cannot model text data (int64 token ids): choose lstm, gru or transformer (or auto)"
        )
    if task == "regression" and family != "mlp":
        raise ConfigError(f"regression is supported by the mlp family only, not {family!r}")
    if augment and kind != "image":
        raise ConfigError(f"augment: true flips, rotates and zooms images; the data is {kind}: leave it off")


def make(
    family: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    input_name: str,
    *,
    kind: str = "image",
    task: str = "classification",
    decay_steps: int = 1000,
    augment: bool = False,
    vocab_size: int = 0,
    seed: int | None = None,
) -> _Family:
    check_family(family, kind, task, augment)
    return _CLASSES[family](
        input_shape, num_classes, input_name, task=task, decay_steps=decay_steps, augment=augment,
        vocab_size=vocab_size, seed=seed,
    )  # fmt: skip
