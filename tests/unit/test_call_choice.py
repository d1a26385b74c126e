"""The caller-thread choice (server/call_choice.py): alternate, time, keep the faster way per bucket of rows."""

from __future__ import annotations

import logging
import threading

import pytest

from kerve.server.call_choice import CallerThreadChoice, FixedCallerThread, bucket, logged_choices


def run(choice: CallerThreadChoice, rows: int, caller_ms: float, pool_ms: float) -> bool:
    """One batch: the way `choice` picks, 'timed' at the given cost of that way; returns the way taken."""
    caller_thread, timed = choice.choose(rows)
    if timed:
        choice.record(rows, caller_thread, (caller_ms if caller_thread else pool_ms) / 1e3)
    return caller_thread


def test_buckets_are_powers_of_two() -> None:
    assert [bucket(rows) for rows in (1, 2, 3, 4, 5, 8, 9, 32, 33)] == [1, 2, 4, 4, 8, 8, 16, 32, 64]


def test_it_alternates_in_blocks_until_each_way_has_its_trials_then_keeps_the_faster(
    caplog: pytest.LogCaptureFixture,
) -> None:
    choice = CallerThreadChoice(max_rows=8, trials=3, label="m/1 serving_default", block=2)
    caplog.set_level(logging.INFO, "kerve.server.call_choice")
    decisions = [choice.choose(3) for _ in range(4)]
    # blocks of two calls each way, the first of each block not timed (it pays for switching ways)
    assert decisions == [(True, False), (True, True), (False, False), (False, True)]
    for caller_thread, timed in decisions:
        if timed:
            choice.record(3, caller_thread, (0.3 if caller_thread else 0.5) / 1e3)
    ways = [run(choice, 3, caller_ms=0.3, pool_ms=0.5) for _ in range(8)]
    assert ways == [True, True, False, False, True, True, False, False]
    assert choice.chosen() == {4: True}
    assert [run(choice, 4, 0.3, 0.5) for _ in range(5)] == [True] * 5  # same bucket: decided, not timed
    assert choice.choose(4) == (True, False)
    assert "m/1 serving_default: batches of 3-4 rows run on the calling thread (median 0.300 ms there, 0.500" in (
        caplog.text
    )


def test_a_switch_call_that_pays_to_wake_the_pool_does_not_decide() -> None:
    """Each way's first call after a switch is slow (the pool's threads woke up): only the calls after it count."""
    choice = CallerThreadChoice(max_rows=8, trials=4, block=3)
    previous = None
    while not choice.chosen():
        caller_thread, timed = choice.choose(2)
        cost = (1.0 if caller_thread else 0.8) + (5.0 if caller_thread != previous else 0.0)
        previous = caller_thread
        if timed:
            choice.record(2, caller_thread, cost / 1e3)
    assert choice.chosen() == {2: False}


def test_each_bucket_decides_for_itself_and_the_pool_can_win() -> None:
    choice = CallerThreadChoice(max_rows=32, trials=2, block=2)
    for _ in range(8):
        run(choice, 1, caller_ms=0.2, pool_ms=0.4)
        run(choice, 20, caller_ms=9.0, pool_ms=7.0)
    assert choice.chosen() == {1: True, 32: False}
    assert run(choice, 17, 0.0, 0.0) is False and run(choice, 1, 0.0, 0.0) is True
    assert choice.choose(2) == (True, False)  # a bucket not seen yet starts its own trials


def test_the_median_decides_so_one_slow_outlier_does_not() -> None:
    choice = CallerThreadChoice(max_rows=8, trials=3, block=4)
    caller = iter([0.3, 50.0, 0.3])  # one preempted call on the caller's thread
    for _ in range(8):
        caller_thread, timed = choice.choose(1)
        if timed:
            choice.record(1, caller_thread, (next(caller) if caller_thread else 0.5) / 1e3)
    assert choice.chosen() == {1: True}


