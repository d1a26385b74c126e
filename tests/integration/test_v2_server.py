"""A real `kerve serve` process on loopback, called by our SDK, tritonclient and raw gRPC stubs."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from helpers import running_server
from kerve.client import AsyncClient, Client, InvalidArgumentError, NotFoundError
from kerve.protos import grpc_service_pb2 as pb
from kerve.protos import grpc_service_pb2_grpc as pb_grpc

pytestmark = pytest.mark.integration

RNG = np.random.default_rng(0)
IMAGES = RNG.random((5, 8, 8, 1), dtype=np.float32)
PAIR = {"features": RNG.random((4, 3), dtype=np.float32), "ids": RNG.integers(0, 16, (4, 2), dtype=np.int64)}


@pytest.fixture(scope="module")
def stub(server: str):
    with grpc.insecure_channel(server) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def assert_code(call, code: grpc.StatusCode, *fragments: str) -> str:
    with pytest.raises(grpc.RpcError) as info:
        call()
    assert info.value.code() == code, info.value.details()
    for fragment in fragments:
        assert fragment in info.value.details()
    return info.value.details()


# --- our SDK ---------------------------------------------------------------------------------------------


def test_sdk_predict_is_bit_identical_to_in_process(server: str, in_process) -> None:
    with Client(server) as client:
        assert client.live() and client.ready() and client.ready("cnn") and client.ready("cnn", 1)
        result = client.infer("cnn", {"image": IMAGES})
        expected = in_process("cnn", {"image": IMAGES})
    assert result.model_version == "1"
    assert set(result.outputs) == set(expected)
    for name, array in expected.items():
        assert result.outputs[name].dtype == array.dtype
        assert result.outputs[name].tobytes() == array.tobytes()


def test_sdk_two_inputs_and_metadata(server: str, in_process) -> None:
    with Client(server) as client:
        meta = client.metadata("pair")
        outputs = client.predict("pair", PAIR, version=1)
    assert meta.platform == "tensorflow_savedmodel" and meta.versions == ("1",)
    assert {(t.name, t.datatype, t.shape) for t in meta.inputs} == {
        ("features", "FP32", (-1, 3)),
        ("ids", "INT64", (-1, 2)),
    }
    expected = in_process("pair", PAIR)
    assert {k: v.tobytes() for k, v in outputs.items()} == {k: v.tobytes() for k, v in expected.items()}


def test_sdk_errors_are_typed(server: str) -> None:
    with Client(server) as client:
        with pytest.raises(NotFoundError, match="'nope' not found"):
            client.predict("nope", {"image": IMAGES})
        with pytest.raises(NotFoundError, match="no version 9"):
            client.predict("cnn", {"image": IMAGES}, version=9)
        with pytest.raises(InvalidArgumentError, match="expected datatype FP32, got FP64"):
            client.predict("cnn", {"image": IMAGES.astype(np.float64)})
        assert client.ready("nope") is False


def test_async_client(server: str, in_process) -> None:
    async def main() -> list[dict[str, np.ndarray]]:
        async with AsyncClient(server) as client:
            assert await client.ready("cnn")
            return await asyncio.gather(*(client.predict("cnn", {"image": IMAGES[i : i + 1]}) for i in range(5)))

    results = asyncio.run(main())
    for i, outputs in enumerate(results):
        expected = in_process("cnn", {"image": IMAGES[i : i + 1]})
        # concurrent requests may be batched together, and a batch of n can take another kernel path than a
        # batch of 1: equal to float32 rounding, not bit for bit (single requests are checked bit for bit above)
        np.testing.assert_allclose(outputs["output_0"], expected["output_0"], rtol=1e-5, atol=1e-7)


def test_models_index(server: str) -> None:
    with Client(server) as client:
        entries = {(e.name, e.version, e.state) for e in client.models()}
    assert entries == {("cnn", "1", "READY"), ("pair", "1", "READY")}


# --- tritonclient, unchanged ---------------------------------------------------------------------------


def test_tritonclient_live_ready_metadata_infer(server: str, in_process) -> None:
    client = triton.InferenceServerClient(server)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("cnn") and not client.is_model_ready("nope")
    meta = client.get_model_metadata("cnn", as_json=True)
    assert meta["inputs"] == [{"name": "image", "datatype": "FP32", "shape": ["-1", "8", "8", "1"]}]
    assert client.get_server_metadata().name == "kerve"

    inp = triton.InferInput("image", list(IMAGES.shape), "FP32")
    inp.set_data_from_numpy(IMAGES)
    result = client.infer("cnn", [inp], outputs=[triton.InferRequestedOutput("output_0")], request_id="r1")
    expected = in_process("cnn", {"image": IMAGES})["output_0"]
    assert result.as_numpy("output_0").tobytes() == expected.tobytes()
    assert result.get_response().id == "r1" and result.get_response().model_version == "1"

    a = triton.InferInput("features", [4, 3], "FP32")
    a.set_data_from_numpy(PAIR["features"])
    b = triton.InferInput("ids", [4, 2], "INT64")
    b.set_data_from_numpy(PAIR["ids"])
    pair = client.infer("pair", [a, b], model_version="1")
    assert pair.as_numpy("output_0").tobytes() == in_process("pair", PAIR)["output_0"].tobytes()
    client.close()


def test_tritonclient_model_config(server: str) -> None:
    """get_model_config, which Triton tooling calls to size its requests: the batch limit and per-row dims."""
    client = triton.InferenceServerClient(server)
    assert "model_configuration" in client.get_server_metadata().extensions
    config = client.get_model_config("cnn", as_json=True)["config"]
    assert config["name"] == "cnn" and config["platform"] == "tensorflow_savedmodel"
    assert config["max_batch_size"] == 64 and config["dynamic_batching"]["max_queue_delay_microseconds"] == "1000"
    assert config["input"] == [{"name": "image", "data_type": "TYPE_FP32", "dims": ["8", "8", "1"]}]
    assert config["output"] == [{"name": "output_0", "data_type": "TYPE_FP32", "dims": ["10"]}]
    assert config["version_policy"] == {"latest": {"num_versions": 1}}
    pair = client.get_model_config("pair", model_version="1", as_json=True)["config"]
    assert [(i["name"], i["data_type"], i["dims"]) for i in pair["input"]] == [
        ("features", "TYPE_FP32", ["3"]),
        ("ids", "TYPE_INT64", ["2"]),
    ]
    for model, version in (("nope", ""), ("cnn", "7")):
        with pytest.raises(InferenceServerException) as info:
            client.get_model_config(model, model_version=version)
        assert info.value.status() == "StatusCode.NOT_FOUND"
    client.close()


def test_tritonclient_errors(server: str) -> None:
    client = triton.InferenceServerClient(server)
    inp = triton.InferInput("image", [1, 8, 8], "FP32")
    inp.set_data_from_numpy(IMAGES[0, :, :, 0][None])
    with pytest.raises(InferenceServerException) as info:
        client.infer("cnn", [inp])
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "expected shape [-1, 8, 8, 1], got [1, 8, 8]" in info.value.message()
    with pytest.raises(InferenceServerException) as info:
        client.get_model_metadata("nope")
    assert info.value.status() == "StatusCode.NOT_FOUND"
    client.close()


def test_tritonclient_stream_infer(server: str, in_process) -> None:
    results: list = []
    done = threading.Event()

    def callback(result, error) -> None:
        results.append((result, error))
        if len(results) == 3:
            done.set()

    client = triton.InferenceServerClient(server)
    client.start_stream(callback=callback)
    for i in range(3):
        inp = triton.InferInput("image", [1, 8, 8, 1], "FP32")
        inp.set_data_from_numpy(IMAGES[i : i + 1])
        client.async_stream_infer("cnn", [inp], request_id=str(i))
    assert done.wait(30)
    client.stop_stream()
    client.close()
    for i, (result, error) in enumerate(results):
        assert error is None
        assert result.get_response().id == str(i)
        # a stream's messages run concurrently and may share a batch: equal to float32 rounding
        expected = in_process("cnn", {"image": IMAGES[i : i + 1]})["output_0"]
        np.testing.assert_allclose(result.as_numpy("output_0"), expected, rtol=1e-5, atol=1e-7)


def test_tritonclient_enable_empty_final_response_sees_the_final_flag(server: str) -> None:
    """tritonclient's decoupled-style streams wait for a response flagged `triton_final_response`: each request's
    one response carries it, on success and on failure; a request that did not ask gets no flag."""
    answers: list = []
    done = threading.Event()

    def callback(result, error) -> None:
        answers.append((result, error))
        if len(answers) == 3:
            done.set()

    client = triton.InferenceServerClient(server)
    client.start_stream(callback=callback)
    inp = triton.InferInput("image", [1, 8, 8, 1], "FP32")
    inp.set_data_from_numpy(IMAGES[:1])
    client.async_stream_infer("cnn", [inp], request_id="flagged", enable_empty_final_response=True)
    client.async_stream_infer("cnn", [inp], request_id="plain")
    client.async_stream_infer("nope", [inp], request_id="failed", enable_empty_final_response=True)
    assert done.wait(30)
    client.stop_stream()
    client.close()
    by_id = {}
    for result, error in answers:
        if error is not None:
            by_id["failed"] = error
        else:
            by_id[result.get_response().id] = result.get_response()
    assert by_id["flagged"].parameters["triton_final_response"].bool_param
    assert "triton_final_response" not in by_id["plain"].parameters
    assert "not found" in str(by_id["failed"])
    with grpc.insecure_channel(server) as channel:  # a reserved key Triton does not know is refused, as there
        bad = pb.ModelInferRequest(model_name="cnn")
        bad.inputs.add(name="image", datatype="FP32", shape=[1, 8, 8, 1])
        bad.raw_input_contents.append(IMAGES[:1].tobytes())
        bad.parameters["triton_foo"].bool_param = True
        assert_code(lambda: pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(bad), grpc.StatusCode.INVALID_ARGUMENT,
                    "parameter keys starting with 'triton_' are reserved")  # fmt: skip


def test_tritonclient_class_count_gets_the_top_classes(server: str, in_process) -> None:
    """The classification extension: `InferRequestedOutput(name, class_count=k)` answers "<score>:<index>" strings,
    best first, unary and streamed; the raw scores are the in-process model's."""
    probs = in_process("cnn", {"image": IMAGES})["output_0"]
    best = np.argsort(-probs, axis=1, kind="stable")[:, :3]
    client = triton.InferenceServerClient(server)
    assert "classification" in client.get_server_metadata().extensions
    inp = triton.InferInput("image", list(IMAGES.shape), "FP32")
    inp.set_data_from_numpy(IMAGES)
    top = client.infer("cnn", [inp], outputs=[triton.InferRequestedOutput("output_0", class_count=3)])
    got = top.as_numpy("output_0")
    assert got.shape == (5, 3) and got.dtype == object
    for row, expected in zip(got, best, strict=True):
        assert [int(item.split(b":")[1]) for item in row] == expected.tolist()
        scores = [float(item.split(b":")[0]) for item in row]
        assert scores == sorted(scores, reverse=True)

    answers: list = []
    done = threading.Event()
    client.start_stream(callback=lambda result, error: (answers.append((result, error)), done.set()))
    client.async_stream_infer("cnn", [inp], outputs=[triton.InferRequestedOutput("output_0", class_count=1)])
    assert done.wait(30)
    client.stop_stream()
    ((result, error),) = answers
    assert error is None
    assert [int(item.split(b":")[1]) for item in result.as_numpy("output_0")[:, 0]] == best[:, 0].tolist()

    bad = pb.ModelInferRequest(model_name="cnn")
    bad.inputs.add(name="image", datatype="FP32", shape=[1, 8, 8, 1])
    bad.raw_input_contents.append(IMAGES[:1].tobytes())
    bad.outputs.add(name="output_0").parameters["classification"].int64_param = -1
    with grpc.insecure_channel(server) as channel:
        assert_code(lambda: pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(bad), grpc.StatusCode.INVALID_ARGUMENT,
                    "output 'output_0': the classification parameter must be a positive integer, got -1")  # fmt: skip
    client.close()


