"""The response cache's pure logic (server/response_cache.py), without TensorFlow: what makes two requests the same
response, LRU eviction by bytes, private read-only copies, and forgetting an unloaded version."""

from __future__ import annotations

import numpy as np
import pytest

from kerve.server.response_cache import _ENTRY_OVERHEAD, ResponseCache

X = np.arange(6, dtype=np.float32).reshape(2, 3)


OWNER = ("m", 1, (7, 8))


def key(
    inputs: dict[str, np.ndarray] | None = None,
    owner: tuple[str, int, tuple[int, ...]] = OWNER,
    signature: str = "serving_default",
    outputs: tuple[str, ...] = ("y",),
) -> bytes:
    return ResponseCache.key(owner, signature, outputs, inputs if inputs is not None else {"x": X})


def test_the_key_covers_everything_that_changes_the_response() -> None:
    base = key()
    assert key() == base and len(base) == 16
    assert key({"x": X.copy()}) == base  # equal data, another array
    assert key({"x": np.asfortranarray(X)}) == base  # same values in another memory layout
    different = [
        key(owner=("n", 1, (7, 8))), key(owner=("m", 2, (7, 8))), key(owner=("m", 1, (7, 9))),
        key(signature="other"), key(outputs=("y", "z")),
        key({"x": X + 1}), key({"x": X.astype(np.float64)}), key({"x": X.reshape(3, 2)}), key({"w": X}),
        key({"x": X, "w": X}),
    ]  # fmt: skip
    assert len({base, *different}) == len(different) + 1
    # strings: length-prefixed, so splitting the same bytes differently is another request
    assert key({"s": np.array([b"ab", b"c"], dtype=object)}) != key({"s": np.array([b"a", b"bc"], dtype=object)})
    assert key({"s": np.array([b"ab"], dtype=object)}) == key({"s": np.array([b"ab"], dtype=object)})


def test_hits_return_read_only_private_copies() -> None:
    cache = ResponseCache(1 << 20)
    batch = np.arange(8, dtype=np.float32)
    view = batch[2:4]  # what a batch hands a request: a view of the batch's output
    assert cache.get(b"k") is None
    assert cache.put(b"k", {"y": view}, ("m", 1, ()))
    batch[:] = -1  # the batch's array reused or changed: the cached answer is not
    hit = cache.get(b"k")
    assert hit is not None and hit["y"].tolist() == [2.0, 3.0] and hit["y"].base is None
    with pytest.raises(ValueError):
        hit["y"][0] = 9
    assert len(cache) == 1 and cache.bytes == _ENTRY_OVERHEAD + 8


def test_least_recently_used_entries_go_first_when_bytes_run_out() -> None:
    entry = _ENTRY_OVERHEAD + 400  # 100 float32 each
    cache = ResponseCache(3 * entry)
    rows = {name: {"y": np.zeros(100, np.float32)} for name in (b"a", b"b", b"c", b"d")}
    for name in (b"a", b"b", b"c"):
        assert cache.put(name, rows[name], ("m", 1, ()))
    assert cache.bytes == 3 * entry and cache.evictions == 0
    assert cache.get(b"a") is not None  # a is now the most recently used
    assert cache.put(b"d", rows[b"d"], ("m", 1, ()))
    assert cache.get(b"b") is None and all(cache.get(k) is not None for k in (b"a", b"c", b"d"))
    assert cache.evictions == 1 and cache.bytes == 3 * entry
    # too large for the whole cache: refused, and nothing evicted for it
    assert not cache.put(b"huge", {"y": np.zeros(1000, np.float32)}, ("m", 1, ()))
    assert len(cache) == 3 and cache.evictions == 1
    assert cache.put(b"a", rows[b"a"], ("m", 1, ())) and cache.bytes == 3 * entry  # again: no second copy


def test_strings_count_their_bytes_and_an_unloaded_version_is_forgotten() -> None:
    cache = ResponseCache(1 << 20)
    words = np.array([b"hello", b"world!"], dtype=object)
    assert cache.put(b"s", {"label": words}, ("m", 1, ()))
    assert cache.bytes == _ENTRY_OVERHEAD + (8 + 5) + (8 + 6)
    cache.put(b"t", {"y": X}, ("m", 2, ()))
    cache.put(b"u", {"y": X}, ("n", 1, ()))
    assert cache.drop(("m", 1, ())) == 1 and cache.get(b"s") is None
    assert cache.get(b"t") is not None and cache.get(b"u") is not None
    assert cache.bytes == 2 * (_ENTRY_OVERHEAD + X.nbytes) and cache.drop(("m", 1, ())) == 0
    with pytest.raises(ValueError, match="positive size"):
        ResponseCache(0)
