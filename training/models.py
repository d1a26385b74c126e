"""Model families as KerasTuner HyperModels: the search space lives next to the architecture it tunes."""

from __future__ import annotations

import keras
import keras_tuner


class SeedCNN(keras_tuner.HyperModel):
    """The small two-block CNN kerve starts from.

    The input is a named `keras.Input`: the name becomes the input key of the exported SavedModel's
    serving signature, which clients of both protocols address by name.
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, input_name: str = "image") -> None:
        super().__init__(name="seed_cnn")
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        self.input_name = input_name

    def build(self, hp: keras_tuner.HyperParameters) -> keras.Model:
        filters1 = hp.Choice("filters1", [16, 32], default=32)
        filters2 = hp.Choice("filters2", [32, 64], default=64)
        dropout = hp.Float("dropout", 0.0, 0.5, step=0.1, default=0.2)
        learning_rate = hp.Float("learning_rate", 1e-3, 1e-2, sampling="log", default=1e-3)

        inputs = keras.Input(shape=self.input_shape, name=self.input_name)
        x = keras.layers.Conv2D(filters1, 3, padding="same", activation="relu")(inputs)
        x = keras.layers.MaxPooling2D(2)(x)
        x = keras.layers.Conv2D(filters2, 3, padding="same", activation="relu")(x)
        x = keras.layers.MaxPooling2D(2)(x)
        x = keras.layers.Flatten()(x)
        x = keras.layers.Dropout(dropout)(x)
        outputs = keras.layers.Dense(self.num_classes, activation="softmax", name="probabilities")(x)

        model = keras.Model(inputs, outputs, name="seed_cnn")
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
        return model