# --- malformed requests, one exact status each -----------------------------------------------------------


def raw_request(model: str = "cnn", datatype: str = "FP32", shape=(1, 8, 8, 1), raw: bytes | None = None):
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="image", datatype=datatype, shape=list(shape))
    request.raw_input_contents.append(IMAGES[:1].tobytes() if raw is None else raw)
    return request


def test_wrong_dtype(stub) -> None:
    request = raw_request(datatype="INT32")
    assert_code(lambda: stub.ModelInfer(request), grpc.StatusCode.INVALID_ARGUMENT,
                "input 'image'", "expected datatype FP32, got INT32")  # fmt: skip


def test_wrong_shape(stub) -> None:
    request = raw_request(shape=(1, 64), raw=IMAGES[:1].tobytes())
    assert_code(lambda: stub.ModelInfer(request), grpc.StatusCode.INVALID_ARGUMENT,
                "input 'image'", "expected shape [-1, 8, 8, 1], got [1, 64]")  # fmt: skip


def test_raw_content_of_wrong_byte_length(stub) -> None:
    request = raw_request(raw=IMAGES[:1].tobytes()[:-4])
    assert_code(lambda: stub.ModelInfer(request), grpc.StatusCode.INVALID_ARGUMENT,
                "input 'image'", "raw content has 252 bytes, expected 256")  # fmt: skip


