"""Equal shards for a mirrored model: padding up to a multiple of the device count, and cut back off the outputs."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from kerve.server.sharding import shard, unshard


def test_a_batch_that_divides_is_split_as_it_is() -> None:
    x = np.arange(8, dtype=np.float32).reshape(4, 2)
    parts, rows = shard({"x": x}, 2)
    assert rows == 4
    assert [p["x"].tolist() for p in parts] == [[[0, 1], [2, 3]], [[4, 5], [6, 7]]]


@pytest.mark.parametrize(("rows", "shards", "per_shard"), [(1, 2, 1), (3, 2, 2), (5, 4, 2), (1, 8, 1), (9, 8, 2)])
def test_every_shard_gets_the_same_rows_and_none_is_empty(rows: int, shards: int, per_shard: int) -> None:
    x = np.arange(rows * 3, dtype=np.int64).reshape(rows, 3)
    ids = np.arange(rows, dtype=np.int32)
    parts, real = shard({"x": x, "ids": ids}, shards)
    assert real == rows and len(parts) == shards
    assert {p["x"].shape for p in parts} == {(per_shard, 3)} and {p["ids"].shape for p in parts} == {(per_shard,)}
    joined = np.concatenate([p["x"] for p in parts])
    np.testing.assert_array_equal(joined[:rows], x)  # the real rows, in order
    assert (joined[rows:] == x[-1]).all()  # the padding repeats the last real row: valid input for any model


def test_unshard_joins_in_order_and_drops_the_padding() -> None:
    parts, rows = shard({"x": np.arange(3, dtype=np.float32)[:, None]}, 2)
    outputs = [{"y": p["x"] * 10, "z": p["x"]} for p in parts]  # what each device answered
    joined = unshard(outputs, ["y"], rows)
    assert list(joined) == ["y"]
    assert joined["y"][:, 0].tolist() == [0, 10, 20]


def test_shards_must_be_positive() -> None:
    with pytest.raises(ValueError, match="shards must be >= 1, got 0"):
        shard({"x": np.zeros((1, 1))}, 0)


def test_sharding_does_not_import_tensorflow() -> None:
    code = "import sys, kerve.server.sharding; sys.exit('tensorflow' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0
