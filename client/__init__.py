"""kerve client SDK: numpy in, numpy out, over gRPC. Installs and imports without TensorFlow."""

from .client import AsyncClient, Client
from .errors import (
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidArgumentError,
    KerveError,
    NotFoundError,
    ResourceExhaustedError,
    ServerError,
    UnauthenticatedError,
    UnavailableError,
)
from .wire import InferResult, ModelIndexEntry, ModelMetadata, TensorInfo

__all__ = [
    "AsyncClient",
    "Client",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "InferResult",
    "InvalidArgumentError",
    "KerveError",
    "ModelIndexEntry",
    "ModelMetadata",
    "NotFoundError",
    "ResourceExhaustedError",
    "ServerError",
    "TensorInfo",
    "UnauthenticatedError",
    "UnavailableError",
]
