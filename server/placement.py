"""Which devices a model version's replicas go on when its config.yaml asks for fewer than one per device.

A server split for a compute-bound model (`--cpu-replicas 2`, or several GPUs) may also host a light one, whose
batches shrink and whose event-loop cost grows with every extra replica (docs/benchmarks.md): `replicas: 1` keeps
it on one device. Which one matters on GPUs (memory, contention), so each load takes the devices that hold the
fewest replicas right now, and an unload gives them back. Loads run on several executor threads, hence the lock.
No TensorFlow here: devices are plain names.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

__all__ = ["Placer"]


class Placer:
    """Hands out devices for replicas, least occupied first (ties: the order the devices were listed in)."""

    def __init__(self, devices: Sequence[str]) -> None:
        if not devices:
            raise ValueError("at least one device is needed")
        self._devices = tuple(devices)
        self._held = dict.fromkeys(self._devices, 0)
        self._lock = threading.Lock()

    @property
    def devices(self) -> tuple[str, ...]:
        return self._devices

    def held(self) -> dict[str, int]:
        """Replicas placed per device right now (tests read it to check that unloads give devices back)."""
        with self._lock:
            return dict(self._held)

    def acquire(self, count: int | None) -> list[str]:
        """Devices for ``count`` replicas, one each; ``None`` (or more than there are devices) means every device."""
        if count is not None and count < 1:
            raise ValueError(f"replicas must be >= 1, got {count}")
        with self._lock:
            if count is None or count >= len(self._devices):
                chosen = list(self._devices)
            else:
                order = sorted(range(len(self._devices)), key=lambda i: (self._held[self._devices[i]], i))
                chosen = [self._devices[i] for i in sorted(order[:count])]
            for device in chosen:
                self._held[device] += 1
            return chosen

    def release(self, devices: Sequence[str]) -> None:
        """Give back what ``acquire`` returned, once the replicas are unloaded."""
        with self._lock:
            for device in devices:
                if self._held.get(device, 0) <= 0:
                    raise ValueError(f"device {device!r} holds no replica to release")
                self._held[device] -= 1
