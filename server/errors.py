"""Errors raised inside the server, independent of any wire protocol.

Protocol adapters map ErrorCode to their own status (gRPC codes for V2 and TF Serving); the batcher, the
model manager and the models raise ServingError and never import grpc.
"""

from __future__ import annotations

import enum


class ErrorCode(enum.Enum):
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    UNAVAILABLE = "UNAVAILABLE"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    CANCELLED = "CANCELLED"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    UNIMPLEMENTED = "UNIMPLEMENTED"
    INTERNAL = "INTERNAL"


class ServingError(Exception):
    """A request failed with a status the client can act on."""

    def __init__(self, code: ErrorCode, message: str, *, shed: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.shed = shed
        """The scheduler refused or dropped the request to shed load (a queue policy's timeout), whatever the
        code says: Triton counts it as REJECTED."""

    def __repr__(self) -> str:
        return f"ServingError({self.code.value}, {self.message!r})"


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, '' if it has none: TensorFlow errors carry pages after it."""
    text = (getattr(exc, "message", None) or str(exc)).strip()
    return text.splitlines()[0] if text else ""


def invalid(message: str) -> ServingError:
    return ServingError(ErrorCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> ServingError:
    return ServingError(ErrorCode.NOT_FOUND, message)


def unavailable(message: str) -> ServingError:
    return ServingError(ErrorCode.UNAVAILABLE, message)
