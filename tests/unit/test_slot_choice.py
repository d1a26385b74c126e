"""`batches_per_replica: auto`'s choice (server/slot_choice.py), fed made-up batch completions: no batcher, no TF."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest

from kerve.server.slot_choice import SlotChoice, learns_slots, logged_choices

STEP_S = 0.05  # one completion every 50 ms


class Feed:
    """Completions from a made-up model: each STEP_S, a batch whose rows give `rate(limit)` rows/s, whose call
    kept the replicas `busy` of the time, and that ended with `queued` rows waiting. Records every limit the choice
    returns, with its time."""

    def __init__(self, choice: SlotChoice) -> None:
        self.choice = choice
        self.now = 0.0
        self.changes: list[tuple[float, int]] = []

    def run(self, seconds: float, rate: Callable[[int], float], busy: float = 1.0, queued: int = 4) -> None:
        end = self.now + seconds
        while self.now < end:
            self.now += STEP_S
            limit = self.choice.limit
            rows, call_s = round(rate(limit) * STEP_S), busy * STEP_S * self.choice.replicas
            changed = self.choice.observe(self.now, rows, call_s, queued)
            if changed is not None:
                assert changed == self.choice.limit
                self.changes.append((round(self.now, 3), changed))


def two_faster(limit: int) -> float:
    return 1200.0 if limit == 2 else 1000.0  # the LSTM's kind: a second batch uses an idle core


def one_faster(limit: int) -> float:
    return 970.0 if limit == 2 else 1000.0  # the light CNN's kind: halved batches cost


def test_replicas_that_idle_between_batches_are_never_tried_with_two() -> None:
    feed = Feed(SlotChoice())
    feed.run(60.0, two_faster, busy=0.5)
    assert feed.changes == [] and feed.choice.limit == 1 and not feed.choice.trying


def test_callers_that_wait_for_each_answer_are_never_tried_with_two() -> None:
    """One request at a time (concurrency 1) keeps a replica busy with nothing queued behind it: no trial, whose
    windows could only tie, and whose choice of one would hold until the re-time when the load grows."""
    feed = Feed(SlotChoice())
    feed.run(60.0, two_faster, queued=0)
    assert feed.changes == [] and feed.choice.limit == 1
    feed.run(10.0, two_faster)  # then work queues: tried at once
    assert feed.choice.limit == 2


def test_busy_replicas_try_two_and_keep_them_when_they_serve_more(caplog: pytest.LogCaptureFixture) -> None:
    feed = Feed(SlotChoice(label="lstm:1:serving_default"))
    caplog.handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))  # the server's log format
    with caplog.at_level(logging.INFO, logger="kerve.server.slot_choice"):
        feed.run(10.0, two_faster)
    limits = [limit for _, limit in feed.changes]
    assert limits == [2, 1, 2, 1, 2, 1, 2]  # three windows of each, alternating, then the choice
    assert feed.choice.limit == 2 and not feed.choice.trying
    assert "lstm:1:serving_default: 2 batch(es) at once per replica (median 1200 rows/s with 2, 1000 with 1)" in (
        caplog.text
    )
    assert logged_choices(caplog.text) == [
        {"label": "lstm:1:serving_default", "batches_per_replica": 2, "more_rows_per_s": 1200, "one_rows_per_s": 1000}
    ]


def test_two_that_do_not_win_by_the_gain_go_back_to_one() -> None:
    feed = Feed(SlotChoice())
    feed.run(10.0, one_faster)
    assert feed.changes[-1][1] == 1 and feed.choice.limit == 1 and not feed.choice.trying
    tied = Feed(SlotChoice(gain=1.05))
    tied.run(10.0, lambda limit: 1040.0 if limit == 2 else 1000.0)  # 4% more: not enough
    assert tied.choice.limit == 1


def test_a_window_skips_the_batches_started_under_the_old_limit() -> None:
    """Right after a switch the completions of batches that began before it (replicas x the old limit) count in no
    window: a window of two slots whose first completion is a one-slot batch would mix the two."""
    choice = SlotChoice(replicas=2, window_s=0.2)
    t = 0.0
    for _ in range(20):  # busy: the first window ends a trial's first switch, to two
        t += 0.05
        if choice.observe(t, 10, 0.1, 1) is not None:
            break
    assert choice.limit == 2 and choice.trying
    for _ in range(2):  # two replicas x one old slot: skipped, however many rows they carry
        t += 0.05
        assert choice.observe(t, 10_000, 0.1, 1) is None
    # the window opened at the second skipped completion; five more close it after 0.25 s, 40 rows each
    for _ in range(5):
        t += 0.05
        changed = choice.observe(t, 40, 0.1, 1)
    assert changed == 1 and choice._rates[2] == [pytest.approx(800.0)]


def test_a_choice_is_timed_again_later_and_the_wait_doubles_while_it_holds() -> None:
    feed = Feed(SlotChoice(retime_s=20.0, retime_max_s=50.0))
    feed.run(10.0, two_faster)
    decided = feed.changes[-1][0]
    assert feed.choice.limit == 2
    feed.run(decided + 19.0 - feed.now, two_faster)  # at two the next trial waits for the retime, busy or not
    assert feed.changes[-1][0] == decided
    feed.run(12.0, two_faster)  # trial: confirmed
    trial = [t for t, _ in feed.changes if t > decided]
    assert trial and decided + 20.0 <= trial[0] <= decided + 21.0 and feed.choice.limit == 2
    feed.run(45.0, two_faster)
    # confirmed a window after the trial's last switch; the next trial waits 40 s (doubled) from there
    third = [t for t, _ in feed.changes if t > trial[-1]]
    assert third and trial[-1] + 40.0 < third[0] < trial[-1] + 42.0
    feed.run(60.0, one_faster)  # the load changed: the next trial, 50 s (the cap) after the third, goes back to one
    assert feed.choice.limit == 1


def test_after_choosing_one_busy_replicas_are_tried_again_only_after_the_wait() -> None:
    feed = Feed(SlotChoice(retime_s=30.0))
    feed.run(10.0, one_faster)
    decided = feed.changes[-1][0]
    feed.run(decided + 29.0 - feed.now, two_faster)
    assert feed.changes[-1][0] == decided and feed.choice.limit == 1
    feed.run(15.0, two_faster)  # the load now gains from two: found at the next trial
    assert feed.choice.limit == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"replicas": 0}, "replicas"), ({"most": 1}, "most"), ({"gain": 0.9}, "gain"), ({"retime_s": 0}, "retime")],
)
def test_bad_settings_are_refused(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SlotChoice(**kwargs)  # type: ignore[arg-type]


def test_only_cpu_replicas_learn_their_slots() -> None:
    assert learns_slots(["/device:CPU:0"]) and learns_slots(["/job:localhost/replica:0/task:0/device:CPU:1"])
    assert not learns_slots(["/device:GPU:0"]) and not learns_slots(["/device:CPU:0", "/device:TPU:0"])
    assert not learns_slots(["mirrored:/device:CPU:0,/device:CPU:1"]) and not learns_slots([])
