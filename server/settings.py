"""Server settings: one typed object, built from flags (and KERVE_* environment variables), validated once."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ServerSettings:
    model_repository: Path
    host: str = "0.0.0.0"
    port: int = 8500
    metrics_port: int = 8501  # 0 disables the Prometheus endpoint
    workers: int = max(2, os.cpu_count() or 2)
    grace_s: float = 15.0
    max_message_bytes: int = 256 * 1024 * 1024

    def __post_init__(self) -> None:
        if not (0 <= self.port <= 65535) or not (0 <= self.metrics_port <= 65535):
            raise ValueError(f"ports must be in 0..65535, got port={self.port} metrics_port={self.metrics_port}")
        if self.metrics_port and self.metrics_port == self.port:
            raise ValueError("--metrics-port must differ from --port")
        if self.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {self.workers}")
        if self.grace_s < 0:
            raise ValueError(f"--grace-period must be >= 0, got {self.grace_s}")
        if not self.model_repository.is_dir():
            raise ValueError(f"--model-repository {self.model_repository} is not a directory")


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"KERVE_{name}", default)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model-repository",
        type=Path,
        default=_env("MODEL_REPOSITORY"),
        required=_env("MODEL_REPOSITORY") is None,
        help="directory holding <model>/<version>/saved_model.pb (env KERVE_MODEL_REPOSITORY)",
    )
    parser.add_argument("--host", default=_env("HOST", "0.0.0.0"), help="address to bind (default 0.0.0.0)")
    parser.add_argument("--port", type=int, default=int(_env("PORT", "8500") or 8500), help="gRPC port (8500)")
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=int(_env("METRICS_PORT", "8501") or 8501),
        help="Prometheus port; 0 = off",
    )
    parser.add_argument("--workers", type=int, default=max(2, os.cpu_count() or 2), help="inference threads")
    parser.add_argument("--grace-period", type=float, default=15.0, help="seconds to drain on SIGTERM")
    parser.add_argument("--max-message-mb", type=int, default=256, help="max gRPC message size in MiB")


def from_args(args: argparse.Namespace) -> ServerSettings:
    return ServerSettings(
        model_repository=Path(args.model_repository),
        host=args.host,
        port=args.port,
        metrics_port=args.metrics_port,
        workers=args.workers,
        grace_s=args.grace_period,
        max_message_bytes=args.max_message_mb * 1024 * 1024,
    )
