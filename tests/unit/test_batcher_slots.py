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


class Scripted:
    """A SlotChoice stand-in: after each completed batch, the next limit of `script` (None: no change)."""

    def __init__(self, *script: int | None) -> None:
        self.limit = 1
        self.script = list(script)
        self.rows: list[int] = []

    def observe(self, now: float, rows: int, call_s: float, queued: int) -> int | None:
        self.rows.append(rows)
        limit = self.script.pop(0) if self.script else None
        if limit is not None:
            self.limit = limit
        return limit


def test_auto_applies_its_choices_limit_at_once_both_ways() -> None:
    """Raised: the queued batch starts beside the running one. Lowered while two run: the slot of the first to end
    goes with it, so a request queued meanwhile waits for the second."""

    async def main() -> None:
        r = Gated()
        config = BatchingConfig(max_batch_size=8, max_queue_delay_s=0, batches_per_replica="auto")
        choice = Scripted(2, 1)
        batcher = Batcher([r], config, clock=FakeClock(), slots=choice)  # type: ignore[arg-type]
        first = await busy(batcher, 0)
        second = submit(batcher, rows(1))
        await spin(lambda: batcher.queued_samples == 1)  # one slot to begin with
        r.open(0)  # the choice raises the limit to two as the first batch ends
        await settle(lambda: len(r.calls) == 2)
        third = await busy(batcher, 2)  # starts beside the second at once
        assert batcher.in_flight_batches == 2 and len(r.calls) == 3
        r.open(1)  # the second ends and the choice lowers the limit: its slot goes
        await settle(lambda: choice.rows == [1, 1])
        fourth = submit(batcher, rows(3))
        await spin(lambda: batcher.queued_samples == 1)
        assert batcher.in_flight_batches == 1
        r.open(2)  # the third ends: its slot, the one left, takes the fourth
        await settle(lambda: len(r.calls) == 4)
        r.open(3)
        for i, out in enumerate(await asyncio.gather(first, second, third, fourth)):
            np.testing.assert_array_equal(out["y"], rows(i) * 2)
        await batcher.close()

    run(main())


def test_auto_lowered_keeps_free_slots_only_up_to_the_limit() -> None:
    """Two replicas at two slots each, all free but one: lowered to one, each replica keeps one slot in all, so
    the replica still running a batch has none free and the other takes the next batch."""

    async def main() -> None:
        r0, r1 = Gated(), Gated()
        config = BatchingConfig(max_batch_size=8, max_queue_delay_s=0, batches_per_replica="auto")
        choice = Scripted(2, None, 1)
        batcher = Batcher([r0, r1], config, clock=FakeClock(), slots=choice)  # type: ignore[arg-type]
        running = [await busy(batcher, i) for i in range(2)]  # one on each replica
        r0.open(0)  # limit two: r0 free twice, r1 once
        await settle(lambda: choice.limit == 2 and batcher.in_flight_batches == 1)
        running.append(await busy(batcher, 2))  # the replica running fewest: r0
        await settle(lambda: len(r0.calls) == 2)
        r0.open(1)  # no change
        await settle(lambda: len(choice.rows) == 2 and batcher.in_flight_batches == 1)
        r1.open(0)  # limit one: r1 keeps its freed slot, r0 one of its two
        await settle(lambda: choice.limit == 1 and batcher.in_flight_batches == 0)
        running += [await busy(batcher, 3), await busy(batcher, 4)]
        extra = submit(batcher, rows(5))
        await spin(lambda: batcher.queued_samples == 1)  # two slots in all now, both taken
        await settle(lambda: (len(r0.calls), len(r1.calls)) == (3, 2))
        assert batcher.in_flight_batches == 2
        r0.open(2), r1.open(1)
        await settle(lambda: len(r0.calls) + len(r1.calls) == 6)
        for gate in (r0, r1):
            for k in range(len(gate.calls)):
                gate.open(k)
        for i, out in enumerate(await asyncio.gather(*running, extra)):
            np.testing.assert_array_equal(out["y"], rows(i) * 2)
        await batcher.close()

    run(main())


def test_auto_without_a_choice_runs_one_batch_at_a_time() -> None:
    """What a batcher on a GPU or TPU gets (slot_choice.learns_slots): `auto` is one batch there."""

    async def main() -> None:
        model = FakeModel(block=True)
        config = BatchingConfig(max_batch_size=8, max_queue_delay_s=0, batches_per_replica="auto")
        batcher = Batcher([model], config, clock=FakeClock())
        first = await busy(batcher, 0)
        second = submit(batcher, rows(1))
        await spin(lambda: batcher.queued_samples == 1)
        assert batcher.in_flight_batches == 1
        model.release.set()
        await asyncio.gather(first, second)
        await batcher.close()

    run(main())


def test_auto_is_sized_for_two_and_other_words_are_refused() -> None:
    assert BatchingConfig(batches_per_replica="auto").most_batches_per_replica == 2
    assert BatchingConfig(batches_per_replica=3).most_batches_per_replica == 3
    config = parse_model_config({"batching": {"batches_per_replica": "auto"}})
    assert BatchingConfig.from_mapping(config.batching).batches_per_replica == "auto"
    with pytest.raises(ValueError, match="batches_per_replica must be an integer or 'auto', got 'two'"):
        BatchingConfig(batches_per_replica="two")


@pytest.mark.parametrize("value", [0, -1, MAX_BATCHES_PER_REPLICA + 1, 1.5, "2", True])
def test_batches_per_replica_must_be_a_small_positive_integer(value: object) -> None:
    with pytest.raises(ValueError, match="batches_per_replica"):
        BatchingConfig(batches_per_replica=value)  # type: ignore[arg-type]


def test_config_yaml_sets_batches_per_replica_and_rejects_a_bad_one() -> None:
    config = parse_model_config({"batching": {"batches_per_replica": 2}})
    assert BatchingConfig.from_mapping(config.batching).batches_per_replica == 2
    with pytest.raises(ModelConfigError, match="batches_per_replica"):
        parse_model_config({"batching": {"batches_per_replica": 0}})
