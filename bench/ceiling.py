"""The bare-gRPC ceiling: a trivial grpc.aio server on the same RPC paths as kerve, with no model behind it.

    python -m bench.ceiling --port PORT --responses FILE.json

It serves `/inference.GRPCInferenceService/ModelInfer` and `ModelStreamInfer` through the same generated handlers
kerve uses (so each request is deserialized into a `ModelInferRequest` exactly as in kerve), and answers with a
canned `ModelInferResponse` of the same size as the model's real batch-1 response (same output names, datatypes,
shapes and raw bytes length), which gRPC serializes per call. What kerve costs beyond this is kerve.

`ServerReady` answers true so readiness polling works; every other RPC is UNIMPLEMENTED.

With `--model NAME=PATH` (repeatable) it is instead the bare server **with the model's call**: before answering a
request for NAME it runs one batch-1 call of that SavedModel's `serving_default` on fixed inputs in a worker thread
(`run_in_executor`, the plainest way an asyncio server keeps its loop free): a server with no code of its own
between gRPC and the model. At concurrency 1 that is the fair reference for kerve's latency (`bench/ideal.py`).
`bench.run` adds `--as-served` with kerve's arguments, so that the call is kerve's own (its call path, threads and
small-batch choice: `bench.inprocess.ServedCalls`) and the difference is kerve's code around it.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import functools
import json
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from kerve import codecs
from kerve.protos import grpc_service_pb2 as pb
from kerve.protos import grpc_service_pb2_grpc as pb_grpc
from kerve.server import event_loop, thread_names


def canned_response(model: str, outputs: list[dict[str, Any]]) -> pb.ModelInferResponse:
    """A batch-1 response shaped like kerve's: one raw output per model output, zero-filled."""
    message = pb.ModelInferResponse(model_name=model, model_version="1")
    for out in outputs:
        array = np.zeros((1, *out["shape"]), dtype=out["dtype"])
        message.outputs.add(name=out["name"], datatype=codecs.datatype_of(array.dtype), shape=list(array.shape))
        message.raw_output_contents.append(codecs.encode_raw(array))
    return message


class CeilingServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, responses: dict[str, pb.ModelInferResponse]) -> None:
        self._responses = responses
        self._empty = pb.ModelInferResponse()

    def _answer(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        return self._responses.get(request.model_name, self._empty)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=True)

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=request.name in self._responses)

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        return self._answer(request)

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: Any
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        async for request in request_iterator:
            yield pb.ModelStreamInferResponse(infer_response=self._answer(request))


class ModelCallServicer(CeilingServicer):
    """The ceiling's answers, each after one batch-1 call of the request's model in a worker thread."""

    def __init__(
        self, responses: dict[str, pb.ModelInferResponse], models: dict[str, Path], served: Any = None
    ) -> None:
        super().__init__(responses)
        self._calls = {name: _batch1_call(name, path, served) for name, path in models.items()}
        self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="model")

    async def _run_model(self, request: pb.ModelInferRequest) -> None:
        call = self._calls.get(request.model_name)
        if call is not None:
            await asyncio.get_running_loop().run_in_executor(self._worker, call)

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        await self._run_model(request)
        return self._answer(request)

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: Any
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        async for request in request_iterator:
            await self._run_model(request)
            yield pb.ModelStreamInferResponse(infer_response=self._answer(request))


def _batch1_call(model: str, path: Path, served: Any = None) -> Callable[[], object]:
    """What bench.inprocess times at batch 1, on fixed inputs: the signature called directly (`DirectCalls`), or
    with `served` (a `bench.inprocess.ServedCalls`) the model called as kerve calls it."""
    from bench.inprocess import DirectCalls, warmup_calls
    from bench.models import MODELS

    calls = served or DirectCalls()
    rng = np.random.default_rng(0)
    runner, _servable = calls.load(path)  # the model's session lives as long as the runner does
    call = functools.partial(runner, {spec.name: spec.sample(rng, 1) for spec in MODELS[model].inputs})
    for _ in range(warmup_calls(runner, 1)):  # the first call traces; kerve's first choose a way for 1 row
        call()
    return call


async def serve(
    port: int, responses: dict[str, pb.ModelInferResponse], models: dict[str, Path] | None = None, served: Any = None
) -> None:
    server = grpc.aio.server(
        options=[
            ("grpc.max_send_message_length", 256 * 1024 * 1024),
            ("grpc.max_receive_message_length", 256 * 1024 * 1024),
            ("grpc.so_reuseport", 0),
        ]
    )
    servicer = ModelCallServicer(responses, models, served) if models else CeilingServicer(responses)
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    if server.add_insecure_port(f"127.0.0.1:{port}") == 0:
        raise OSError(f"could not bind 127.0.0.1:{port}")
    await server.start()
    thread_names.name_threads()  # as kerve names its own, so bench.threads tells gRPC's poller from the rest
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--responses", type=Path, required=True, help='JSON {model: [{"name", "dtype", "shape"}, ...]} (per sample)'
    )
    parser.add_argument(
        "--event-loop", choices=["asyncio", "uvloop"], default="asyncio", help="the same loop kerve runs on"
    )
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="run this SavedModel's batch-1 call in a worker thread before answering NAME (repeatable)",
    )
    parser.add_argument(
        "--as-served",
        default=None,
        metavar="JSON",
        help="with --model: call the model as `kerve serve` with these arguments (a JSON list) calls it "
        "(bench.inprocess.ServedCalls), not the signature directly",
    )
    args = parser.parse_args(argv)
    served = None
    if args.model and args.as_served is not None:
        from bench.inprocess import ServedCalls

        served = ServedCalls(json.loads(args.as_served))  # before the models load start TensorFlow's runtime
    spec = json.loads(args.responses.read_text())
    models = {}
    for item in args.model:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            parser.error(f"--model takes NAME=PATH, got {item!r}")
        models[name] = Path(path)
    _name, run = event_loop.runner(args.event_loop)
    run(serve(args.port, {model: canned_response(model, outputs) for model, outputs in spec.items()}, models, served))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
