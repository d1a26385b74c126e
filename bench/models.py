"""The benchmark models: built with random weights and exported as SavedModels into a temporary repository.

- ``seed_cnn``: the seed CNN on 28x28x1 (Conv2D 32 -> MaxPool -> Conv2D 64 -> MaxPool -> Flatten -> Dense 10
  softmax). Light: about 0.1 ms per sample in a large batch, so serving it batch-1 is bound by the RPC path.
- ``resnet``: a small residual CNN on 32x32x3, the CIFAR ResNet-20 shape (stem + 3 stages of 3 basic blocks,
  widths 16/32/64, BatchNorm, global average pooling, Dense 10; about 41 M multiply-adds per sample).
  Compute-bound: >= 0.5 ms per sample in process even at its best batch size on a 2-core machine (the run
  checks this and warns otherwise; the in-process section of the results has the figure). On a host fast enough
  that it costs less (0.37-0.44 ms on the AVX-512 Intel hosts), ``resnet_wide`` is the compute-bound model.
- ``resnet_wide``: the same shape at widths 24/48/96, about 2.25x the multiply-adds (~92 M per sample), so it stays
  over 0.5 ms per sample where ``resnet`` falls under; not in the default set, to keep runs comparable across
  sessions.
- ``lstm``: the seed text model (Embedding 10000x128 -> LSTM 128 -> Dense 1 sigmoid) on int32 token ids, length 200.
- ``tiny``: one Dense layer on 8 features, for the smoke test (fast to build, export and load).

Keras and TensorFlow are imported inside the builders only: the orchestrator and the load generator never load them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: str  # numpy dtype name
    shape: tuple[int, ...]  # per sample, without the batch dimension

    def sample(self, rng: np.random.Generator, batch: int) -> np.ndarray:
        shape = (batch, *self.shape)
        if np.dtype(self.dtype).kind == "i":
            return rng.integers(0, 10000, size=shape).astype(self.dtype)
        return rng.random(shape, dtype=np.float32).astype(self.dtype)


def _seed_cnn(keras: Any) -> Any:
    image = keras.Input(shape=(28, 28, 1), name="image")
    x = keras.layers.Conv2D(32, 3, activation="relu")(image)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Conv2D(64, 3, activation="relu")(x)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Flatten()(x)
    probs = keras.layers.Dense(10, activation="softmax")(x)
    return keras.Model(image, probs, name="seed_cnn")


def _resnet(keras: Any, widths: tuple[int, ...] = (16, 32, 64), blocks: int = 3, name: str = "resnet") -> Any:
    layers = keras.layers

    def conv_bn(x: Any, filters: int, stride: int = 1, relu: bool = True) -> Any:
        x = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        return layers.ReLU()(x) if relu else x

    image = keras.Input(shape=(32, 32, 3), name="image")
    x = conv_bn(image, widths[0])
    for stage, filters in enumerate(widths):
        for block in range(blocks):
            stride = 2 if stage > 0 and block == 0 else 1
            shortcut = x
            y = conv_bn(x, filters, stride)
            y = conv_bn(y, filters, relu=False)
            if stride != 1 or shortcut.shape[-1] != filters:
                shortcut = layers.Conv2D(filters, 1, strides=stride, use_bias=False)(shortcut)
                shortcut = layers.BatchNormalization()(shortcut)
            x = layers.ReLU()(layers.Add()([y, shortcut]))
    x = layers.GlobalAveragePooling2D()(x)
    probs = layers.Dense(10, activation="softmax")(x)
    return keras.Model(image, probs, name=name)


def _lstm(keras: Any) -> Any:
    tokens = keras.Input(shape=(200,), dtype="int32", name="tokens")
    x = keras.layers.Embedding(10000, 128)(tokens)
    x = keras.layers.LSTM(128)(x)
    score = keras.layers.Dense(1, activation="sigmoid")(x)
    return keras.Model(tokens, score, name="lstm")


def _big_image(keras: Any) -> Any:
    image = keras.Input(shape=(224, 224, 3), name="image")
    x = keras.layers.GlobalAveragePooling2D()(image)
    return keras.Model(image, keras.layers.Dense(10, activation="softmax")(x), name="big_image")


def _tiny(keras: Any) -> Any:
    features = keras.Input(shape=(8,), name="features")
    return keras.Model(features, keras.layers.Dense(4)(features), name="tiny")


@dataclass(frozen=True)
class BenchModel:
    name: str
    inputs: tuple[InputSpec, ...]
    build: Callable[[Any], Any]
    description: str
    # the definition of a compute-bound model: at least this much per sample in process at its best batch
    # (0: no such requirement); the run warns when a model falls under it on the machine at hand
    min_ms_per_sample: float = 0.0
    # the model to measure instead where this one falls under min_ms_per_sample ("": none)
    heavier: str = ""


MODELS: dict[str, BenchModel] = {
    m.name: m
    for m in (
        BenchModel(
            "seed_cnn",
            (InputSpec("image", "float32", (28, 28, 1)),),
            _seed_cnn,
            "Conv2D 32 -> MaxPool -> Conv2D 64 -> MaxPool -> Flatten -> Dense 10 softmax on 28x28x1 (light)",
        ),
        BenchModel(
            "resnet",
            (InputSpec("image", "float32", (32, 32, 3)),),
            _resnet,
            "ResNet-20 on 32x32x3: stem + 3 stages x 3 basic blocks, widths 16/32/64, BN, GAP, Dense 10",
            min_ms_per_sample=0.5,
            heavier="resnet_wide",
        ),
        BenchModel(
            "resnet_wide",
            (InputSpec("image", "float32", (32, 32, 3)),),
            functools.partial(_resnet, widths=(24, 48, 96), name="resnet_wide"),
            "ResNet-20 shape at widths 24/48/96 on 32x32x3 (2.25x resnet's compute: for hosts where resnet is fast)",
            min_ms_per_sample=0.5,
        ),
        BenchModel(
            "lstm",
            (InputSpec("tokens", "int32", (200,)),),
            _lstm,
            "Embedding 10000x128 -> LSTM 128 -> Dense 1 sigmoid on int32 ids, length 200",
        ),
        BenchModel(
            "big_image",
            (InputSpec("image", "float32", (224, 224, 3)),),
            _big_image,
            "GlobalAveragePooling -> Dense 10 on 224x224x3 (602 KB per sample, little compute: bench.shared_memory)",
        ),
        BenchModel("tiny", (InputSpec("features", "float32", (8,)),), _tiny, "Dense 4 on 8 features (smoke test)"),
    )
}
DEFAULT_MODELS = ("seed_cnn", "resnet", "lstm")


def compute_bound_warnings(best_ms_per_sample: dict[str, float]) -> list[str]:
    """Why a run's compute-bound figures do not answer the issue's question on this machine, if they do not: a model
    under its ``min_ms_per_sample`` here is not compute-bound, whatever its name says."""
    warnings = []
    for name, ms in best_ms_per_sample.items():
        model = MODELS.get(name)
        if model is None or ms >= model.min_ms_per_sample:
            continue
        hint = ""
        if model.heavier:
            instead = ",".join(model.heavier if m == name else m for m in DEFAULT_MODELS)
            hint = f" (--models {instead} has a heavier one)"
        floor = model.min_ms_per_sample
        warnings.append(f"{name} costs {ms:.3f} ms/sample (< {floor:g}): not compute-bound here{hint}")
    return warnings


def export(model: BenchModel, repository: Path, version: int = 1, seed: int = 7) -> Path:
    """Build `model` with random weights and export it as <repository>/<name>/<version> (a tf_saved_model)."""
    import keras

    keras.utils.set_random_seed(seed)
    path = repository / model.name / str(version)
    model.build(keras).export(str(path), format="tf_saved_model", verbose=False)
    return path
