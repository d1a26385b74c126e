"""kerve's own request path in isolation: the engine and the V2 stream servicer with an instant fake model (no
TensorFlow call, no gRPC), on one event loop. A design input, like `bench.call_paths`.

    .venv/bin/python -m bench.request_path --concurrency 1,64

The RPC benchmark's `kerve_own_cpu_ms_per_req` (server CPU minus the bare server's minus the model's) lumps
together kerve's Python and everything running it inside a server costs (GIL hand-offs between the loop and the
inference threads, thread wake-ups per batch, a model call that is dearer when calls are apart). This separates
the first: per request, the Python function calls (cProfile's count, which unlike time does not move with the
machine's noise) and the loop thread's CPU time, for unary requests (`InferenceEngine.infer`) and for streamed
ones (`V2Servicer.ModelStreamInfer`, the closed-loop client's own queue and generator work included).

`--response-cache` adds both paths again with the model opted into a response cache and every request the same:
after the first, each is answered from the cache (no batcher, no worker thread), which is what a cache hit costs.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry

from kerve import codecs
from kerve.protos import grpc_service_pb2 as pb
from kerve.server.batcher import BatchingConfig
from kerve.server.inference import InferenceEngine
from kerve.server.manager import ModelVersion
from kerve.server.metrics import Metrics
from kerve.server.model_config import ModelConfig
from kerve.server.response_cache import ResponseCache
from kerve.server.types import InferRequest, TensorSpec
from kerve.server.v2_service import V2Servicer

MODEL = "m"
ROW = np.ones((1, 8), np.float32)


class InstantModel:
    """A servable whose one signature returns its input: what is left is kerve's own work."""

    key = "serving_default"
    inputs = {"x": TensorSpec("x", np.dtype(np.float32), (None, 8))}
    outputs = {"y": TensorSpec("y", np.dtype(np.float32), (None, 8))}
    runner_devices = ["cpu"]

    def signature(self, key: str | None = None) -> InstantModel:
        return self

    def runners(self, key: str) -> list[Any]:
        return [self.run]

    def run(self, inputs: Mapping[str, np.ndarray], output_names: Any = None) -> dict[str, np.ndarray]:
        return {"y": inputs["x"]}


class OneVersion:
    """The manager's request-path surface over a single loaded version."""

    def __init__(self, cached: bool = False) -> None:
        config = ModelConfig(response_cache=cached)
        self.entry = ModelVersion(MODEL, 1, Path("/nowhere"), servable=InstantModel(), config=config)

    def knows(self, model: str) -> bool:
        return model == MODEL

    def acquire(self, model: str, version: int | None = None, label: str | None = None) -> ModelVersion:
        self.entry.inflight += 1
        return self.entry

    def release(self, entry: ModelVersion) -> None:
        entry.inflight -= 1

    def snapshot(self) -> list[ModelVersion]:  # what a metrics push reads
        return [self.entry]


def engine(cached: bool = False) -> InferenceEngine:
    cache = ResponseCache(1 << 20) if cached else None
    return InferenceEngine(
        OneVersion(cached), ThreadPoolExecutor(1), Metrics(CollectorRegistry()), BatchingConfig(), cache=cache,  # type: ignore[arg-type]
    )  # fmt: skip


async def unary(eng: InferenceEngine, concurrency: int, seconds: float) -> int:
    done = 0
    end = time.monotonic() + seconds

    async def client() -> None:
        nonlocal done
        while time.monotonic() < end:
            await eng.infer(InferRequest(model=MODEL, inputs={"x": ROW}))
            done += 1

    await asyncio.gather(*[client() for _ in range(concurrency)])
    return done


class _Context:
    def time_remaining(self) -> float | None:
        return None


async def stream(eng: InferenceEngine, concurrency: int, seconds: float) -> int:
    servicer = V2Servicer(None, eng, lambda: True)  # type: ignore[arg-type]
    tensor = pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[1, 8])
    message = pb.ModelInferRequest(model_name=MODEL, inputs=[tensor], raw_input_contents=[codecs.encode_raw(ROW)])
    done = 0
    end = time.monotonic() + seconds

    async def client() -> None:
        nonlocal done
        outbox: asyncio.Queue[pb.ModelInferRequest | None] = asyncio.Queue()

        async def requests() -> Any:
            while (item := await outbox.get()) is not None:
                yield item

        responses = servicer.ModelStreamInfer(requests(), _Context())  # type: ignore[arg-type]
        while time.monotonic() < end:
            outbox.put_nowait(message)
            response = await anext(responses)
            if response.error_message:
                raise RuntimeError(response.error_message)
            done += 1
        outbox.put_nowait(None)
        async for _ in responses:
            pass

    await asyncio.gather(*[client() for _ in range(concurrency)])
    return done


def measure(kind: str, concurrency: int, seconds: float) -> dict[str, float]:
    run = unary if kind.startswith("unary") else stream
    eng = engine(cached=kind.endswith("+cache"))
    asyncio.run(run(eng, concurrency, 0.3))  # warm: batchers made, metric series created
    started, cpu = time.monotonic(), time.thread_time()
    requests = asyncio.run(run(eng, concurrency, seconds))
    wall, cpu = time.monotonic() - started, time.thread_time() - cpu
    profiler = cProfile.Profile()
    profiler.enable()
    counted = asyncio.run(run(eng, concurrency, min(seconds, 1.0)))
    profiler.disable()
    calls = pstats.Stats(profiler).total_calls  # type: ignore[attr-defined]
    return {
        "requests_per_s": round(requests / wall, 1),
        "loop_cpu_us_per_req": round(cpu / requests * 1e6, 1),
        "python_calls_per_req": round(calls / counted, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", default="1,64", help="closed-loop requests in flight, comma-separated")
    parser.add_argument("--seconds", type=float, default=2.0, help="timed window per case")
    parser.add_argument("--out", type=Path, help="also write {path: {c<N>: figures}} as JSON")
    parser.add_argument(
        "--response-cache", action="store_true", help="also both paths answered from a response cache (unary+cache)"
    )
    args = parser.parse_args()
    print(f"{'path':12s} {'c':>3s} {'requests/s':>11s} {'loop CPU us/req':>16s} {'Python calls/req':>17s}")
    results: dict[str, dict[str, dict[str, float]]] = {}
    kinds = ("unary", "stream", "unary+cache", "stream+cache") if args.response_cache else ("unary", "stream")
    for kind in kinds:
        for c in (int(x) for x in args.concurrency.split(",") if x):
            row = results.setdefault(kind, {})[f"c{c}"] = measure(kind, c, args.seconds)
            print(
                f"{kind:12s} {c:3d} {row['requests_per_s']:11.0f} {row['loop_cpu_us_per_req']:16.1f} "
                f"{row['python_calls_per_req']:17.1f}"
            )
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
