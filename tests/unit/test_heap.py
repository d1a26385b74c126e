"""heap.settle: one full collection, then the survivors frozen; the next settle collects what was frozen and died."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from kerve.server import heap


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def cycle() -> Node:
    """Two objects that keep each other alive: only the cyclic collector frees them."""
    a, b = Node(), Node()
    a.other, b.other = b, a
    return a


@pytest.fixture(autouse=True)
def unfrozen() -> Iterator[None]:
    """The rest of the test session runs with nothing frozen."""
    gc.unfreeze()
    yield
    gc.unfreeze()
    gc.collect()


def test_settle_collects_garbage_then_freezes_the_survivors() -> None:
    dead = weakref.ref(cycle())
    kept = cycle()
    heap.settle()
    assert dead() is None  # collected before the freeze, not kept in the permanent generation
    assert gc.get_freeze_count() > 0
    assert not any(obj is kept for obj in gc.get_objects())  # frozen: out of every generation the passes walk
    gc.collect()
    assert kept.other is not None and kept.other.other is kept


def test_an_object_that_dies_while_frozen_is_collected_at_the_next_settle() -> None:
    """What an unloaded model leaves behind: alive at one freeze, garbage by the next model change."""
    model = cycle()
    gone = weakref.ref(model)
    heap.settle()
    del model
    gc.collect()  # an ordinary full pass does not see frozen objects
    assert gone() is not None
    heap.settle()
    assert gone() is None


def test_settle_reports_its_pause() -> None:
    assert heap.settle() > 0
