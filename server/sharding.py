"""Split one batch into equal shards, one per device of a mirrored model, and put the answers back together.

A batch whose rows do not divide by the device count is padded up to the next multiple (its last row repeated, as
the batcher pads to allowed_batch_sizes), and the padding is cut off the outputs again. Every device then gets the
same shape: a TPU compiles one XLA program per input shape, so uneven shards would mean two programs per batch size
and an empty shard a third; and no device is handed a zero-row tensor, which not every kernel accepts. The padded
rows cost nothing in wall time, as they run on devices that would otherwise wait for the fullest shard.

Pure numpy, so the arithmetic is tested without TensorFlow.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .batcher import pad_rows


def shard(inputs: Mapping[str, np.ndarray], shards: int) -> tuple[list[dict[str, np.ndarray]], int]:
    """One dict of inputs per shard, all with the same number of rows, and the batch's real row count."""
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    rows = int(next(iter(inputs.values())).shape[0]) if inputs else 0
    padded = -(-rows // shards) * shards
    if padded != rows:
        inputs = {name: pad_rows(value, padded - rows) for name, value in inputs.items()}
    parts = {name: np.split(value, shards) for name, value in inputs.items()}
    return [{name: split[i] for name, split in parts.items()} for i in range(shards)], rows


def unshard(per_shard: Sequence[Mapping[str, np.ndarray]], names: Sequence[str], rows: int) -> dict[str, np.ndarray]:
    """The shards' outputs joined in shard order, without the padding rows."""
    return {name: np.concatenate([part[name] for part in per_shard])[:rows] for name in names}