def test_missing_input(stub) -> None:
    request = pb.ModelInferRequest(model_name="pair")
    request.inputs.add(name="features", datatype="FP32", shape=[1, 3])
    request.raw_input_contents.append(np.zeros((1, 3), np.float32).tobytes())
    assert_code(lambda: stub.ModelInfer(request), grpc.StatusCode.INVALID_ARGUMENT, "missing input 'ids'")


def test_unknown_input(stub) -> None:
    request = raw_request()
    request.inputs.add(name="extra", datatype="FP32", shape=[1])
    request.raw_input_contents.append(b"\0\0\0\0")
    assert_code(lambda: stub.ModelInfer(request), grpc.StatusCode.INVALID_ARGUMENT, "no input 'extra'")


def test_empty_request(stub) -> None:
    assert_code(lambda: stub.ModelInfer(pb.ModelInferRequest()), grpc.StatusCode.INVALID_ARGUMENT,
                "model_name is required")  # fmt: skip
    assert_code(lambda: stub.ModelInfer(pb.ModelInferRequest(model_name="cnn")), grpc.StatusCode.INVALID_ARGUMENT,
                "has no inputs", "['image']")  # fmt: skip


def test_unknown_model_and_version(stub) -> None:
    assert_code(lambda: stub.ModelInfer(raw_request(model="nope")), grpc.StatusCode.NOT_FOUND, "'nope' not found")
    request = raw_request()
    request.model_version = "7"
    assert_code(lambda: stub.ModelInfer(request), grpc.StatusCode.NOT_FOUND, "no version 7")
    request.model_version = "latest"
    assert_code(lambda: stub.ModelInfer(request), grpc.StatusCode.NOT_FOUND, "no version 'latest'")
    assert_code(lambda: stub.ModelMetadata(pb.ModelMetadataRequest(name="nope")), grpc.StatusCode.NOT_FOUND)


