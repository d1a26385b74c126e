"""Request tracing (server/trace.py) without TensorFlow: Triton's settings semantics (global and per model, clearing,
sampling by rate and count), refusals that change nothing, and the JSON it writes."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from kerve.server.errors import ErrorCode, ServingError
from kerve.server.trace import KEYS, Tracer

STAMPS = [("REQUEST_START", 1.0), ("QUEUE_START", 1.001), ("COMPUTE_START", 1.002), ("COMPUTE_END", 1.005),
          ("REQUEST_END", 1.006)]  # fmt: skip


def refused(tracer: Tracer, model: str | None, changes: dict[str, list[str]], words: str) -> None:
    before = (tracer.settings(model), tracer.settings(None), tracer.on)
    with pytest.raises(ServingError) as info:
        tracer.update(model, changes)
    assert info.value.code is ErrorCode.INVALID_ARGUMENT and words in info.value.message
    assert (tracer.settings(model), tracer.settings(None), tracer.on) == before


def test_defaults_are_tritons_and_tracing_starts_off() -> None:
    tracer = Tracer()
    assert tracer.settings() == {
        "trace_file": [""],
        "trace_level": ["OFF"],
        "trace_rate": ["1000"],
        "trace_count": ["-1"],
        "log_frequency": ["0"],
        "trace_mode": ["triton"],
    }
    assert set(tracer.settings()) == set(KEYS) and not tracer.on
    assert Tracer(level="TIMESTAMPS", rate=5).settings()["trace_rate"] == ["5"]
    assert Tracer(level="TIMESTAMPS,TENSORS").settings()["trace_level"] == ["TIMESTAMPS", "TENSORS"]


def test_every_rate_th_request_is_traced_until_the_count_runs_out() -> None:
    tracer = Tracer()
    tracer.update(None, {"trace_level": ["TIMESTAMPS"], "trace_rate": ["2"], "trace_count": ["3"]})
    assert tracer.on
    picks = [tracer.sample("a") for _ in range(10)]
    assert picks == [False, True, False, True, False, True, False, False, False, False]
    tracer.update(None, {"trace_count": ["1"]})  # a new count starts over
    assert [tracer.sample("a") for _ in range(4)].count(True) == 1
    tracer.update(None, {"trace_count": ["-1"], "trace_rate": ["1"]})
    assert all(tracer.sample("b") for _ in range(5))


def test_a_models_settings_override_the_global_ones_until_cleared() -> None:
    tracer = Tracer()
    got = tracer.update("a", {"trace_level": ["TIMESTAMPS"], "trace_rate": ["1"]})
    assert got["trace_level"] == ["TIMESTAMPS"] and got["trace_count"] == ["-1"]  # the rest: global values
    assert tracer.on and tracer.sample("a") and not tracer.sample("b")
    assert tracer.settings("b")["trace_level"] == ["OFF"]
    tracer.update("a", {"trace_level": []})  # cleared: back to the global OFF
    assert tracer.settings("a")["trace_level"] == ["OFF"] and not tracer.on
    tracer.update(None, {"trace_rate": ["7"]})
    tracer.update(None, {"trace_rate": []})  # a global value cleared: back to the start value
    assert tracer.settings()["trace_rate"] == ["1000"]


def test_what_kerve_cannot_apply_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    tracer = Tracer(tmp_path / "t.json")
    refused(tracer, None, {"trace_level": ["OFF", "TIMESTAMPS"]}, "trace_level must be OFF, or TIMESTAMPS and/or")
    refused(tracer, None, {"trace_level": ["TENSOR"]}, "trace_level must be OFF, or TIMESTAMPS and/or TENSORS")
    refused(tracer, None, {"trace_rate": ["0"]}, "'trace_rate' must be an integer >= 1")
    refused(tracer, "a", {"trace_count": ["-2"]}, "'trace_count' must be an integer >= -1")
    refused(tracer, None, {"log_frequency": ["often"]}, "'log_frequency' must be an integer >= 0")
    refused(tracer, None, {"trace_rate": ["1", "2"]}, "takes one value")
    refused(tracer, None, {"trace_mode": ["opentelemetry"]}, "trace_mode is fixed when the server starts")
    refused(tracer, None, {"trace_mode": ["zipkin"]}, "trace_mode is fixed")
    refused(tracer, None, {"trace_file": ["/etc/passwd"]}, "fixed when the server starts")
    refused(tracer, None, {"trace_level": ["TIMESTAMPS"], "tracing": ["yes"]}, "unknown trace setting 'tracing'")
    assert tracer.update(None, {"trace_file": [str(tmp_path / "t.json")]})  # repeating it is fine


def test_without_a_file_each_trace_is_a_json_line_in_the_log(caplog: pytest.LogCaptureFixture) -> None:
    tracer = Tracer()
    with caplog.at_level(logging.INFO, logger="kerve.trace"):
        tracer.record("m", 3, "req-1", STAMPS)
    (line,) = [r.getMessage() for r in caplog.records if r.name == "kerve.trace"]
    trace = json.loads(line)
    assert (trace["model_name"], trace["model_version"], trace["request_id"]) == ("m", 3, "req-1")
    assert [t["name"] for t in trace["timestamps"]] == [name for name, _ in STAMPS]
    assert trace["timestamps"][0]["ns"] == 1_000_000_000


def test_the_tensors_level_records_inputs_as_queued_and_outputs_as_answered(tmp_path: Path) -> None:
    """Triton's TENSORS entries: one per tensor, with the trace's id, values flattened and comma-separated."""
    inputs = {"x": np.array([[0.5, 1.0], [2.0, -3.0]], np.float32), "text": np.array([b"hi", "th\u00e9".encode()])}
    outputs = {"y": np.array([[1], [0]], np.int64)}
    tracer = Tracer(tmp_path / "t.json")
    tracer.update(None, {"trace_level": ["TIMESTAMPS", "TENSORS"]})
    tracer.record("m", 1, "r", STAMPS, inputs, outputs)
    tracer.update("only", {"trace_level": ["TENSORS"]})
    tracer.record("only", 2, "s", STAMPS, inputs)  # a failed request: its inputs only
    tracer.update(None, {"trace_level": ["TIMESTAMPS"]})
    tracer.record("m", 1, "t", STAMPS, inputs, outputs)  # no tensors at TIMESTAMPS
    tracer.close()
    entries = json.loads((tmp_path / "t.json").read_text())
    first = [e for e in entries if e["id"] == 1]
    assert first[0]["request_id"] == "r" and len(first[0]["timestamps"]) == 5
    assert [(e["activity"], e["tensor"]) for e in first[1:]] == [
        ("TENSOR_QUEUE_INPUT", {"name": "x", "data": "0.5,1.0,2.0,-3.0", "shape": "2,2", "dtype": "FP32"}),
        ("TENSOR_QUEUE_INPUT", {"name": "text", "data": "hi,th\u00e9", "shape": "2", "dtype": "BYTES"}),
        ("TENSOR_BACKEND_OUTPUT", {"name": "y", "data": "1,0", "shape": "2,1", "dtype": "INT64"}),
    ]
    second = [e for e in entries if e["id"] == 2]
    assert "timestamps" not in second[0] and [e["activity"] for e in second[1:]] == ["TENSOR_QUEUE_INPUT"] * 2
    assert [e for e in entries if e["id"] == 3] == [
        {"id": 3, "model_name": "m", "model_version": 1, "request_id": "t", "timestamps": first[0]["timestamps"]}
    ]


def test_files_every_log_frequency_traces_and_the_rest_at_close(tmp_path: Path) -> None:
    path = tmp_path / "trace.json"
    tracer = Tracer(path)
    tracer.update(None, {"log_frequency": ["2"]})
    for i in range(5):
        tracer.record("m", 1, str(i), STAMPS)
    tracer.close()
    files = [json.loads((tmp_path / f"trace.json.{i}").read_text()) for i in range(3)]
    assert [[t["request_id"] for t in traces] for traces in files] == [["0", "1"], ["2", "3"], ["4"]]
    assert [t["id"] for traces in files for t in traces] == [1, 2, 3, 4, 5]
    assert not path.exists()

    whole = Tracer(tmp_path / "all.json")  # log_frequency 0: one file at shutdown
    whole.record("m", None, "", STAMPS)
    assert not (tmp_path / "all.json").exists()
    whole.close()
    (trace,) = json.loads((tmp_path / "all.json").read_text())
    assert trace["model_version"] == -1