def test_batches_past_the_limit_and_empty_ones_run_on_the_pool_untimed() -> None:
    choice = CallerThreadChoice(max_rows=8)
    assert choice.choose(9) == (False, False) and choice.choose(0) == (False, False)
    off = CallerThreadChoice(max_rows=0)
    assert off.choose(1) == (False, False)
    with pytest.raises(ValueError, match="max_rows must be >= 0, trials >= 1 and block >= 2, got -1, 8 and 4"):
        CallerThreadChoice(max_rows=-1)
    with pytest.raises(ValueError):
        CallerThreadChoice(trials=0)
    with pytest.raises(ValueError):
        CallerThreadChoice(block=1)


def test_a_late_duration_after_the_choice_is_ignored() -> None:
    choice = CallerThreadChoice(max_rows=4, trials=1, block=2)
    # two batches in flight at once, both timed: each the second call of its block (the first pays the switch)
    switch_1, first, switch_2, second = (choice.choose(1) for _ in range(4))
    assert (switch_1, first, switch_2, second) == ((True, False), (True, True), (False, False), (False, True))
    choice.record(1, True, 0.001)
    choice.record(1, False, 0.002)
    assert choice.chosen() == {1: True}
    choice.record(1, False, 0.0001)  # a third timed call finishing late changes nothing
    assert choice.chosen() == {1: True}


def test_concurrent_callers_each_get_one_decision() -> None:
    choice = CallerThreadChoice(max_rows=8, trials=50)
    barrier = threading.Barrier(4)

    def serve() -> None:
        barrier.wait()
        for _ in range(200):
            run(choice, 2, caller_ms=1.0, pool_ms=2.0)

    threads = [threading.Thread(target=serve) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads)
    assert choice.chosen() == {2: True}


def test_a_fixed_limit_is_never_timed_and_auto_times_up_to_its_limit() -> None:
    from kerve.server.call_choice import AUTO_MAX_ROWS, FixedCallerThread, policy

    fixed = policy(4)
    assert isinstance(fixed, FixedCallerThread)
    assert [fixed.choose(rows) for rows in (1, 4, 5)] == [(True, False), (True, False), (False, False)]
    fixed.record(1, True, 1.0)  # ignored
    assert policy(0).choose(1) == (False, False)
    auto = policy(None, "m/1")
    assert isinstance(auto, CallerThreadChoice) and auto.max_rows == AUTO_MAX_ROWS and auto.label == "m/1"
    assert [auto.choose(AUTO_MAX_ROWS)[1] for _ in range(2)] == [False, True]  # a switch call, then timed ones
    assert auto.choose(AUTO_MAX_ROWS + 1) == (False, False)
    with pytest.raises(ValueError, match="max_rows must be >= 0"):
        FixedCallerThread(-1)


def test_the_logged_choices_read_back_from_a_servers_log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "kerve.server.call_choice")
    caplog.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [p1] %(name)s: %(message)s"))
    choice = CallerThreadChoice(max_rows=32, trials=1, label="m/1 serving_default on /device:CPU:0", block=2)
    while len(choice.chosen()) < 2:
        run(choice, 1, caller_ms=0.25, pool_ms=0.5)
        run(choice, 20, caller_ms=9.0, pool_ms=7.5)
    text = "unrelated line: batches of 3 rows run on nothing\n" + caplog.text
    assert logged_choices(text) == [
        {"label": "m/1 serving_default on /device:CPU:0", "rows": "1", "caller_thread": True, "median_ms": 0.25,
         "other_ms": 0.5},
        {"label": "m/1 serving_default on /device:CPU:0", "rows": "17-32", "caller_thread": False, "median_ms": 7.5,
         "other_ms": 9.0},
    ]  # fmt: skip
    assert logged_choices("") == []


