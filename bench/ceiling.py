"""The bare-gRPC ceiling: a trivial grpc.aio server on the same RPC paths as kerve, with no model behind it.

    python -m bench.ceiling --port PORT --responses FILE.json

It serves `/inference.GRPCInferenceService/ModelInfer` and `ModelStreamInfer` through the same generated handlers
kerve uses (so each request is deserialized into a `ModelInferRequest` exactly as in kerve), and answers with a
canned `ModelInferResponse` of the same size as the model's real batch-1 response (same output names, datatypes,
shapes and raw bytes length), which gRPC serializes per call. What kerve costs beyond this is kerve.

`ServerReady` answers true so readiness polling works; every other RPC is UNIMPLEMENTED.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from kerve import codecs
from kerve.protos import grpc_service_pb2 as pb
from kerve.protos import grpc_service_pb2_grpc as pb_grpc
from kerve.server import event_loop


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


async def serve(port: int, responses: dict[str, pb.ModelInferResponse]) -> None:
    server = grpc.aio.server(
        options=[
            ("grpc.max_send_message_length", 256 * 1024 * 1024),
            ("grpc.max_receive_message_length", 256 * 1024 * 1024),
            ("grpc.so_reuseport", 0),
        ]
    )
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(CeilingServicer(responses), server)
    if server.add_insecure_port(f"127.0.0.1:{port}") == 0:
        raise OSError(f"could not bind 127.0.0.1:{port}")
    await server.start()
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
    args = parser.parse_args(argv)
    spec = json.loads(args.responses.read_text())
    _name, run = event_loop.runner(args.event_loop)
    run(serve(args.port, {model: canned_response(model, outputs) for model, outputs in spec.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
