"""Per-call headers (gRPC metadata) through the SDK, against a recording in-process V2 servicer (no TensorFlow): what
each call puts on the wire beside the bearer token (unary and stream, sync and async), nothing new without headers,
bad headers refused before anything is sent, and a retried call resending them."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from test_client_priority import Recording

from helpers import in_process_v2_server
from kerve.client import AsyncClient, Client, RetryPolicy
from kerve.client.options import call_metadata
from kerve.protos import grpc_service_pb2 as pb

X = {"x": np.arange(6, dtype=np.float32).reshape(2, 3)}
TOKEN = "s3cret"
BEARER = [("authorization", f"Bearer {TOKEN}")]
HEADERS: dict[str, str | bytes] = {
    "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "x-route.zone_1": "eu west",
    "trace-bin": b"\x00\xff\n",
}
GRPC_OWN = {"user-agent"}  # what grpc adds to every call by itself
FAST_RETRY = RetryPolicy(max_attempts=2, initial_backoff_s=0.001, max_backoff_s=0.001)

Seen = list[tuple[str, list[tuple[str, Any]]]]


def by_key(metadata: Any) -> list[tuple[str, Any]]:
    """Metadata in key order, repeats kept: grpc puts the keys it knows (`traceparent`) in an order of its own."""
    return sorted(((key, value) for key, value in metadata if key not in GRPC_OWN), key=lambda item: item[0])


SENT = by_key(BEARER + list(HEADERS.items()))  # with the token


class HeaderRecording(Recording):
    """test_client_priority's echoing servicer, also keeping each call's method and metadata (less grpc's own);
    `unavailable` ModelInfer calls fail UNAVAILABLE first."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Seen = []
        self.unavailable = 0

    def _record(self, method: str, context: Any) -> None:
        self.calls.append((method, by_key((m.key, m.value) for m in context.invocation_metadata())))

    def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        self._record("ModelMetadata", context)
        return super().ModelMetadata(request, context)

    def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        self._record("ModelInfer", context)
        if self.unavailable:
            self.unavailable -= 1
            context.abort(grpc.StatusCode.UNAVAILABLE, "draining")
        return super().ModelInfer(request, context)

    def ModelStreamInfer(self, request_iterator: Iterator[pb.ModelInferRequest], context: Any) -> Any:
        self._record("ModelStreamInfer", context)
        yield from super().ModelStreamInfer(request_iterator, context)


@pytest.fixture
def recording() -> Iterator[tuple[str, HeaderRecording]]:
    servicer = HeaderRecording()
    with in_process_v2_server(servicer, workers=4) as target:
        yield target, servicer


def sync_calls(client: Client, **kwargs: Any) -> None:
    """Every call that takes headers, once: ModelInfer x2, then classify's ModelMetadata + ModelInfer, ModelInfer."""
    assert client.infer("m", X, **kwargs).outputs["y"].tolist() == X["x"].tolist()
    client.predict("m", X, **kwargs)
    assert client.classify("m", X, **kwargs).indices.tolist() == [[1]]  # a metadata call first, for the output
    client.classify("m", X, output="y", **kwargs)
    with client.stream("m", **kwargs) as stream:
        stream.infer(X)
        stream.predict(X)


async def async_calls(client: AsyncClient, **kwargs: Any) -> None:
    assert (await client.infer("m", X, **kwargs)).outputs["y"].tolist() == X["x"].tolist()
    await client.predict("m", X, **kwargs)
    assert (await client.classify("m", X, **kwargs)).indices.tolist() == [[1]]
    await client.classify("m", X, output="y", **kwargs)
    async with client.stream("m", **kwargs) as stream:
        await stream.infer(X)
        await stream.predict(X)


METHODS = ["ModelInfer", "ModelInfer", "ModelMetadata", "ModelInfer", "ModelInfer", "ModelStreamInfer"]


def run_async(target: str, token: str | None, **kwargs: Any) -> None:
    async def main() -> None:
        async with AsyncClient(target, token=token) as client:
            await async_calls(client, **kwargs)

    asyncio.run(main())


# --- what goes out --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("token", [None, TOKEN])
@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
def test_every_call_carries_the_headers_after_the_token(
    recording: tuple[str, HeaderRecording], token: str | None, use_async: bool
) -> None:
    target, servicer = recording
    if use_async:
        run_async(target, token, headers=HEADERS)
    else:
        with Client(target, token=token) as client:
            sync_calls(client, headers=HEADERS)
    expected = SENT if token else by_key(HEADERS.items())
    assert servicer.calls == [(method, expected) for method in METHODS]  # one stream: its metadata once
    assert len(servicer.infers()) == 6  # and the stream's two messages went over that one call


@pytest.mark.parametrize("token", [None, TOKEN])
@pytest.mark.parametrize("headers", [None, {}], ids=["none", "empty"])
def test_without_headers_calls_send_what_they_sent_before(
    recording: tuple[str, HeaderRecording], token: str | None, headers: dict[str, str] | None
) -> None:
    target, servicer = recording
    handed: list[Any] = []  # the `metadata` argument each grpc call got

    class Spy:
        def __init__(self, stub: Any) -> None:
            self.stub = stub

        def __getattr__(self, name: str) -> Any:
            method = getattr(self.stub, name)

            def call(*args: Any, **kwargs: Any) -> Any:
                handed.append(kwargs["metadata"])
                return method(*args, **kwargs)

            return call

    def spy_on(client: Client | AsyncClient) -> None:  # its one connection's stub, which every call takes
        client._stubs = [Spy(client._stubs[0])]
        client._turns = itertools.cycle(client._stubs)

    with Client(target, token=token) as client:
        spy_on(client)
        sync_calls(client, **({} if headers is None else {"headers": headers}))
        sync_calls(client)

    async def main() -> None:
        async with AsyncClient(target, token=token) as aclient:
            spy_on(aclient)
            await async_calls(aclient, headers=headers)

    asyncio.run(main())
    assert handed == [call_metadata(token)] * 18  # None without a token, as before headers existed
    assert servicer.calls == [(method, BEARER if token else []) for method in METHODS * 3]


def test_authorization_is_a_header_like_any_other_without_a_token(recording: tuple[str, HeaderRecording]) -> None:
    target, servicer = recording
    with Client(target) as client:
        client.infer("m", X, headers={"authorization": "Bearer per-call"})  # one token per call, the caller's
    assert servicer.calls == [("ModelInfer", [("authorization", "Bearer per-call")])]


# --- what is refused ------------------------------------------------------------------------------------------

BAD = [
    ({"Traceparent": "00-ab"}, None, r"header 'Traceparent': a key is non-empty lowercase ASCII"),
    ({"": "v"}, None, r"header '': a key is non-empty"),
    ({"x route": "v"}, None, r"header 'x route': a key is"),
    ({"grpc-timeout": "1S"}, None, r"header 'grpc-timeout': .*reserved for gRPC"),
    ({"x-note": "caf\u00e9"}, None, r"header 'x-note': the value must be a str of printable ASCII"),
    ({"x-note": "two\nlines"}, None, r"header 'x-note': the value must be a str of printable ASCII"),
    ({"x-note": b"raw"}, None, r"header 'x-note': the value must be a str"),
    ({"trace-bin": "00ff"}, None, r"header 'trace-bin': a '-bin' key takes a bytes value, got str"),
    ({"ok": "v", "authorization": "Bearer other"}, TOKEN, r"header 'authorization' conflicts with the client's token"),
]


@pytest.mark.parametrize(("headers", "token", "message"), BAD, ids=[repr(h) for h, _, _ in BAD])
def test_a_bad_header_raises_before_anything_is_sent(
    recording: tuple[str, HeaderRecording], headers: dict[str, Any], token: str | None, message: str
) -> None:
    target, servicer = recording
    with Client(target, token=token) as client:
        for call in (client.infer, client.predict, client.classify):  # classify: not even its metadata call
            with pytest.raises(ValueError, match=message):
                call("m", X, headers=headers)
        with pytest.raises(ValueError, match=message):
            client.stream("m", headers=headers)

    async def main() -> None:
        async with AsyncClient(target, token=token) as aclient:
            for call in (aclient.infer, aclient.predict, aclient.classify):
                with pytest.raises(ValueError, match=message):
                    await call("m", X, headers=headers)
            with pytest.raises(ValueError, match=message):
                aclient.stream("m", headers=headers)

    asyncio.run(main())
    assert servicer.calls == [] and servicer.received == []


def test_headers_must_be_a_mapping(recording: tuple[str, HeaderRecording]) -> None:
    target, servicer = recording
    with Client(target) as client, pytest.raises(TypeError, match="headers must be a mapping"):
        client.infer("m", X, headers=[("traceparent", "00-ab")])  # type: ignore[arg-type]
    assert servicer.calls == []


# --- retries --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
def test_a_retried_call_resends_the_headers(recording: tuple[str, HeaderRecording], use_async: bool) -> None:
    target, servicer = recording
    servicer.unavailable = 1
    if use_async:

        async def main() -> dict[str, Any]:
            async with AsyncClient(target, token=TOKEN, retry=FAST_RETRY) as aclient:
                return await aclient.predict("m", X, headers=HEADERS)

        outputs = asyncio.run(main())
    else:
        with Client(target, token=TOKEN, retry=FAST_RETRY) as client:
            outputs = client.predict("m", X, headers=HEADERS)
    assert outputs["y"].tolist() == X["x"].tolist()
    assert servicer.unavailable == 0
    assert servicer.calls == [("ModelInfer", SENT)] * 2