def test_raw_count_mismatch_and_unknown_datatype(stub) -> None:
    request = raw_request()
    request.raw_input_contents.append(b"")
    assert_code(lambda: stub.ModelInfer(request), grpc.StatusCode.INVALID_ARGUMENT, "raw_input_contents has 2")
    assert_code(lambda: stub.ModelInfer(raw_request(datatype="FP128")), grpc.StatusCode.INVALID_ARGUMENT,
                "unsupported datatype 'FP128'")  # fmt: skip


def test_unknown_output(stub) -> None:
    request = raw_request()
    request.outputs.add(name="nope")
    assert_code(lambda: stub.ModelInfer(request), grpc.StatusCode.INVALID_ARGUMENT, "no output 'nope'")


def test_typed_contents_are_accepted_and_checked(stub, in_process) -> None:
    request = pb.ModelInferRequest(model_name="cnn")
    tensor = request.inputs.add(name="image", datatype="FP32", shape=[1, 8, 8, 1])
    tensor.contents.fp32_contents.extend(IMAGES[0].ravel().tolist())
    response = stub.ModelInfer(request)
    got = np.frombuffer(response.raw_output_contents[0], np.float32)
    assert got.tobytes() == in_process("cnn", {"image": IMAGES[:1]})["output_0"].tobytes()
    del tensor.contents.fp32_contents[-1]
    assert_code(lambda: stub.ModelInfer(request), grpc.StatusCode.INVALID_ARGUMENT, "fp32_contents has 63 elements")


