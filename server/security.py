"""Transport security and caller authentication for the gRPC port.

- TLS: `--tls-cert` + `--tls-key` (PEM) turn the port into TLS; `--tls-client-ca` adds mutual TLS, where the server
  requires a client certificate and verifies it against that CA bundle (no valid certificate, no connection).
- Bearer tokens: `--auth-token-file` holds one accepted token per line (several lines allow rotation; blank lines
  and `#` comments are ignored). Every RPC must carry `authorization: Bearer <token>` metadata, else it ends with
  UNAUTHENTICATED before reaching a servicer. `grpc.health.v1.Health` stays open so Kubernetes probes work.
  Tokens are compared in constant time, against every accepted token, so timing reveals neither.

Files are read once, at server start. Nothing here knows about models or inference.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc

AUTH_HEADER = "authorization"
BEARER = "bearer"
# Probes (kubelet grpc probes, grpc_health_probe, Docker HEALTHCHECK) carry no credentials.
UNAUTHENTICATED_METHODS = frozenset({"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"})


class SecurityConfigError(ValueError):
    """A certificate, key or token file that cannot be used; raised at start, before the port opens."""


def _read(path: Path, what: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SecurityConfigError(f"{what} {path}: {exc.strerror or exc}") from None
    if not data.strip():
        raise SecurityConfigError(f"{what} {path} is empty")
    return data


def server_credentials(
    cert: Path | None, key: Path | None, client_ca: Path | None = None
) -> grpc.ServerCredentials | None:
    """TLS credentials for the gRPC port, or None for plaintext. With client_ca, clients must present a
    certificate signed by it (mutual TLS)."""
    if cert is None and key is None:
        if client_ca is not None:
            raise SecurityConfigError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if cert is None or key is None:
        raise SecurityConfigError("--tls-cert and --tls-key go together")
    chain = _read(cert, "--tls-cert")
    private_key = _read(key, "--tls-key")
    if b"-----BEGIN" not in chain or b"CERTIFICATE" not in chain:
        raise SecurityConfigError(f"--tls-cert {cert} is not a PEM certificate")
    if b"PRIVATE KEY" not in private_key:
        raise SecurityConfigError(f"--tls-key {key} is not a PEM private key")
    roots = _read(client_ca, "--tls-client-ca") if client_ca is not None else None
    return grpc.ssl_server_credentials(
        [(private_key, chain)], root_certificates=roots, require_client_auth=roots is not None
    )


def load_tokens(path: Path) -> tuple[bytes, ...]:
    """Accepted bearer tokens from a file: one per line, blank lines and `#` comments ignored."""
    lines = _read(path, "--auth-token-file").decode("utf-8", errors="strict").splitlines()
    tokens = tuple(t.encode() for t in (line.strip() for line in lines) if t and not t.startswith("#"))
    if not tokens:
        raise SecurityConfigError(f"--auth-token-file {path} holds no token")
    if any(len(t.split()) != 1 for t in tokens):
        raise SecurityConfigError(f"--auth-token-file {path}: a token cannot contain whitespace")
    return tokens


def bearer_token(metadata: Sequence[tuple[str, Any]] | None) -> bytes | None:
    """The token of the first `authorization: Bearer <token>` entry, or None."""
    for key, value in metadata or ():
        if key.lower() != AUTH_HEADER:
            continue
        text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
        scheme, _, token = text.strip().partition(" ")
        if scheme.lower() == BEARER and token.strip():
            return token.strip().encode("latin-1", errors="replace")
        return None
    return None


def token_matches(presented: bytes | None, accepted: Sequence[bytes]) -> bool:
    """Constant-time comparison against every accepted token (no early exit)."""
    candidate = presented if presented is not None else b""
    matched = False
    for token in accepted:
        matched |= hmac.compare_digest(candidate, token)
    return matched and presented is not None


def _rejecting_handler(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind as `handler` (so the call is framed correctly) that ends it UNAUTHENTICATED."""

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def streaming(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # pragma: no cover - makes this an async generator, as streaming handlers must be

    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(streaming, **kwargs)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(unary, **kwargs)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(streaming, **kwargs)
    return grpc.unary_unary_rpc_method_handler(unary, **kwargs)


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Ends every RPC without an accepted bearer token with UNAUTHENTICATED, except the exempt methods."""

    def __init__(self, tokens: Sequence[bytes], exempt: frozenset[str] = UNAUTHENTICATED_METHODS) -> None:
        if not tokens:
            raise SecurityConfigError("no bearer token configured")
        self._tokens = tuple(tokens)
        self._exempt = exempt

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method in self._exempt:
            return handler
        presented = bearer_token(handler_call_details.invocation_metadata)
        if token_matches(presented, self._tokens):
            return handler
        reason = "missing 'authorization: Bearer <token>' metadata" if presented is None else "invalid bearer token"
        return _rejecting_handler(handler, reason)


def server_interceptors(token_file: Path | None) -> list[grpc.aio.ServerInterceptor]:
    return [] if token_file is None else [BearerTokenInterceptor(load_tokens(token_file))]
