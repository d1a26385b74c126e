"""MLServer runtime with a SavedModel, for bench.peers: the model's `serving_default` signature called as kerve's
function path and the in-process bench call it (numpy in through `tf.convert_to_tensor`, numpy out, in a worker
thread). Runs in MLServer's own venv (.venv-mlserver); model-settings.json names it as
`mlserver_savedmodel.SavedModel` with the SavedModel directory as `parameters.uri`.
"""

from __future__ import annotations

import asyncio

import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class SavedModel(MLModel):
    async def load(self) -> bool:
        import tensorflow as tf

        self._tf = tf
        self._signature = tf.saved_model.load(await get_model_uri(self._settings)).signatures["serving_default"]
        return True

    def _call(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        tf = self._tf
        out = self._signature(**{k: tf.convert_to_tensor(v) for k, v in inputs.items()})
        return {k: v.numpy() for k, v in out.items()}

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        inputs = {i.name: NumpyCodec.decode_input(i) for i in payload.inputs}
        outputs = await asyncio.get_running_loop().run_in_executor(None, self._call, inputs)
        return InferenceResponse(
            model_name=self.name,
            outputs=[NumpyCodec.encode_output(name, array) for name, array in sorted(outputs.items())],
        )
