"""kerve client SDK: numpy in, numpy out, over gRPC. Installs and imports without TensorFlow."""

from .client import AsyncClient, Client
from .errors import (
    CancelledError,
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
from .shared_memory import AsyncRegion, BlockingRegion, SharedMemoryRegion, SharedOutput, SharedTensor
from .stream import AsyncInferStream, InferStream
from .wire import (
    Classification,
    InferResult,
    InstanceGroup,
    LogSetting,
    ModelConfig,
    ModelIndexEntry,
    ModelMetadata,
    QueuePolicy,
    TensorConfig,
    TensorInfo,
    TraceSetting,
)

__all__ = [
    "AsyncClient",
    "AsyncInferStream",
    "AsyncRegion",
    "BlockingRegion",
    "CancelledError",
    "Classification",
    "Client",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "InferResult",
    "InferStream",
    "InstanceGroup",
    "InvalidArgumentError",
    "Keepalive",
    "KerveError",
    "LogSetting",
    "ModelConfig",
    "ModelIndexEntry",
    "ModelMetadata",
    "QueuePolicy",
    "NotFoundError",
    "ResourceExhaustedError",
    "RetryPolicy",
    "ServerError",
    "SharedMemoryRegion",
    "SharedOutput",
    "SharedTensor",
    "TLSConfig",
    "TensorConfig",
    "TensorInfo",
    "TraceSetting",
    "UnauthenticatedError",
    "UnavailableError",
    "read_token_file",
]