def test_server_survives_bad_inputs(stub) -> None:
    for _ in range(3):
        with pytest.raises(grpc.RpcError):
            stub.ModelInfer(raw_request(raw=b"x"))
    assert stub.ServerReady(pb.ServerReadyRequest()).ready


# --- observability and standard services -----------------------------------------------------------------


def test_statistics_count_requests(stub) -> None:
    before = stub.ModelStatistics(pb.ModelStatisticsRequest(name="pair")).model_stats[0]
    for _ in range(3):
        request = pb.ModelInferRequest(model_name="pair")
        for name, arr in (("features", PAIR["features"]), ("ids", PAIR["ids"])):
            request.inputs.add(
                name=name, datatype="FP32" if arr.dtype == np.float32 else "INT64", shape=list(arr.shape)
            )
            request.raw_input_contents.append(arr.tobytes())
        stub.ModelInfer(request)
    after = stub.ModelStatistics(pb.ModelStatisticsRequest(name="pair")).model_stats[0]
    assert after.inference_stats.success.count - before.inference_stats.success.count == 3
    assert after.inference_count - before.inference_count == 12  # 3 requests x batch 4
    stats = after.inference_stats  # Triton's: queue and the compute phases count requests, as success does
    phases = (stats.compute_input, stats.compute_infer, stats.compute_output)
    assert stats.queue.count == stats.success.count and all(d.count == stats.success.count for d in phases)
    assert all(d.ns > 0 for d in phases) and stats.success.ns >= stats.queue.ns + sum(d.ns for d in phases)
    assert after.execution_count == sum(b.compute_infer.count for b in after.batch_stats) <= stats.success.count
    assert all(b.compute_input.count == b.compute_output.count == b.compute_infer.count for b in after.batch_stats)
    assert abs(after.last_inference / 1000 - time.time()) < 60
    assert_code(lambda: stub.ModelStatistics(pb.ModelStatisticsRequest(name="nope")), grpc.StatusCode.INVALID_ARGUMENT)


