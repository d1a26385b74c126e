"""Typed client errors: one class per gRPC status a caller can act on differently."""

from __future__ import annotations

import grpc


class KerveError(Exception):
    """Base of every error the SDK raises for a failed call; `code` is the gRPC status name."""

    code: str = "UNKNOWN"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class InvalidArgumentError(KerveError):
    code = "INVALID_ARGUMENT"


class NotFoundError(KerveError):
    code = "NOT_FOUND"


class UnavailableError(KerveError):
    code = "UNAVAILABLE"


class ResourceExhaustedError(KerveError):
    code = "RESOURCE_EXHAUSTED"


class DeadlineExceededError(KerveError):
    code = "DEADLINE_EXCEEDED"


class UnauthenticatedError(KerveError):
    code = "UNAUTHENTICATED"


class FailedPreconditionError(KerveError):
    code = "FAILED_PRECONDITION"


class CancelledError(KerveError):
    """The call was cancelled before it was answered: its stream was closed, or its channel."""

    code = "CANCELLED"


class ServerError(KerveError):
    """INTERNAL, UNKNOWN, UNIMPLEMENTED and any other status: not the caller's fault."""


_BY_CODE: dict[grpc.StatusCode, type[KerveError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.CANCELLED: CancelledError,
}


def from_rpc_error(error: grpc.RpcError) -> KerveError:
    """Translate a grpc error (sync or aio) into the matching KerveError subclass."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = (error.details() if hasattr(error, "details") else None) or str(error)
    cls = _BY_CODE.get(code, ServerError)
    return cls(details, code=code.name if code is not None else "UNKNOWN")


def from_error_message(message: str) -> KerveError:
    """Translate an in-band stream error, `"<STATUS>: <text>"` (a ModelStreamInferResponse's `error_message`, one
    message's failure), into the matching KerveError subclass; text without a known status is a ServerError."""
    name, sep, text = message.partition(": ")
    code = grpc.StatusCode.__members__.get(name) if sep else None
    if code is None or code is grpc.StatusCode.OK:
        return ServerError(message, code="UNKNOWN")
    return _BY_CODE.get(code, ServerError)(text, code=code.name)
