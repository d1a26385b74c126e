"""A signature with an output of the whole call (no batch dimension: a count, a fixed label list) is never
batched: cut into rows, such an output would hand each caller a piece of it, or fail every batch."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from kerve.client import Client

pytestmark = pytest.mark.integration


def test_requests_of_a_signature_with_whole_call_outputs_run_one_by_one(zoo) -> None:
    with Client(zoo.target) as client:
        assert client.config("whole").max_batch_size == 0  # as Triton requires for such a model

        def call(i: int) -> tuple[list[bytes], int, list[list[float]]]:
            outputs = client.infer("whole", {"x": np.full((1, 2), i, np.float32)}).outputs
            return outputs["labels"].tolist(), int(outputs["rows"]), outputs["y"].tolist()

        with ThreadPoolExecutor(8) as pool:  # at once: a batcher would have joined them
            answers = list(pool.map(call, range(32)))
    for i, (labels, rows, y) in enumerate(answers):
        assert (labels, rows, y) == ([b"cat", b"dog"], 1, [[2.0 * i, 2.0 * i]])
