"""TLS, mutual TLS, bearer tokens and the message size limit, against real `kerve serve` processes.

Certificates are generated here with the openssl CLI: a throwaway CA, a server certificate for localhost and
127.0.0.1, a client certificate, and an unrelated CA with its own client certificate.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from helpers import TestPKI, make_test_pki, running_server
from kerve import cli
from kerve.client import (
    AsyncClient,
    Client,
    ResourceExhaustedError,
    TLSConfig,
    UnauthenticatedError,
    UnavailableError,
)
from kerve.protos import grpc_service_pb2 as pb
from kerve.protos import grpc_service_pb2_grpc as pb_grpc

pytestmark = pytest.mark.integration

TOKEN = "s3cr3t-token-for-tests"
IMAGES = np.random.default_rng(1).random((2, 8, 8, 1), dtype=np.float32)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_token_server(model_repo: Path, pki: TestPKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """TLS (no client certificates) plus bearer tokens; the token file holds a comment and two tokens."""
    logs = tmp_path_factory.mktemp("tls-logs")
    token_file = logs / "tokens"
    token_file.write_text(f"# accepted tokens\n\nother-token\n{TOKEN}\n")
    flags = ("--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key), "--auth-token-file", str(token_file))
    client = {"tls": TLSConfig(root_certificates=pki.ca), "token": TOKEN}
    with running_server(model_repo, logs, *flags, client=client) as (target, _proc):
        yield target


@pytest.fixture(scope="module")
def mtls_server(model_repo: Path, pki: TestPKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    flags = ("--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key), "--tls-client-ca", str(pki.ca))
    client = {"tls": TLSConfig(pki.ca, certificate_chain=pki.client_cert, private_key=pki.client_key)}
    with running_server(model_repo, tmp_path_factory.mktemp("mtls-logs"), *flags, client=client) as (target, _):
        yield target


def unary_request(images: np.ndarray = IMAGES) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="cnn")
    request.inputs.add(name="image", datatype="FP32", shape=list(images.shape))
    request.raw_input_contents.append(images.tobytes())
    return request


def triton_input() -> triton.InferInput:
    inp = triton.InferInput("image", list(IMAGES.shape), "FP32")
    inp.set_data_from_numpy(IMAGES)
    return inp


# --- TLS -------------------------------------------------------------------------------------------------


def test_tls_client_with_the_ca_and_token_works(tls_token_server: str, pki: TestPKI, in_process) -> None:
    expected = in_process("cnn", {"image": IMAGES})["output_0"]
    with Client(tls_token_server, tls=TLSConfig(root_certificates=pki.ca), token=TOKEN) as client:
        assert client.live() and client.ready("cnn")
        assert client.predict("cnn", {"image": IMAGES})["output_0"].tobytes() == expected.tobytes()
    port = tls_token_server.rsplit(":", 1)[1]
    with Client(f"localhost:{port}", tls=TLSConfig(root_certificates=pki.ca.read_bytes()), token=TOKEN) as client:
        assert client.predict("cnn", {"image": IMAGES})["output_0"].tobytes() == expected.tobytes()


def test_plaintext_client_is_refused_by_a_tls_server(tls_token_server: str) -> None:
    with Client(tls_token_server, token=TOKEN, retry=None, timeout=10) as client, pytest.raises(UnavailableError):
        client.live()


def test_server_certificate_from_an_unknown_ca_is_refused(tls_token_server: str, pki: TestPKI) -> None:
    tls = TLSConfig(root_certificates=pki.other_ca)
    client = Client(tls_token_server, tls=tls, token=TOKEN, retry=None, timeout=10)
    with client, pytest.raises(UnavailableError):
        client.live()


def test_server_name_override(tls_token_server: str, pki: TestPKI) -> None:
    with Client(tls_token_server, tls=TLSConfig(pki.ca, server_name="localhost"), token=TOKEN) as client:
        assert client.live()
    tls = TLSConfig(pki.ca, server_name="not-the-server.example")
    client = Client(tls_token_server, tls=tls, token=TOKEN, retry=None, timeout=10)
    with client, pytest.raises(UnavailableError):
        client.live()


# --- bearer tokens ----------------------------------------------------------------------------------------


def test_missing_or_wrong_token_is_unauthenticated(tls_token_server: str, pki: TestPKI) -> None:
    tls = TLSConfig(root_certificates=pki.ca)
    with Client(tls_token_server, tls=tls) as client:
        with pytest.raises(UnauthenticatedError, match="missing 'authorization: Bearer <token>'"):
            client.predict("cnn", {"image": IMAGES})
        with pytest.raises(UnauthenticatedError):
            client.live()
        with pytest.raises(UnauthenticatedError):
            client.models()
    client = Client(tls_token_server, tls=tls, token=TOKEN + "x")
    with client, pytest.raises(UnauthenticatedError, match="invalid bearer token"):
        client.predict("cnn", {"image": IMAGES})
    with Client(tls_token_server, tls=tls, token="other-token") as client:  # the second accepted token
        assert client.live()


def test_token_is_checked_on_streams_and_raw_stubs(tls_token_server: str, pki: TestPKI) -> None:
    credentials = grpc.ssl_channel_credentials(root_certificates=pki.ca.read_bytes())
    with grpc.secure_channel(tls_token_server, credentials) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            list(stub.ModelStreamInfer(iter([unary_request()]), timeout=10))
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(unary_request(), timeout=10, metadata=(("authorization", f"Basic {TOKEN}"),))
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        metadata = (("authorization", f"bearer {TOKEN}"),)  # the scheme is case-insensitive (RFC 7235)
        responses = list(stub.ModelStreamInfer(iter([unary_request(), unary_request()]), metadata=metadata))
        assert [r.error_message for r in responses] == ["", ""]


def test_health_checks_need_no_token(tls_token_server: str, pki: TestPKI) -> None:
    """Kubernetes gRPC probes carry no credentials: grpc.health.v1 stays open."""
    credentials = grpc.ssl_channel_credentials(root_certificates=pki.ca.read_bytes())
    with grpc.secure_channel(tls_token_server, credentials) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            response = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_tritonclient_with_ssl_root_certificate_and_headers(tls_token_server: str, pki: TestPKI, in_process) -> None:
    client = triton.InferenceServerClient(tls_token_server, ssl=True, root_certificates=str(pki.ca))
    headers = {"authorization": f"Bearer {TOKEN}"}
    try:
        assert client.is_server_ready(headers=headers) and client.is_model_ready("cnn", headers=headers)
        result = client.infer("cnn", [triton_input()], headers=headers)
        expected = in_process("cnn", {"image": IMAGES})["output_0"]
        assert result.as_numpy("output_0").tobytes() == expected.tobytes()
        with pytest.raises(InferenceServerException) as info:
            client.infer("cnn", [triton_input()])
        assert info.value.status() == "StatusCode.UNAUTHENTICATED"
    finally:
        client.close()


# --- mutual TLS -------------------------------------------------------------------------------------------


def test_mtls_client_with_a_certificate_from_the_ca_works(mtls_server: str, pki: TestPKI, in_process) -> None:
    tls = TLSConfig(pki.ca, certificate_chain=pki.client_cert, private_key=pki.client_key)
    expected = in_process("cnn", {"image": IMAGES})["output_0"]
    with Client(mtls_server, tls=tls) as client:
        assert client.predict("cnn", {"image": IMAGES})["output_0"].tobytes() == expected.tobytes()

    async def main() -> np.ndarray:
        async with AsyncClient(mtls_server, tls=tls) as client:
            return (await client.predict("cnn", {"image": IMAGES}))["output_0"]

    assert asyncio.run(main()).tobytes() == expected.tobytes()


def test_mtls_refuses_clients_without_a_valid_certificate(mtls_server: str, pki: TestPKI) -> None:
    no_cert = TLSConfig(root_certificates=pki.ca)
    stranger = TLSConfig(pki.ca, certificate_chain=pki.other_client_cert, private_key=pki.other_client_key)
    server_cert_as_client = TLSConfig(pki.ca, certificate_chain=pki.server_cert, private_key=pki.server_key)
    for tls in (no_cert, stranger, server_cert_as_client, None):
        client = Client(mtls_server, tls=tls, retry=None, timeout=10)
        with client, pytest.raises(UnavailableError):
            client.predict("cnn", {"image": IMAGES})


def test_tritonclient_with_a_client_certificate(mtls_server: str, pki: TestPKI) -> None:
    client = triton.InferenceServerClient(
        mtls_server,
        ssl=True,
        root_certificates=str(pki.ca),
        private_key=str(pki.client_key),
        certificate_chain=str(pki.client_cert),
    )
    try:
        assert client.infer("cnn", [triton_input()]).as_numpy("output_0").shape == (2, 10)
    finally:
        client.close()
    client = triton.InferenceServerClient(mtls_server, ssl=True, root_certificates=str(pki.ca))
    try:
        with pytest.raises(InferenceServerException) as info:
            client.infer("cnn", [triton_input()], client_timeout=10)
        assert info.value.status() == "StatusCode.UNAVAILABLE"
    finally:
        client.close()


# --- message size -----------------------------------------------------------------------------------------


def test_oversize_request_is_resource_exhausted(model_repo: Path, tmp_path: Path) -> None:
    """--max-message-mb 1: a 2 MiB request ends RESOURCE_EXHAUSTED, the server keeps serving small ones."""
    big = np.zeros((8192, 8, 8, 1), np.float32)  # 2 MiB of raw contents
    with running_server(model_repo, tmp_path, "--max-message-mb", "1") as (target, proc):
        with Client(target, retry=None, timeout=30) as client:
            with pytest.raises(ResourceExhaustedError, match="larger than max"):
                client.predict("cnn", {"image": big})
            assert client.predict("cnn", {"image": big[:1000]})["output_0"].shape == (1000, 10)
        with grpc.insecure_channel(target) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            with pytest.raises(grpc.RpcError) as info:
                stub.ModelInfer(unary_request(big), timeout=30)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert proc.poll() is None


# --- the kerve CLI ----------------------------------------------------------------------------------------


def test_cli_models_and_predict_with_tls_token_and_client_certificate(
    tls_token_server: str, mtls_server: str, pki: TestPKI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(f"# for kerve models\n{TOKEN}\n")
    tls_ca = ("--tls-ca", str(pki.ca))
    assert cli.main(["models", "--target", tls_token_server, *tls_ca, "--token-file", str(token_file)]) == 0
    out = capsys.readouterr().out
    assert "cnn" in out and "READY" in out
    assert cli.main(["models", "--target", tls_token_server, *tls_ca]) == 1
    assert "UNAUTHENTICATED" in capsys.readouterr().err

    images = tmp_path / "images.npy"
    np.save(images, IMAGES)
    client_cert = ("--tls-cert", str(pki.client_cert), "--tls-key", str(pki.client_key))
    predict = ["predict", "--target", mtls_server, "--model", "cnn", "--input", f"image={images}"]
    assert cli.main([*predict, *tls_ca, *client_cert]) == 0
    assert "output_0: dtype=float32 shape=[2, 10]" in capsys.readouterr().out
    assert cli.main([*predict, *tls_ca, "--tls-cert", str(pki.client_cert)]) == 2
    assert "go together" in capsys.readouterr().err
    assert cli.main([*predict, *tls_ca, "--token-file", str(tmp_path / "missing")]) == 2
    assert "cannot read token file" in capsys.readouterr().err
