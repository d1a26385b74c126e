"""Inputs through system shared memory: for a client on the server's host, large tensors skip protobuf and the
socket (bench.shared_memory: ~3x the requests/s at 4.6 MiB per request, 8x at 18 MiB, on a 2-core VM).

`Client.shared_memory(byte_size)` makes a POSIX shared memory object (``/dev/shm/kerve-...``) of that size, maps
it, registers it with the server as a region, and gives a `SharedMemoryRegion`; ``region.put(array)`` copies an
array into it and returns a `SharedTensor` to pass as an input value in place of the array (``infer``,
``predict``, streams). Closing the region unregisters it and removes the object. The server copies an input out of
the region when it reads the request, so a region may be reused as soon as the call that used it has returned.

Outputs may go the other way: ``region.output(name)`` gives a `SharedOutput` to pass in ``infer``'s `outputs` (or a
stream call's); the server writes that output into the region instead of the response, and the result still holds it
as an array, read back from the region. Leave that part of the region alone until the call has returned. Linux only,
and only against a server on this host that serves the extension (``--shared-memory``, kerve's default).
"""

from __future__ import annotations

import errno
import mmap
import os
import struct
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kerve import codecs
from kerve.protos import grpc_service_pb2 as pb

from .errors import InvalidArgumentError, ResourceExhaustedError, ServerError, UnavailableError

SHM_ROOT = Path("/dev/shm")


def reserve(fd: int, byte_size: int) -> None:
    """Give the object its pages now. ftruncate alone makes a sparse object: writing past what /dev/shm can hold
    (64 MiB by default in a container) is then a SIGBUS, which kills the process instead of raising."""
    try:
        os.posix_fallocate(fd, 0, byte_size)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL):  # a filesystem without fallocate: sparse as before
            return
        raise ResourceExhaustedError(
            f"cannot reserve {byte_size} bytes of shared memory in {SHM_ROOT}: {exc.strerror}; free some or make "
            f"{SHM_ROOT} larger (a container's default is 64 MiB)"
        ) from None


SHM_REGION = "shared_memory_region"  # an input tensor's parameters naming its place (Triton's names)
SHM_OFFSET = "shared_memory_offset"
SHM_BYTE_SIZE = "shared_memory_byte_size"
_LEN = struct.Struct("<I")  # the length prefix of each BYTES element


@dataclass(frozen=True)
class SharedTensor:
    """An input that lies in a registered region: what the request carries instead of the data."""

    region: str
    offset: int
    byte_size: int
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class SharedOutput:
    """An output the server is to write into a registered region instead of the response: what ``infer``'s
    `outputs` takes in place of the output's name. It keeps its region (`memory`) to read the answer back from."""

    name: str
    region: str
    offset: int
    byte_size: int
    memory: SharedMemoryRegion = field(repr=False, compare=False)

    def read(self, datatype: str, shape: Sequence[int]) -> np.ndarray:
        """A copy of the tensor the server wrote here, not a view: the next call placing an output here would
        overwrite a view under its holder, and a live view keeps the mapping from closing (mmap's BufferError)."""
        return self.memory._copy_out(f"output {self.name!r}", self.offset, self.byte_size, datatype, shape)


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
            reserve(fd, byte_size)
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

    def output(self, name: str, offset: int = 0, byte_size: int | None = None) -> SharedOutput:
        """A place for output `name`: `byte_size` bytes at `offset` (default: the rest of the region). Pass it in
        ``infer``'s `outputs`; the result holds the output as an array read back from here. Too small a place
        for the result fails the call with InvalidArgumentError (the server's answer, naming the output)."""
        if not isinstance(name, str) or not name:
            raise InvalidArgumentError(f"an output placed in shared memory needs a name, got {name!r}")
        if self._mapping is None:
            raise InvalidArgumentError(f"shared memory region {self.name!r} is closed")
        size = self.byte_size - offset if byte_size is None and _is_index(offset) else byte_size
        if not (_is_index(offset) and _is_index(size) and offset + size <= self.byte_size):
            raise InvalidArgumentError(
                f"output {name!r}: byte_size {byte_size!r} at offset {offset!r} is not within shared memory region "
                f"{self.name!r} ({self.byte_size} bytes)"
            )
        return SharedOutput(name, self.name, offset, size, self)

    def _copy_out(self, what: str, offset: int, byte_size: int, datatype: str, shape: Sequence[int]) -> np.ndarray:
        if self._mapping is None:
            raise InvalidArgumentError(f"{what}: shared memory region {self.name!r} was closed before it was read")
        with memoryview(self._mapping) as whole, whole[offset : offset + byte_size] as place:
            try:
                size = _raw_size(place, datatype, shape)
                if size > len(place):
                    least = "at least " if datatype == codecs.BYTES else ""
                    raise ServerError(
                        f"{what}: {datatype} {list(shape)} takes {least}{size} bytes, more than the {len(place)} "
                        f"bytes placed for it in shared memory region {self.name!r}"
                    )
                with place[:size] as data:
                    return codecs.decode_raw(data, datatype, shape).copy()  # the view dies before `data` is released
            except codecs.CodecError as exc:
                raise ServerError(f"{what}: {exc}") from None

    def release(self) -> None:
        """Unmap and remove the object (after the server has been told to forget the region)."""
        mapping, self._mapping = self._mapping, None
        if mapping is not None:
            try:
                mapping.close()  # BufferError while a view of it lives: the object still goes
            finally:
                self._path.unlink(missing_ok=True)

    @property
    def closed(self) -> bool:
        return self._mapping is None


def _is_index(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _raw_size(data: memoryview, datatype: str, shape: Sequence[int]) -> int:
    """How many bytes from the start of `data` a tensor's raw V2 bytes take. A place may be larger than its tensor,
    so BYTES elements are walked by their length prefixes; past the end of `data`, the walk stops and says more."""
    count = codecs.element_count(shape)
    if datatype != codecs.BYTES:
        return count * codecs.dtype_of(datatype).itemsize
    end = 0
    for _ in range(count):
        if end + _LEN.size > len(data):
            return end + _LEN.size
        end += _LEN.size + _LEN.unpack_from(data, end)[0]
    return end


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
