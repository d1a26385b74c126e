"""System shared memory regions (Triton's extension): a client on the server's host puts a tensor in a POSIX shared
memory object and sends only its place, so large tensors skip protobuf and the socket both ways.

A region is a client-chosen name for ``byte_size`` bytes at ``offset`` of the object ``key`` (``/name``, as
``shm_open`` and tritonclient's ``shared_memory`` module name them; the file ``/dev/shm/name``). The server maps it
once at registration; requests then name the region, an offset into it and a byte size per tensor. Inputs are
copied out when the request is decoded and outputs written straight in when it is answered, both on the event
loop after checking the object's size: a client that shrinks its object (where touching the lost pages would kill
the server with SIGBUS) gets INVALID_ARGUMENT, and one that rewrites a region cannot change a queued request. As
with Triton, a client leaves an output region alone until the request that names it has been answered.

Pure Python (mmap), used on the event loop thread only. The registry is per server process; the processes of a
``--processes`` group register and unregister every region alike (group_control.py), so a client may register
through one connection and infer through another.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import mmap
import os
import re
from pathlib import Path

from .errors import ErrorCode, ServingError, invalid

SHM_ROOT = Path("/dev/shm")
MAX_REGIONS = 256  # each holds a file descriptor: a client registering without end must not exhaust the server's
_KEY = re.compile(r"^/?[A-Za-z0-9_.-]{1,250}$")


@dataclasses.dataclass(frozen=True)
class Region:
    name: str
    key: str
    offset: int
    byte_size: int
    view: memoryview  # the region's bytes: [offset, offset + byte_size) of the object
    fd: int  # kept open to check the object's size before each use
    mapping: mmap.mmap


@dataclasses.dataclass(frozen=True, slots=True)
class Place:
    """Where a request put one tensor: ``byte_size`` bytes at ``offset`` into a region, for tensor ``what``."""

    registry: SystemSharedMemory
    what: str  # "input 'x'", "output 'y'": how errors name the tensor
    region: str
    offset: int
    byte_size: int

    def view(self) -> memoryview:
        """The bytes, checked now: use them at once, on this thread."""
        return self.registry.view(self.what, self.region, self.offset, self.byte_size)


class SystemSharedMemory:
    def __init__(self, root: Path = SHM_ROOT) -> None:
        self._root = root
        self._regions: dict[str, Region] = {}

    def register(self, name: str, key: str, offset: int, byte_size: int) -> Region:
        if not name:
            raise invalid("a shared memory region needs a name")
        if name in self._regions:
            raise ServingError(ErrorCode.ALREADY_EXISTS, f"shared memory region {name!r} is already registered")
        if len(self._regions) >= MAX_REGIONS:
            raise ServingError(
                ErrorCode.RESOURCE_EXHAUSTED,
                f"{MAX_REGIONS} shared memory regions are registered, the most one server process holds; "
                "unregister some first",
            )
        if not _KEY.match(key) or key.strip("/") in (".", ".."):
            raise invalid(f"shared memory key {key!r} is not a POSIX shared memory name like '/region'")
        if byte_size < 1:
            raise invalid(f"shared memory region {name!r}: byte_size must be at least 1, got {byte_size}")
        path = self._root / key.lstrip("/")
        try:
            fd = os.open(path, os.O_RDWR | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError:
            raise invalid(f"shared memory region {name!r}: no shared memory object {key!r} on the server") from None
        except OSError as exc:
            raise invalid(f"shared memory region {name!r}: cannot open {key!r}: {exc.strerror}") from None
        try:
            size = os.fstat(fd).st_size
            if offset + byte_size > size:
                raise invalid(
                    f"shared memory region {name!r}: offset {offset} + byte_size {byte_size} is past the end of "
                    f"{key!r} ({size} bytes)"
                )
            _reserve(fd, name, offset, byte_size)
            start = offset - offset % mmap.ALLOCATIONGRANULARITY  # mmap offsets are page-aligned
            mapping = mmap.mmap(fd, offset + byte_size - start, offset=start)
        except BaseException:
            os.close(fd)
            raise
        region = Region(name, key, offset, byte_size, memoryview(mapping)[offset - start :], fd, mapping)
        self._regions[name] = region
        return region

    def unregister(self, name: str) -> None:
        """Forget one region, or every region when ``name`` is empty; an unknown name is not an error (Triton)."""
        for gone in list(self._regions) if not name else [name]:
            region = self._regions.pop(gone, None)
            if region is None:
                continue
            os.close(region.fd)
            with contextlib.suppress(BufferError):  # a view still held stays valid; the mapping goes with it
                region.view.release()
                region.mapping.close()

    def status(self, name: str = "") -> list[Region]:
        if not name:
            return sorted(self._regions.values(), key=lambda r: r.name)
        region = self._regions.get(name)
        if region is None:
            raise ServingError(ErrorCode.NOT_FOUND, f"shared memory region {name!r} is not registered")
        return [region]

    def view(self, what: str, name: str, offset: int, byte_size: int) -> memoryview:
        """``byte_size`` bytes at ``offset`` into region ``name``, for tensor ``what`` ("input 'x'"); use them at
        once, on this thread: the object may shrink later."""
        region = self._regions.get(name)
        if region is None:  # NOT_FOUND, as Triton's "Unable to find shared memory region"
            raise ServingError(ErrorCode.NOT_FOUND, f"{what}: shared memory region {name!r} is not registered")
        if offset < 0 or byte_size < 0 or offset + byte_size > region.byte_size:
            raise invalid(
                f"{what}: offset {offset} + byte_size {byte_size} is outside shared memory region {name!r} "
                f"({region.byte_size} bytes)"
            )
        size = os.fstat(region.fd).st_size
        if region.offset + offset + byte_size > size:  # touching pages past the end would be SIGBUS
            raise invalid(f"{what}: shared memory object {region.key!r} of region {name!r} shrank to {size} bytes")
        return region.view[offset : offset + byte_size]

    def close(self) -> None:
        self.unregister("")


def _reserve(fd: int, name: str, offset: int, byte_size: int) -> None:
    """Make the region's pages real before anything touches them: a sparse object (a client's ftruncate alone)
    that /dev/shm cannot fill turns the server's first write into an output into a SIGBUS, which kills the server
    for every client. Where /dev/shm has no room, the region is refused instead."""
    try:
        os.posix_fallocate(fd, offset, byte_size)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL):  # a filesystem without fallocate: nothing to reserve
            return
        raise ServingError(
            ErrorCode.RESOURCE_EXHAUSTED,
            f"shared memory region {name!r}: cannot reserve its {byte_size} bytes: {exc.strerror}",
        ) from None
