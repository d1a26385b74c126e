"""Triton's trace extension against a real `kerve serve --trace-file`, driven by tritonclient's
get/update_trace_settings: a model's requests traced at rate 1 land in Triton's JSON trace files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from helpers import running_server, wait_for
from kerve.client import Client, InvalidArgumentError

pytestmark = pytest.mark.integration


def test_tritonclient_turns_tracing_on_for_a_model(model_repo: Path, tmp_path: Path) -> None:
    trace_file = tmp_path / "trace.json"
    with running_server(model_repo, tmp_path, "--trace-file", str(trace_file)) as (target, _proc):
        client = triton.InferenceServerClient(target)
        try:
            assert "trace" in client.get_server_metadata().extensions
            settings = client.get_trace_settings(as_json=True)["settings"]
            assert settings["trace_level"]["value"] == ["OFF"] and settings["trace_file"]["value"] == [str(trace_file)]

            changed = client.update_trace_settings(
                "cnn", {"trace_level": ["TIMESTAMPS"], "trace_rate": "1", "log_frequency": "1"}, as_json=True
            )["settings"]
            assert changed["trace_level"]["value"] == ["TIMESTAMPS"] and changed["trace_rate"]["value"] == ["1"]
            assert client.get_trace_settings(as_json=True)["settings"]["trace_level"]["value"] == ["OFF"]  # global

            image = triton.InferInput("image", [1, 8, 8, 1], "FP32")
            image.set_data_from_numpy(np.zeros((1, 8, 8, 1), np.float32))
            for i in range(2):
                client.infer("cnn", [image], request_id=f"r{i}")
            files = [tmp_path / "trace.json.0", tmp_path / "trace.json.1"]
            wait_for(lambda: all(f.exists() for f in files), "two trace files (log_frequency 1)", timeout_s=30)
            traces = [json.loads(f.read_text())[0] for f in files]
            assert [t["request_id"] for t in traces] == ["r0", "r1"]
            for trace in traces:
                assert (trace["model_name"], trace["model_version"]) == ("cnn", 1)
                names = [stamp["name"] for stamp in trace["timestamps"]]
                assert names == [
                    "REQUEST_START", "QUEUE_START", "COMPUTE_START", "COMPUTE_INPUT_END", "COMPUTE_OUTPUT_START",
                    "COMPUTE_END", "REQUEST_END",
                ]  # fmt: skip

            # TENSORS: the request's inputs as queued and the outputs it was answered with
            client.update_trace_settings("cnn", {"trace_level": ["TIMESTAMPS", "TENSORS"]})
            client.infer("cnn", [image], request_id="r2")
            wait_for(lambda: (tmp_path / "trace.json.2").exists(), "a third trace file", timeout_s=30)
            entries = json.loads((tmp_path / "trace.json.2").read_text())
            assert entries[0]["request_id"] == "r2" and len(entries[0]["timestamps"]) == 7
            tensors = {e["activity"]: e["tensor"] for e in entries[1:]}
            assert tensors["TENSOR_QUEUE_INPUT"] == {"name": "image", "data": ",".join(["0.0"] * 64),
                                                     "shape": "1,8,8,1", "dtype": "FP32"}  # fmt: skip
            output = tensors["TENSOR_BACKEND_OUTPUT"]
            assert (output["shape"], output["dtype"], len(output["data"].split(","))) == ("1,10", "FP32", 10)

            for settings, words in (
                ({"trace_level": ["TENSOR"]}, "trace_level must be OFF, or TIMESTAMPS and/or TENSORS"),
                ({"trace_file": "/tmp/elsewhere.json"}, "fixed when the server starts"),
            ):
                with pytest.raises(InferenceServerException) as info:
                    client.update_trace_settings("cnn", settings)
                assert info.value.status() == "StatusCode.INVALID_ARGUMENT" and words in info.value.message()
            with pytest.raises(InferenceServerException) as info:
                client.get_trace_settings("nope")
            assert info.value.status() == "StatusCode.NOT_FOUND"
            client.update_trace_settings("cnn", {"trace_level": None})  # cleared: the global OFF again
            assert client.get_trace_settings("cnn", as_json=True)["settings"]["trace_level"]["value"] == ["OFF"]

            with Client(target, retry=None) as sdk:  # kerve.client speaks the same RPC
                got = sdk.update_trace_settings({"trace_count": 5, "log_frequency": None}, model="cnn")
                assert got["trace_count"] == ["5"] and got["log_frequency"] == ["0"]  # cleared: the global value
                assert sdk.trace_settings("cnn")["trace_count"] == ["5"]
                assert sdk.trace_settings()["trace_count"] == ["-1"]  # the global one
                with pytest.raises(InvalidArgumentError, match="trace_level must be OFF, or TIMESTAMPS"):
                    sdk.update_trace_settings({"trace_level": "OFTEN"})
        finally:
            client.close()
