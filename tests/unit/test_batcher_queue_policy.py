"""Triton's queue policies in kerve.server.batcher: timeouts (reject, delay), overrides, queue sizes per level.

Same harness as test_batcher: fake models that block on an event, a FakeClock for the batcher's decisions; the one
real-time element is the expiry timer of the tests that check a timeout strikes while the model is still busy.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest
import yaml
from test_batcher import FakeClock, FakeModel, busy, error_of, rows, run, settle, spin, submit

from kerve.server.batcher import Batcher, BatchingConfig
from kerve.server.errors import ErrorCode
from kerve.server.queue_policy import QueuePolicy


def test_a_request_that_times_out_in_the_queue_is_rejected_at_once_and_never_runs() -> None:
    async def main() -> None:
        clock = FakeClock()
        model = FakeModel(block=True)
        config = BatchingConfig(max_batch_size=8, queue_policy={"timeout_s": 0.02})
        actions: list[str] = []
        batcher = Batcher([model], config, clock=clock, on_timeout=actions.append)
        first = await busy(batcher, 0)  # started before it could time out: runs to the end
        late = submit(batcher, rows(1))
        await spin(lambda: batcher.queued_samples == 1)
        clock.advance(0.03)
        await settle(late.done)  # the timer answers it while the model is still busy
        assert not first.done()
        err = await error_of(late)
        assert err.code is ErrorCode.UNAVAILABLE  # the server shed it (as Triton does): the caller may retry
        assert "waited 30.0 ms in the queue, past its queue policy's timeout (20.0 ms)" in err.message
        assert batcher.queued_samples == 0 and actions == ["reject"]
        model.release.set()
        await first
        assert model.seen == [0]
        await batcher.close()

    run(main())


def test_a_delayed_request_goes_after_its_levels_others_and_before_the_next_level() -> None:
    async def main() -> None:
        clock = FakeClock()
        model = FakeModel(block=True)
        config = BatchingConfig(
            max_batch_size=1,
            max_queue_delay_s=0,
            priority_levels=2,
            priority_queue_policy={1: {"timeout_s": 1.0, "timeout_action": "delay"}},
        )
        batcher = Batcher([model], config, clock=clock)
        first = await busy(batcher, 0)
        old = submit(batcher, rows(1), priority=1)
        await spin(lambda: batcher.queued_samples == 1)
        clock.advance(2.0)  # `old` is past its timeout, whether the timer or the next batch notices first
        queued = [submit(batcher, rows(2), priority=1), submit(batcher, rows(3), priority=2)]
        await spin(lambda: batcher.queued_samples == 3)
        model.release.set()
        outs = await asyncio.gather(first, old, *queued)
        assert model.seen == [0, 2, 1, 3]  # delayed, not rejected: it runs once its level's fresh request has
        np.testing.assert_array_equal(outs[1]["y"], rows(2))
        await batcher.close()

    run(main())


def test_without_priority_levels_a_delayed_request_fills_the_batch_after_fresh_ones() -> None:
    async def main() -> None:
        clock = FakeClock()
        model = FakeModel(block=True)
        config = BatchingConfig(
            max_batch_size=8, max_queue_delay_s=0, queue_policy={"timeout_s": 1.0, "timeout_action": "delay"}
        )
        actions: list[str] = []
        batcher = Batcher([model], config, clock=clock, on_timeout=actions.append)
        first = await busy(batcher, 0)
        old = submit(batcher, rows(1))
        await spin(lambda: batcher.queued_samples == 1)
        clock.advance(2.0)
        await settle(lambda: batcher._expiry_timer is None)  # delayed by the timer: nothing left to watch
        fresh = [submit(batcher, rows(v)) for v in (2, 3)]
        await spin(lambda: batcher.queued_samples == 3)
        model.release.set()
        await asyncio.gather(first, old, *fresh)
        assert model.seen == [0, 2, 3, 1] and model.sizes == [1, 3] and actions == ["delay"]
        await batcher.close()

    run(main())


def test_a_request_timeout_shortens_the_policys_where_overrides_are_allowed() -> None:
    async def main() -> None:
        clock = FakeClock()
        model = FakeModel(block=True)
        policy = {"timeout_s": 10.0, "allow_timeout_override": True}
        batcher = Batcher([model], BatchingConfig(max_batch_size=8, queue_policy=policy), clock=clock)
        first = await busy(batcher, 0)
        short = submit(batcher, rows(1), timeout_s=0.02)
        longer = submit(batcher, rows(2), timeout_s=100.0)  # may not lengthen the policy's 10 s
        await spin(lambda: batcher.queued_samples == 2)
        clock.advance(0.03)
        await settle(short.done)
        err = await error_of(short)
        assert err.code is ErrorCode.DEADLINE_EXCEEDED and "timed out after 30.0 ms in the queue" in err.message
        assert "(its timeout: 20.0 ms)" in err.message  # its own timeout: as a deadline would
        assert not longer.done()
        clock.advance(10.0)  # the timer runs on real time: the next batch's formation finds it timed out
        model.release.set()
        err = await error_of(longer)
        assert err.code is ErrorCode.UNAVAILABLE and "queue policy's timeout (10000.0 ms)" in err.message
        await first
        assert model.seen == [0]
        await batcher.close()

    run(main())


def test_without_the_override_a_request_timeout_stays_a_deadline() -> None:
    """A model with no policy, or one that allows no overrides: the request's timeout bounds the request as a
    deadline would (kerve's rule; Triton would ignore it), whatever the policy's own timeout and action."""

    async def main() -> None:
        clock = FakeClock()
        model = FakeModel(block=True)
        policy = {"timeout_s": 10.0, "timeout_action": "delay"}
        batcher = Batcher([model], BatchingConfig(max_batch_size=8, queue_policy=policy), clock=clock)
        first = await busy(batcher, 0)
        timed = submit(batcher, rows(1), timeout_s=1.0)
        kept = submit(batcher, rows(2))
        await spin(lambda: batcher.queued_samples == 2)
        clock.advance(2.0)
        model.release.set()
        err = await error_of(timed)
        assert err.code is ErrorCode.DEADLINE_EXCEEDED and "deadline exceeded" in err.message
        np.testing.assert_array_equal((await kept)["y"], rows(4))
        await first
        assert model.seen == [0, 2]
        await batcher.close()

    run(main())


def test_max_queue_size_bounds_each_level_and_frees_up_as_requests_leave() -> None:
    async def main() -> None:
        clock = FakeClock()
        model = FakeModel(block=True)
        config = BatchingConfig(
            max_batch_size=8,
            max_queue_delay_s=0,
            priority_levels=2,
            queue_policy={"max_queue_size": 2},
            priority_queue_policy={1: {"max_queue_size": 1}},
        )
        batcher = Batcher([model], config, clock=clock)
        first = await busy(batcher, 0)
        top = submit(batcher, rows(1, 1), priority=1)  # a request of two rows counts once: Triton counts requests
        await spin(lambda: batcher.queued_samples == 2)
        err = await error_of(batcher.submit({"x": rows(9)}, priority=1))
        assert err.code is ErrorCode.RESOURCE_EXHAUSTED
        assert "priority level 1's queue is full (1 requests" in err.message
        low = [submit(batcher, rows(v), priority=2) for v in (2, 3)]
        await spin(lambda: batcher.queued_samples == 4)
        err = await error_of(batcher.submit({"x": rows(9)}, priority=2))
        assert "priority level 2's queue is full (2 requests" in err.message
        low[0].cancel()  # a cancelled request leaves its level's queue
        await spin(lambda: batcher.queued_samples == 3)
        low.append(submit(batcher, rows(4), priority=2))
        await spin(lambda: batcher.queued_samples == 4)
        model.release.set()
        await asyncio.gather(first, top, low[1], low[2])
        assert model.seen == [0, 1, 1, 3, 4]
        again = [submit(batcher, rows(5), priority=1), submit(batcher, rows(6), priority=2)]  # drained: room again
        await asyncio.gather(*again)
        await batcher.close()

    run(main())


def test_a_delayed_request_still_counts_against_its_levels_queue_size() -> None:
    async def main() -> None:
        clock = FakeClock()
        model = FakeModel(block=True)
        policy = {"timeout_s": 1.0, "timeout_action": "delay", "max_queue_size": 1}
        batcher = Batcher([model], BatchingConfig(max_batch_size=8, queue_policy=policy), clock=clock)
        first = await busy(batcher, 0)
        old = submit(batcher, rows(1))
        await spin(lambda: batcher.queued_samples == 1)
        clock.advance(2.0)
        await settle(lambda: batcher._expiry_timer is None)
        err = await error_of(batcher.submit({"x": rows(2)}))
        assert err.code is ErrorCode.RESOURCE_EXHAUSTED
        model.release.set()
        await asyncio.gather(first, old)
        await batcher.close()

    run(main())


def test_a_lower_levels_deadline_strikes_while_higher_levels_keep_the_replicas_busy() -> None:
    """A lower level (or a delayed request) waits as long as higher levels fill every batch, so no batch ever
    reaches it to check its deadline: its own timer fails it, DEADLINE_EXCEEDED, while the model is still busy.
    So does a request timeout that becomes a deadline (no override allowed), and a delayed request's deadline."""

    async def main() -> None:
        clock = FakeClock()
        model = FakeModel(block=True)
        delay = {"timeout_s": 0.001, "timeout_action": "delay"}
        config = BatchingConfig(max_batch_size=1, priority_levels=2, priority_queue_policy={2: delay})
        batcher = Batcher([model], config, clock=clock)
        first = await busy(batcher, 0)
        high = submit(batcher, rows(1), priority=1)
        low = submit(batcher, rows(2), priority=2, deadline=clock.now + 0.05)
        timed = submit(batcher, rows(3), priority=2, timeout_s=0.05)  # the level's policy allows no override
        await spin(lambda: batcher.queued_requests == 3)
        await settle(lambda: batcher._expiry_timer is not None and batcher._expiry_when > 0.001)  # delayed
        clock.advance(0.06)
        await settle(lambda: low.done() and timed.done())  # the model never finished a batch meanwhile
        assert not first.done() and not high.done()
        for failed in (low, timed):
            err = await error_of(failed)
            assert err.code is ErrorCode.DEADLINE_EXCEEDED and "deadline exceeded after 0.060s" in err.message
        assert batcher.queued_requests == 1 and batcher.queued_samples == 1  # the high one, still waiting
        model.release.set()
        await asyncio.gather(first, high)
        assert model.seen == [0, 1]  # the expired ones never ran
        await batcher.close()

    run(main())


def test_timeouts_of_requests_that_left_do_not_pile_up() -> None:
    """Every request with a queue timeout leaves an entry for the expiry timer; entries of requests that were
    batched are swept, so a busy model with a long timeout keeps a bounded heap (and no request arrays alive)."""

    async def main() -> None:
        model = FakeModel()
        batcher = Batcher([model], BatchingConfig(max_batch_size=64, queue_policy={"timeout_s": 3600.0}))
        for start in range(0, 4000, 100):
            await asyncio.gather(*(submit(batcher, rows(v)) for v in range(start, start + 100)))
        assert len(model.seen) == 4000
        assert len(batcher._expiry) <= 2100
        await batcher.close()
        assert batcher._expiry_timer is None and not batcher._expiry

    run(main())


def test_closing_without_drain_stops_the_expiry_timer() -> None:
    async def main() -> None:
        model = FakeModel(block=True)
        batcher = Batcher([model], BatchingConfig(queue_policy={"timeout_s": 3600.0}), clock=FakeClock())
        first = await busy(batcher, 0)
        queued = submit(batcher, rows(1))
        await spin(lambda: batcher.queued_samples == 1)
        assert batcher._expiry_timer is not None
        closing = asyncio.ensure_future(batcher.close(drain=False))
        assert (await error_of(queued)).code is ErrorCode.UNAVAILABLE
        assert batcher._expiry_timer is None
        model.release.set()
        await asyncio.gather(first, closing)

    run(main())


# ----------------------------------------------------------------------------------------------- config


def test_policies_from_config_yaml() -> None:
    text = """
    priority_levels: 3
    queue_policy: {timeout_s: 5e-3, max_queue_size: 10}
    priority_queue_policy:
      1: {timeout_action: delay, allow_timeout_override: true}
      "3": {}
    """
    config = BatchingConfig.from_mapping(yaml.safe_load(text))
    assert config.queue_policy == QueuePolicy(timeout_s=0.005, max_queue_size=10)
    assert config.policy(1) == QueuePolicy(timeout_action="delay", allow_timeout_override=True)
    assert config.policy(2) is config.queue_policy and config.policy(3) == QueuePolicy()
    assert config == BatchingConfig(**{f: getattr(config, f) for f in config.__dataclass_fields__})
    hash(config)  # frozen, so it can key a cache
    assert BatchingConfig().policy(0) == QueuePolicy()


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"queue_policy": {"timeout_s": -1}}, "timeout_s must be a finite number >= 0"),
        ({"queue_policy": {"timeout_s": "soon"}}, "timeout_s must be a number of seconds"),
        ({"queue_policy": {"timeout_action": "drop"}}, "timeout_action must be reject or delay"),
        ({"queue_policy": {"allow_timeout_override": "yes"}}, "allow_timeout_override must be true or false"),
        ({"queue_policy": {"max_queue_size": -1}}, "max_queue_size must be an integer from 0"),
        ({"queue_policy": {"max_queue_size": 2**32}}, "max_queue_size must be an integer from 0"),
        ({"queue_policy": {"max_queue": 1}}, "unknown queue_policy option 'max_queue'"),
        ({"queue_policy": [1]}, "queue_policy must be a mapping"),
        ({"priority_queue_policy": {1: {}}}, "priority_queue_policy needs priority_levels >= 1"),
        ({"priority_levels": 2, "priority_queue_policy": {3: {}}}, "level 3 is not one of the model's priority"),
        ({"priority_levels": 2, "priority_queue_policy": {"top": {}}}, "keys must be priority levels"),
        ({"priority_levels": 2, "priority_queue_policy": [1]}, "must map priority levels to queue policies"),
        ({"priority_levels": 2, "priority_queue_policy": {1: {"timeout": 1}}}, "priority_queue_policy[1] option"),
    ],
)
def test_policy_validation(kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        BatchingConfig(**kwargs)
    assert fragment in str(info.value)
