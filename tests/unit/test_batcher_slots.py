"""`batches_per_replica`: one replica running several batches at once (TF Serving's num_batch_threads, Triton's
instances per device), driven by fake models as in test_batcher.py: no TensorFlow, no fixed sleeps."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
from test_batcher import BOUND_S, FakeClock, FakeModel, busy, rows, run, settle, spin, submit

from kerve.server.batcher import MAX_BATCHES_PER_REPLICA, Batcher, BatchingConfig, BatchStats
from kerve.server.model_config import ModelConfigError, parse_model_config


def test_two_batches_run_at_once_on_one_replica() -> None:
    barrier = threading.Barrier(2, timeout=BOUND_S)

    def replica(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        barrier.wait()  # breaks (-> INTERNAL) unless two batches are inside this one replica at the same time
        return {"y": inputs["x"] * 2}

    async def main() -> None:
        config = BatchingConfig(max_batch_size=4, batches_per_replica=2)
        batcher = Batcher([replica], config, clock=FakeClock())
        x = rows(*range(8))  # split into two batches of 4
        out = await batcher.submit({"x": x})
        np.testing.assert_array_equal(out["y"], x * 2)
        await batcher.close()

    run(main())


def test_with_one_batch_per_replica_a_second_batch_waits_for_the_first() -> None:
    async def main() -> None:
        model = FakeModel(block=True)
        batcher = Batcher([model], BatchingConfig(max_batch_size=8, max_queue_delay_s=0), clock=FakeClock())
        first = await busy(batcher, 0)
        second = submit(batcher, rows(1))
        await spin(lambda: batcher.queued_samples == 1)
        assert batcher.in_flight_batches == 1 and model.sizes == [1]
        model.release.set()
        await asyncio.gather(first, second)
        assert model.sizes == [1, 1]
        await batcher.close()

    run(main())


def test_a_replicas_slots_fill_before_requests_queue() -> None:
    async def main() -> None:
        model = FakeModel(block=True)
        config = BatchingConfig(max_batch_size=8, max_queue_delay_s=0, batches_per_replica=3)
        batcher = Batcher([model], config, clock=FakeClock())
        running = [await busy(batcher, i) for i in range(3)]  # three batches in the one replica
        queued = submit(batcher, rows(3))
        await spin(lambda: batcher.queued_samples == 1)
        assert batcher.in_flight_batches == 3
        model.release.set()
        results = await asyncio.gather(*running, queued)
        for i, out in enumerate(results):
            np.testing.assert_array_equal(out["y"], rows(i) * 2)
        await batcher.close()

    run(main())


def test_every_replica_takes_a_batch_before_any_takes_a_second() -> None:
    async def main() -> None:
        release = threading.Event()
        models = [FakeModel(block=True, release=release), FakeModel(block=True, release=release)]
        seen: list[int] = []

        def on_batch(stats: BatchStats) -> None:
            seen.append(stats.replica)  # the replica's index, whichever of its slots ran the batch

        config = BatchingConfig(max_batch_size=8, max_queue_delay_s=0, batches_per_replica=2)
        batcher = Batcher(models, config, clock=FakeClock(), on_batch=on_batch)
        running = [await busy(batcher, i) for i in range(2)]
        assert [len(m.calls) for m in models] == [1, 1]
        running += [await busy(batcher, i) for i in range(2, 4)]
        assert [len(m.calls) for m in models] == [2, 2]
        release.set()
        await asyncio.gather(*running)
        await settle(lambda: len(seen) == 4)
        assert sorted(seen) == [0, 0, 1, 1]
        await batcher.close()

    run(main())


class Gated:
    """A replica whose every call waits for its own event: `open(k)` lets the k-th call (in arrival order) return."""

    def __init__(self) -> None:
        self.calls: list[threading.Event] = []
        self._lock = threading.Lock()

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        gate = threading.Event()
        with self._lock:
            self.calls.append(gate)
        if not gate.wait(BOUND_S):
            raise RuntimeError("test call was never let through")
        return {"y": inputs["x"] * 2}

    def open(self, k: int) -> None:
        self.calls[k].set()


def test_a_batch_goes_to_the_replica_running_fewest_batches_not_the_slot_freed_first() -> None:
    async def main() -> None:
        r0, r1 = Gated(), Gated()
        config = BatchingConfig(max_batch_size=8, max_queue_delay_s=0, batches_per_replica=2)
        batcher = Batcher([r0, r1], config, clock=FakeClock())
        running = [await busy(batcher, i) for i in range(4)]  # both slots of both replicas
        await settle(lambda: (len(r0.calls), len(r1.calls)) == (2, 2))
        r1.open(0)  # r1 frees a slot first: one batch left on it
        await settle(lambda: batcher.in_flight_batches == 3)
        r0.open(0), r0.open(1)  # then r0 frees both, later: it runs nothing
        await settle(lambda: batcher.in_flight_batches == 1)
        last = await busy(batcher, 4)
        await settle(lambda: len(r0.calls) + len(r1.calls) == 5)
        assert (len(r0.calls), len(r1.calls)) == (3, 2)  # r0, idle, not r1's slot that was freed first
        r0.open(2), r1.open(1)
        for i, out in enumerate(await asyncio.gather(*running, last)):
            np.testing.assert_array_equal(out["y"], rows(i) * 2)
        await batcher.close()

    run(main())


@pytest.mark.parametrize("value", [0, -1, MAX_BATCHES_PER_REPLICA + 1, 1.5, "2", True])
def test_batches_per_replica_must_be_a_small_positive_integer(value: object) -> None:
    with pytest.raises(ValueError, match="batches_per_replica"):
        BatchingConfig(batches_per_replica=value)  # type: ignore[arg-type]


def test_config_yaml_sets_batches_per_replica_and_rejects_a_bad_one() -> None:
    config = parse_model_config({"batching": {"batches_per_replica": 2}})
    assert BatchingConfig.from_mapping(config.batching).batches_per_replica == 2
    with pytest.raises(ModelConfigError, match="batches_per_replica"):
        parse_model_config({"batching": {"batches_per_replica": 0}})
