"""Client and AsyncClient model control, statistics and server metadata against a scripted in-process gRPC
servicer (no TensorFlow): what each call sends, how refusals map to errors, what it makes of the answer."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from helpers import in_process_v2_server
from kerve.client import (
    AsyncClient,
    BatchStatistics,
    Client,
    Duration,
    FailedPreconditionError,
    InvalidArgumentError,
    ModelStatistics,
    NotFoundError,
    ServerMetadata,
)
from kerve.protos import grpc_service_pb2 as pb
from kerve.protos import grpc_service_pb2_grpc as pb_grpc


class Scripted(pb_grpc.GRPCInferenceServiceServicer):
    """Loads and unloads models of a fixed repository as kerve does in explicit mode (or refuses, in poll mode),
    and reports one call's statistics for every loaded model."""

    def __init__(self) -> None:
        self.explicit = True
        self.loaded: dict[str, dict[str, Any] | None] = {"a": None}  # name -> the config it was loaded with
        self.requests: list[Any] = []

    def _check(self, request: Any, context: Any, what: str) -> None:
        self.requests.append(request)
        if not self.explicit:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"{what} needs explicit model control")
        if request.model_name not in ("a", "b"):
            context.abort(grpc.StatusCode.NOT_FOUND, f"model {request.model_name!r} is not in the model repository")

    def RepositoryModelLoad(self, request: pb.RepositoryModelLoadRequest, context: Any) -> Any:
        self._check(request, context, "RepositoryModelLoad")
        config = json.loads(request.parameters["config"].string_param) if request.parameters else None
        if config and "sequence_batching" in config:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "load config for model 'a': sequence_batching: no")
        self.loaded[request.model_name] = config
        return pb.RepositoryModelLoadResponse()

    def RepositoryModelUnload(self, request: pb.RepositoryModelUnloadRequest, context: Any) -> Any:
        self._check(request, context, "RepositoryModelUnload")
        self.loaded.pop(request.model_name, None)
        return pb.RepositoryModelUnloadResponse()

    def ModelStatistics(self, request: pb.ModelStatisticsRequest, context: Any) -> pb.ModelStatisticsResponse:
        self.requests.append(request)
        names = [request.name] if request.name else sorted(self.loaded)
        if any(name not in self.loaded for name in names) or request.version not in ("", "1"):
            context.abort(grpc.StatusCode.NOT_FOUND, f"model {request.name!r} version {request.version} not found")
        response = pb.ModelStatisticsResponse()
        for name in names:
            stats = response.model_stats.add(name=name, version="1", inference_count=4, execution_count=1)
            for duration in (stats.inference_stats.success, stats.inference_stats.queue):
                duration.count, duration.ns = 1, 3_000_000
            batch = stats.batch_stats.add(batch_size=4)
            batch.compute_infer.count, batch.compute_infer.ns = 1, 2_000_000
        return response

    def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Any) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="kerve", version="9.9", extensions=["statistics", "model_repository"])


@pytest.fixture
def scripted() -> Iterator[tuple[str, Scripted]]:
    servicer = Scripted()
    with in_process_v2_server(servicer, workers=2) as target:
        yield target, servicer


def stats_of(name: str) -> ModelStatistics:
    d0, three_ms, two_ms = Duration(0, 0.0), Duration(1, 0.003), Duration(1, 0.002)
    return ModelStatistics(
        name, "1", 0, 4, 1, three_ms, d0, three_ms, d0, ((4, two_ms),), batches=(BatchStatistics(4, d0, two_ms, d0),)
    )


def test_load_unload_and_their_refusals(scripted: tuple[str, Scripted]) -> None:
    target, servicer = scripted
    with Client(target) as client:
        client.load_model("b", config={"max_batch_size": 4, "dynamic_batching": {}})
        sent = servicer.requests[-1]
        assert isinstance(sent, pb.RepositoryModelLoadRequest) and sent.model_name == "b"
        assert servicer.loaded["b"] == {"max_batch_size": 4, "dynamic_batching": {}}
        client.load_model("b", config='{"max_batch_size": 2}')
        assert servicer.loaded["b"] == {"max_batch_size": 2}
        client.load_model("b")
        assert servicer.loaded["b"] is None and not servicer.requests[-1].parameters
        client.unload_model("b")
        assert "b" not in servicer.loaded and isinstance(servicer.requests[-1], pb.RepositoryModelUnloadRequest)

        with pytest.raises(NotFoundError, match="model 'nope' is not in the model repository"):
            client.load_model("nope")
        with pytest.raises(NotFoundError):
            client.unload_model("nope")
        with pytest.raises(InvalidArgumentError, match="sequence_batching: no"):  # the server's own message
            client.load_model("a", config={"sequence_batching": {}})
        sent_so_far = len(servicer.requests)
        with pytest.raises(InvalidArgumentError, match="must be a ModelConfig, a dict"):
            client.load_model("a", config=[1])  # type: ignore[arg-type]
        assert len(servicer.requests) == sent_so_far  # refused before sending

        servicer.explicit = False  # a server that polls its repository
        with pytest.raises(FailedPreconditionError, match="RepositoryModelLoad needs explicit model control"):
            client.load_model("a")
        with pytest.raises(FailedPreconditionError, match="RepositoryModelUnload needs explicit model control"):
            client.unload_model("a")


def test_statistics_and_server_metadata(scripted: tuple[str, Scripted]) -> None:
    target, servicer = scripted
    servicer.loaded["b"] = None
    with Client(target) as client:
        assert client.statistics() == (stats_of("a"), stats_of("b"))
        assert servicer.requests[-1] == pb.ModelStatisticsRequest()  # every model, every version
        assert client.statistics("b", version=1) == (stats_of("b"),)
        assert servicer.requests[-1] == pb.ModelStatisticsRequest(name="b", version="1")
        with pytest.raises(NotFoundError, match="version 2 not found"):
            client.statistics("b", version=2)
        assert client.server_metadata() == ServerMetadata("kerve", "9.9", ("statistics", "model_repository"))


def test_async_twins_send_and_parse_the_same(scripted: tuple[str, Scripted]) -> None:
    target, servicer = scripted

    async def main() -> tuple[tuple[ModelStatistics, ...], ServerMetadata]:
        async with AsyncClient(target) as client:
            await client.load_model("b", config={"max_batch_size": 4})
            stats = await client.statistics("b", version="1")
            await client.unload_model("b")
            with pytest.raises(NotFoundError):
                await client.load_model("nope")
            with pytest.raises(InvalidArgumentError, match="must be a ModelConfig, a dict"):
                await client.load_model("a", config=b"{}")  # type: ignore[arg-type]
            return stats, await client.server_metadata()

    stats, metadata = asyncio.run(main())
    assert stats == (stats_of("b"),) and metadata.extensions == ("statistics", "model_repository")
    loads = [r for r in servicer.requests if isinstance(r, pb.RepositoryModelLoadRequest)]
    assert [r.model_name for r in loads] == ["b", "nope"]
    assert json.loads(loads[0].parameters["config"].string_param) == {"max_batch_size": 4}
    assert "b" not in servicer.loaded
