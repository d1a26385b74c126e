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
from .options import Keepalive, RetryPolicy, TLSConfig, read_token_file
from .wire import InferResult, ModelIndexEntry, ModelMetadata, TensorInfo

__all__ = [
    "AsyncClient",
    "Client",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "InferResult",
    "InvalidArgumentError",
    "Keepalive",
    "KerveError",
    "ModelIndexEntry",
    "ModelMetadata",
    "NotFoundError",
    "ResourceExhaustedError",
    "RetryPolicy",
    "ServerError",
    "TLSConfig",
    "TensorInfo",
    "UnauthenticatedError",
    "UnavailableError",
    "read_token_file",
]