def _trials(choice: CallerThreadChoice, rows: int, caller_ms: float, pool_ms: float) -> int:
    """Run batches until the bucket being timed decides; the number of calls it took."""
    size = bucket(rows)
    calls = 0
    while True:
        caller_thread, timed = choice.choose(rows)
        calls += 1
        if timed:
            choice.record(rows, caller_thread, (caller_ms if caller_thread else pool_ms) / 1e3)
            if choice._buckets[size].chosen is not None:  # noqa: SLF001 - the trials' end, not visible from chosen()
                return calls
        assert calls < 1000, "the trials never ended"


def _kept_calls(choice: CallerThreadChoice, rows: int) -> int:
    """Run batches until one is timed again (the re-time began); how many ran the chosen way before it."""
    untimed = 0
    while not choice.choose(rows)[1]:
        untimed += 1
        assert untimed < 10_000, "the bucket was never timed again"
    return untimed - 1  # the re-time's first call is a block's untimed switch call


def test_a_choice_is_timed_again_later_and_the_wait_doubles_while_it_holds(caplog: pytest.LogCaptureFixture) -> None:
    choice = CallerThreadChoice(max_rows=8, trials=2, block=2, retime_after=10, retime_max=40, label="m")
    caplog.set_level(logging.DEBUG, "kerve.server.call_choice")
    _trials(choice, 1, caller_ms=0.2, pool_ms=0.4)
    assert choice.chosen() == {1: True}
    waits = []
    for _ in range(4):
        waits.append(_kept_calls(choice, 1))
        assert choice.chosen() == {1: True}  # while the trials run, the standing choice is what is reported
        _trials(choice, 1, caller_ms=0.2, pool_ms=0.4)
    assert waits == [10, 20, 40, 40]
    assert "m: batches of 1 rows still run on the calling thread" in caplog.text
    assert [c["caller_thread"] for c in logged_choices(caplog.text)] == [True] * 5


def test_a_choice_the_load_turned_around_changes_and_its_wait_starts_over(caplog: pytest.LogCaptureFixture) -> None:
    choice = CallerThreadChoice(max_rows=8, trials=2, block=2, retime_after=10, retime_max=40, label="m")
    caplog.set_level(logging.INFO, "kerve.server.call_choice")
    _trials(choice, 3, caller_ms=0.2, pool_ms=0.4)
    _kept_calls(choice, 3)
    _trials(choice, 3, caller_ms=0.2, pool_ms=0.4)  # confirmed: the next wait is 20
    assert _kept_calls(choice, 3) == 20
    _trials(choice, 3, caller_ms=0.9, pool_ms=0.4)  # the pool is faster now
    assert choice.chosen() == {4: False}
    assert [run(choice, 3, 0.9, 0.4) for _ in range(5)] == [False] * 5
    assert _kept_calls(choice, 3) == 10 - 5
    # INFO shows the first choice and the change, not the confirmation (DEBUG)
    assert [c["caller_thread"] for c in logged_choices(caplog.text)] == [True, False]
    assert "m: batches of 3-4 rows now run on TensorFlow's inter-op pool (median 0.400 ms there, 0.900" in caplog.text


def test_retime_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="retime_after must be in 1..retime_max, got 0 and 65536"):
        CallerThreadChoice(retime_after=0)
    with pytest.raises(ValueError, match="got 100 and 50"):
        CallerThreadChoice(retime_after=100, retime_max=50)


@pytest.mark.parametrize(("trials", "block"), [(8, 4), (2, 2), (3, 4), (5, 3)])
def test_trial_calls_bounds_the_calls_a_buckets_first_trials_take(trials: int, block: int) -> None:
    # what a benchmark warms a timed batch size up with (bench.inprocess.warmup_calls): enough, and not a block more
    choice = CallerThreadChoice(max_rows=8, trials=trials, block=block)
    took = _trials(choice, 1, caller_ms=0.2, pool_ms=0.4)
    assert choice.trial_calls() - block < took <= choice.trial_calls()
    assert FixedCallerThread(4).trial_calls() == 0
