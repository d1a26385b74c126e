"""KServe ModelServer with SavedModels, for bench.peers: each model's `serving_default` signature called as kerve's
function path and the in-process bench call it (numpy in through `tf.convert_to_tensor`, numpy out, in a worker
thread). Runs in KServe's own venv (.venv-kserve):

    python kserve_savedmodel.py --grpc_port N --http_port M --model=NAME=SAVED_MODEL_DIR [--model=...]

KServe reads its own flags (ports, workers) from the same command line.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import kserve
import numpy as np
from kserve import InferOutput, InferRequest, InferResponse

DATATYPES = {"float32": "FP32", "float64": "FP64", "int32": "INT32", "int64": "INT64"}


class SavedModel(kserve.Model):
    def __init__(self, name: str, path: str) -> None:
        super().__init__(name)
        self._path = path
        self.load()

    def load(self) -> bool:
        import tensorflow as tf

        self._tf = tf
        self._signature = tf.saved_model.load(self._path).signatures["serving_default"]
        self.ready = True
        return self.ready

    def _call(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        tf = self._tf
        out = self._signature(**{k: tf.convert_to_tensor(v) for k, v in inputs.items()})
        return {k: v.numpy() for k, v in out.items()}

    async def predict(self, payload: InferRequest, headers: Any = None, response_headers: Any = None) -> InferResponse:
        inputs = {i.name: i.as_numpy() for i in payload.inputs}
        outputs = await asyncio.get_running_loop().run_in_executor(None, self._call, inputs)
        infer_outputs = []
        for name, array in sorted(outputs.items()):
            output = InferOutput(name=name, shape=list(array.shape), datatype=DATATYPES[array.dtype.name])
            output.set_data_from_numpy(array, binary_data=True)
            infer_outputs.append(output)
        return InferResponse(response_id=payload.id or "", model_name=self.name, infer_outputs=infer_outputs)


def main() -> None:
    parser = argparse.ArgumentParser(parents=[kserve.model_server.parser])
    parser.add_argument("--model", action="append", default=[], help="NAME=SAVED_MODEL_DIR (repeatable)")
    args, _ = parser.parse_known_args()
    models = [SavedModel(*item.split("=", 1)) for item in args.model]
    kserve.ModelServer(http_port=args.http_port, grpc_port=args.grpc_port).start(models)


if __name__ == "__main__":
    main()
