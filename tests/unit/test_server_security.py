"""Server security without TensorFlow: token parsing and matching, settings validation, and the interceptor on
an in-process grpc.aio server (unary and streaming methods, health exempt)."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from kerve.server import security, settings
from kerve.server.security import (
    BearerTokenInterceptor,
    SecurityConfigError,
    bearer_token,
    load_tokens,
    server_credentials,
    token_matches,
)


def test_bearer_token_parsing() -> None:
    assert bearer_token([("authorization", "Bearer abc")]) == b"abc"
    assert bearer_token([("x-other", "1"), ("Authorization", "bearer  abc ")]) == b"abc"
    assert bearer_token([("authorization", b"Bearer abc")]) == b"abc"
    assert bearer_token([("authorization", "Basic abc")]) is None
    assert bearer_token([("authorization", "Bearer")]) is None
    assert bearer_token([]) is None and bearer_token(None) is None


def test_token_matching_is_exact() -> None:
    accepted = (b"first-token", b"second-token")
    assert token_matches(b"first-token", accepted) and token_matches(b"second-token", accepted)
    for wrong in (b"first", b"first-token2", b"", b"FIRST-TOKEN", None):
        assert not token_matches(wrong, accepted)


def test_load_tokens(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("# rotate by adding a line\n\n  alpha \nbeta\n")
    assert load_tokens(path) == (b"alpha", b"beta")
    path.write_text("# only a comment\n")
    with pytest.raises(SecurityConfigError, match="holds no token"):
        load_tokens(path)
    path.write_text("two words\n")
    with pytest.raises(SecurityConfigError, match="whitespace"):
        load_tokens(path)
    with pytest.raises(SecurityConfigError, match="missing"):
        load_tokens(tmp_path / "missing")


def test_server_credentials_checks_its_files(tmp_path: Path) -> None:
    assert server_credentials(None, None) is None
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("not a certificate")
    key.write_text("-----BEGIN PRIVATE KEY-----\n...\n-----END PRIVATE KEY-----\n")
    with pytest.raises(SecurityConfigError, match="go together"):
        server_credentials(cert, None)
    with pytest.raises(SecurityConfigError, match="needs --tls-cert"):
        server_credentials(None, None, cert)
    with pytest.raises(SecurityConfigError, match="not a PEM certificate"):
        server_credentials(cert, key)
    cert.write_text("")
    with pytest.raises(SecurityConfigError, match="is empty"):
        server_credentials(cert, key)


def parse(*flags: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    settings.add_arguments(parser)
    return parser.parse_args(list(flags))


def test_settings_flags_and_validation(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_text("c")
    (tmp_path / "key.pem").write_text("k")
    (tmp_path / "tokens").write_text("t")
    repo = ("--model-repository", str(tmp_path))
    s = settings.from_args(parse(*repo))
    assert s.tls_cert is s.tls_key is s.tls_client_ca is s.auth_token_file is None
    s = settings.from_args(
        parse(
            *repo,
            "--tls-cert",
            str(tmp_path / "cert.pem"),
            "--tls-key",
            str(tmp_path / "key.pem"),
            "--tls-client-ca",
            str(tmp_path / "cert.pem"),
            "--auth-token-file",
            str(tmp_path / "tokens"),
        )  # fmt: skip
    )
    assert s.tls_cert == tmp_path / "cert.pem" and s.auth_token_file == tmp_path / "tokens"
    with pytest.raises(ValueError, match="go together"):
        settings.from_args(parse(*repo, "--tls-cert", str(tmp_path / "cert.pem")))
    with pytest.raises(ValueError, match="needs --tls-cert"):
        settings.from_args(parse(*repo, "--tls-client-ca", str(tmp_path / "cert.pem")))
    with pytest.raises(ValueError, match="is not a file"):
        settings.from_args(parse(*repo, "--auth-token-file", str(tmp_path / "nope")))
    with pytest.raises(ValueError, match="max-message-mb"):
        settings.from_args(parse(*repo, "--max-message-mb", "0"))


def test_settings_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "tokens").write_text("t")
    monkeypatch.setenv("KERVE_AUTH_TOKEN_FILE", str(tmp_path / "tokens"))
    assert settings.from_args(parse("--model-repository", str(tmp_path))).auth_token_file == tmp_path / "tokens"


# --- the interceptor on a real in-process server ----------------------------------------------------------


def _echo_handlers() -> grpc.GenericRpcHandler:
    async def unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return request

    async def stream(requests, context: grpc.aio.ServicerContext):
        async for request in requests:
            yield request

    return grpc.method_handlers_generic_handler(
        "test.Echo",
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "Stream": grpc.stream_stream_rpc_method_handler(stream),
        },
    )


def test_interceptor_guards_unary_and_streams_but_not_health() -> None:
    async def main() -> None:
        server = grpc.aio.server(interceptors=[BearerTokenInterceptor([b"good"])])
        server.add_generic_rpc_handlers([_echo_handlers()])
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                unary = channel.unary_unary("/test.Echo/Unary")
                stream = channel.stream_stream("/test.Echo/Stream")
                good = (("authorization", "Bearer good"),)
                assert await unary(b"x", metadata=good, timeout=10) == b"x"
                assert [r async for r in stream(iter([b"a", b"b"]), metadata=good, timeout=10)] == [b"a", b"b"]
                for metadata in (None, (("authorization", "Bearer bad"),), (("authorization", "good"),)):
                    with pytest.raises(grpc.aio.AioRpcError) as info:
                        await unary(b"x", metadata=metadata, timeout=10)
                    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
                    with pytest.raises(grpc.aio.AioRpcError) as info:
                        [r async for r in stream(iter([b"a"]), metadata=metadata, timeout=10)]
                    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
                check = health_pb2_grpc.HealthStub(channel).Check
                status = (await check(health_pb2.HealthCheckRequest(), timeout=10)).status
                assert status == health_pb2.HealthCheckResponse.SERVING
        finally:
            await server.stop(None)

    asyncio.run(main())


def test_no_interceptor_without_a_token_file(tmp_path: Path) -> None:
    assert security.server_interceptors(None) == []
    (tmp_path / "tokens").write_text("abc\n")
    [interceptor] = security.server_interceptors(tmp_path / "tokens")
    assert isinstance(interceptor, BearerTokenInterceptor)
