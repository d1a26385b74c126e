"""Triton's response cache: a repeated request answered from memory, without a batch or a model call.

A model opts in (config.yaml `response_cache: true`, or a Triton config's `response_cache {enable: true}`) and the
server gives the cache its size (`--response-cache-mb`, Triton's `--cache-config local,size=`); one LRU over bytes
is shared by every model. A response is cached under a digest of its owner (the model, the version that answered
and the fingerprint of that version's files), the signature, the outputs asked for and every input's name, dtype,
shape and bytes, so a new version, a version rewritten in place, another signature or another output selection
never sees an old answer. Cached arrays are private read-only copies: a
batch's outputs are views of one large array, which a cached slice would otherwise keep alive (and uncounted).

Pure Python and numpy (no TensorFlow): the engine looks up before a request queues and stores after it succeeds,
both on the event loop thread, so no lock is needed.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

Owner = tuple[str, int, tuple[int, ...]]  # (model, version, fingerprint of the version's files)

_ENTRY_OVERHEAD = 200  # bytes per entry beyond its arrays: key, dict, array headers (an estimate, kept honest by tests)
_OBJECT_SLOT = 8  # an object array's pointer per element, beside the bytes it points to


class ResponseCache:
    def __init__(self, capacity_bytes: int) -> None:
        if capacity_bytes < 1:
            raise ValueError(f"a response cache needs a positive size, got {capacity_bytes} bytes")
        self.capacity_bytes = capacity_bytes
        self.bytes = 0
        self.evictions = 0
        self._entries: OrderedDict[bytes, tuple[dict[str, np.ndarray], int, Owner]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def key(owner: Owner, signature: str, outputs: Sequence[str], inputs: Mapping[str, np.ndarray]) -> bytes:
        """What identifies a response: 16 bytes of BLAKE2b over its owner, signature, chosen outputs and inputs
        (names, dtypes, shapes and data; strings length-prefixed so no two lists collide)."""
        digest = hashlib.blake2b(digest_size=16)
        digest.update("\0".join((repr(owner), signature, ",".join(outputs))).encode())
        for name in sorted(inputs):
            array = inputs[name]
            digest.update(f"\0{name}\0{array.dtype.str}\0{array.shape}\0".encode())
            if array.dtype == object:
                for value in array.reshape(-1):
                    data = value if isinstance(value, bytes) else str(value).encode()
                    digest.update(len(data).to_bytes(8, "little"))
                    digest.update(data)
            else:
                digest.update(np.ascontiguousarray(array).data)  # no copy when already contiguous
        return digest.digest()

    def get(self, key: bytes) -> dict[str, np.ndarray] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        return entry[0]

    def put(self, key: bytes, outputs: Mapping[str, Any], owner: Owner) -> bool:
        """Keep `outputs` (copied, read-only) for `key`, evicting the least recently used entries to make room;
        False when they alone exceed the cache (nothing is evicted for them). `owner` (as in `key`) lets `drop`
        forget a version's entries when it unloads."""
        if key in self._entries:
            self._entries.move_to_end(key)
            return True
        kept = {}
        for name, value in outputs.items():
            array = np.array(value, copy=True)
            array.setflags(write=False)
            kept[name] = array
        size = _ENTRY_OVERHEAD + sum(_size(array) for array in kept.values())
        if size > self.capacity_bytes:
            return False
        while self.bytes + size > self.capacity_bytes:
            self._evict_oldest()
        self._entries[key] = (kept, size, owner)
        self.bytes += size
        return True

    def drop(self, owner: Owner) -> int:
        """Forget a version's entries (it unloaded); how many there were."""
        gone = [key for key, (_, _, who) in self._entries.items() if who == owner]
        for key in gone:
            self.bytes -= self._entries.pop(key)[1]
        return len(gone)

    def _evict_oldest(self) -> None:
        _, (_, size, _) = self._entries.popitem(last=False)
        self.bytes -= size
        self.evictions += 1


def _size(array: np.ndarray) -> int:
    if array.dtype != object:
        return int(array.nbytes)
    return sum(_OBJECT_SLOT + len(v if isinstance(v, bytes) else str(v)) for v in array.reshape(-1))