def test_health_and_reflection(server: str) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(server) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            status = health.Check(health_pb2.HealthCheckRequest(service=service)).status
            assert status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = list(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
        names = {s.name for s in responses[0].list_services_response.service}
        assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= names
        responses = list(stub.ServerReflectionInfo(iter([
            reflection_pb2.ServerReflectionRequest(file_containing_symbol="inference.GRPCInferenceService")
        ])))  # fmt: skip
        assert responses[0].file_descriptor_response.file_descriptor_proto


def test_sigterm_drains_in_flight_requests(model_repo: Path, tmp_path: Path) -> None:
    """SIGTERM while requests are in flight: every accepted request succeeds, then the process exits 0."""
    big = RNG.random((20000, 8, 8, 1), dtype=np.float32)
    with running_server(model_repo, tmp_path) as (target, proc), grpc.insecure_channel(target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        request = raw_request(shape=big.shape, raw=big.tobytes())
        stub.ModelInfer(request, timeout=60)  # warm up
        futures = [stub.ModelInfer.future(request, timeout=60) for _ in range(6)]
        futures[0].result()  # the server is busy with the rest, all of which it has received
        proc.send_signal(signal.SIGTERM)
        for future in futures:
            assert future.result().outputs[0].shape == [20000, 10]
        assert proc.wait(timeout=60) == 0


def test_the_timeout_parameter_is_a_per_message_deadline(stub) -> None:
    """Triton's `timeout` (microseconds): a message whose timeout passes before its batch forms is answered
    DEADLINE_EXCEEDED and never run; the stream's other messages are served; a malformed one is INVALID_ARGUMENT."""
    requests = []
    for i, timeout_us in enumerate([None, 1, 60_000_000, 0]):
        request = raw_request()
        request.id = str(i)
        if timeout_us is not None:
            request.parameters["timeout"].int64_param = timeout_us
        requests.append(request)
    responses = list(stub.ModelStreamInfer(iter(requests), timeout=60))
    assert [r.error_message.split(":")[0] for r in responses] == ["", "DEADLINE_EXCEEDED", "", ""]
    expired = raw_request()
    expired.parameters["timeout"].int64_param = 1
    assert_code(lambda: stub.ModelInfer(expired, timeout=60), grpc.StatusCode.DEADLINE_EXCEEDED, "deadline")
    bad = raw_request()
    bad.parameters["timeout"].string_param = "1s"
    assert_code(lambda: stub.ModelInfer(bad, timeout=60), grpc.StatusCode.INVALID_ARGUMENT,
                "timeout parameter must be a non-negative int64_param")  # fmt: skip


def test_stream_is_pipelined_in_order_with_errors_in_place(stub, in_process) -> None:
    """Many messages on one stream, one of them bad: answers come back in request order, the bad one as an
    error_message, and the stream goes on (requests of one stream run concurrently, so they can share batches)."""
    requests = []
    for i in range(40):
        request = raw_request(raw=None if i != 17 else b"short")
        request.id = str(i)
        request.raw_input_contents[0] = IMAGES[i % 5 : i % 5 + 1].tobytes() if i != 17 else b"short"
        requests.append(request)
    responses = list(stub.ModelStreamInfer(iter(requests), timeout=60))
    assert [r.infer_response.id for r in responses] == [str(i) for i in range(40)]
    for i, response in enumerate(responses):
        if i == 17:
            assert response.error_message.startswith("INVALID_ARGUMENT: input 'image': raw content has 5 bytes")
            continue
        assert response.error_message == ""
        got = np.frombuffer(response.infer_response.raw_output_contents[0], np.float32)
        expected = in_process("cnn", {"image": IMAGES[i % 5 : i % 5 + 1]})["output_0"].ravel()
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)  # batched with its neighbours


def test_a_taken_port_stops_the_start_with_one_line(model_repo: Path) -> None:
    import socket
    import subprocess
    import sys

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cmd = [sys.executable, "-m", "kerve", "serve", "--model-repository", str(model_repo), "--host", "127.0.0.1",
               "--port", str(port), "--metrics-port", "0"]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}: another process holds the port" in proc.stderr
    assert "Traceback" not in proc.stderr
