"""Inputs through system shared memory: for a client on the server's host, large tensors skip protobuf and the
socket (bench.shared_memory: ~3x the requests/s at 4.6 MiB per request, 8x at 18 MiB, on a 2-core VM).

`Client.shared_memory(byte_size)` makes a POSIX shared memory object (``/dev/shm/kerve-...``) of that size, maps
it, registers it with the server as a region, and gives a `SharedMemoryRegion`; ``region.put(array)`` copies an
array into it and returns a `SharedTensor` to pass as an input value in place of the array (``infer``,
``predict``, streams). Closing the region unregisters it and removes the object. The server copies an input out of
the region when it reads the request, so a region may be reused as soon as the call that used it has returned.

Outputs still come back in the response (they are usually small). Linux only, and only against a server on this
host that serves the extension (``--shared-memory``, kerve's default).
"""

from __future__ import annotations

import mmap
import os
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kerve import codecs
from kerve.protos import grpc_service_pb2 as pb

from .errors import InvalidArgumentError, UnavailableError

SHM_ROOT = Path("/dev/shm")
SHM_REGION = "shared_memory_region"  # an input tensor's parameters naming its place (Triton's names)
SHM_OFFSET = "shared_memory_offset"
SHM_BYTE_SIZE = "shared_memory_byte_size"


@dataclass(frozen=True)
class SharedTensor:
    """An input that lies in a registered region: what the request carries instead of the data."""

    region: str
    offset: int
    byte_size: int
    datatype: str
    shape: tuple[int, ...]


class SharedMemoryRegion:
    """A shared memory object this client made, registered with the server under `name` (made by the clients'
    ``shared_memory``; the registration RPCs are theirs, so this class does no I/O of its own but the mapping)."""

    def __init__(self, byte_size: int, name: str | None = None) -> None:
        if isinstance(byte_size, bool) or not isinstance(byte_size, int) or byte_size < 1:
            raise InvalidArgumentError(f"a shared memory region needs a positive byte size, got {byte_size!r}")
        if not SHM_ROOT.is_dir():
            raise InvalidArgumentError(f"no POSIX shared memory here ({SHM_ROOT} does not exist)")
        unique = uuid.uuid4().hex  # not the pid: clients in containers of one pod can all be pid 1
        self.name = name or f"kerve-{unique}"
        self.key = f"/kerve-{unique}"
        self.byte_size = byte_size
        self._path = SHM_ROOT / self.key[1:]
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, byte_size)
            self._mapping: mmap.mmap | None = mmap.mmap(fd, byte_size)
        except BaseException:
            self._path.unlink(missing_ok=True)
            raise
        finally:
            os.close(fd)

    @property
    def register_request(self) -> pb.SystemSharedMemoryRegisterRequest:
        return pb.SystemSharedMemoryRegisterRequest(name=self.name, key=self.key, offset=0, byte_size=self.byte_size)

    @property
    def unregister_request(self) -> pb.SystemSharedMemoryUnregisterRequest:
        return pb.SystemSharedMemoryUnregisterRequest(name=self.name)

    def put(self, value: Any, offset: int = 0) -> SharedTensor:
        """Copy `value` (an array, or anything numpy makes one of) into the region at `offset`; the returned
        SharedTensor stands for it as an input value."""
        if self._mapping is None:
            raise InvalidArgumentError(f"shared memory region {self.name!r} is closed")
        with memoryview(self._mapping) as whole, whole[offset if offset >= 0 else len(whole) :] as target:
            try:
                array, datatype = codecs.wire_array(value)
                size = codecs.write_raw(array, target)  # writes only what fits
            except codecs.CodecError as exc:
                raise InvalidArgumentError(str(exc)) from None
            if offset < 0 or size > len(target):
                raise InvalidArgumentError(
                    f"{size} bytes at offset {offset} do not fit shared memory region {self.name!r} "
                    f"({self.byte_size} bytes)"
                )
        return SharedTensor(self.name, offset, size, datatype, tuple(array.shape))

    def release(self) -> None:
        """Unmap and remove the object (after the server has been told to forget the region)."""
        mapping, self._mapping = self._mapping, None
        if mapping is not None:
            mapping.close()
            self._path.unlink(missing_ok=True)

    @property
    def closed(self) -> bool:
        return self._mapping is None


class BlockingRegion(SharedMemoryRegion):
    """A region made by `Client.shared_memory`; ``close()`` (or the end of a ``with`` block) unregisters it."""

    def __init__(self, byte_size: int, name: str | None, unregister: Callable[[SharedMemoryRegion], None]) -> None:
        super().__init__(byte_size, name)
        self._unregister = unregister

    def close(self) -> None:
        """Tell the server, then release the object whatever the server said."""
        if self.closed:
            return
        try:
            self._unregister(self)
        except UnavailableError:  # a server that is gone forgot it too
            pass
        finally:
            self.release()

    def __enter__(self) -> BlockingRegion:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncRegion(SharedMemoryRegion):
    """A region made by `AsyncClient.shared_memory`; ``await close()`` (or ``async with``) unregisters it."""

    def __init__(
        self, byte_size: int, name: str | None, unregister: Callable[[SharedMemoryRegion], Awaitable[None]]
    ) -> None:
        super().__init__(byte_size, name)
        self._unregister = unregister

    async def close(self) -> None:
        """Tell the server, then release the object whatever the server said."""
        if self.closed:
            return
        try:
            await self._unregister(self)
        except UnavailableError:  # a server that is gone forgot it too
            pass
        finally:
            self.release()

    async def __aenter__(self) -> AsyncRegion:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
