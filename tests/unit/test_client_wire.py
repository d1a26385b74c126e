"""Client wire helpers without a server: class counts in requests, classification labels, model config, in-band
stream errors, log settings, model control requests, statistics and server metadata."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from google.protobuf import json_format

from kerve.client import (
    BatchStatistics,
    CancelledError,
    Duration,
    InferResult,
    InstanceGroup,
    InvalidArgumentError,
    ModelMetadata,
    ModelStatistics,
    NotFoundError,
    QueuePolicy,
    ServerError,
    ServerMetadata,
    TensorConfig,
    TensorInfo,
)
from kerve.client.errors import from_error_message
from kerve.client.wire import (
    CLASSIFICATION,
    UINT32_MAX,
    build_infer_request,
    config_message,
    load_model_request,
    log_settings_request,
    only_output,
    parse_classification,
    parse_config,
    parse_log_settings,
    parse_server_metadata,
    parse_statistics,
    parse_trace_settings,
    trace_settings_request,
)
from kerve.protos import grpc_service_pb2 as pb

X = {"x": np.zeros((2, 3), np.float32)}


# --- class counts in requests -------------------------------------------------------------------------------


def test_class_counts_request_their_outputs_with_the_classification_parameter() -> None:
    request = build_infer_request("m", X, outputs=["raw"], class_counts={"probs": 3, "raw": np.int64(2)})
    assert [o.name for o in request.outputs] == ["raw", "probs"]  # `outputs` first, each name once
    params = {o.name: o.parameters[CLASSIFICATION] for o in request.outputs}
    assert params["probs"].WhichOneof("parameter_choice") == "int64_param" and params["probs"].int64_param == 3
    assert params["raw"].int64_param == 2

    only = build_infer_request("m", X, class_counts={"probs": 1})
    assert [(o.name, o.parameters[CLASSIFICATION].int64_param) for o in only.outputs] == [("probs", 1)]
    plain = build_infer_request("m", X, outputs=["a"])
    assert CLASSIFICATION not in plain.outputs[0].parameters


@pytest.mark.parametrize("count", [0, -1, 1.5, True, "3", None])
def test_a_class_count_must_be_a_positive_integer(count: object) -> None:
    with pytest.raises(InvalidArgumentError, match="'probs': the class count must be a positive integer"):
        build_infer_request("m", X, class_counts={"probs": count})  # type: ignore[dict-item]


# --- classification labels ----------------------------------------------------------------------------------


def labels(rows: list[list[bytes]]) -> np.ndarray:
    array = np.empty((len(rows), len(rows[0])), dtype=object)
    array[:] = rows
    return array


def test_labels_parse_into_indices_and_scores_of_the_same_shape() -> None:
    result = InferResult("m", "2", "", {"p": labels([[b"0.75:3", b"0.25:0"], [b"1:9", b"-0.5:2:cat"]])})
    top = parse_classification(result, "p")
    assert (top.model_name, top.model_version, top.output) == ("m", "2", "p")
    assert top.indices.dtype == np.int64 and top.scores.dtype == np.float64
    np.testing.assert_array_equal(top.indices, [[3, 0], [9, 2]])
    np.testing.assert_array_equal(top.scores, [[0.75, 0.25], [1.0, -0.5]])
    assert top.labels is not None and top.labels.tolist() == [["", ""], ["", "cat"]]  # "" where a class has none
    named = parse_classification(InferResult("m", "2", "", {"p": labels([[b"0.5:1:a:b"]])}), "p")
    assert named.labels is not None and named.labels.tolist() == [["a:b"]]  # a label may hold ':'

    flat = np.array([b"0.5:1", b"nan:0"], dtype=object)  # an output without a batch dimension
    unbatched = parse_classification(InferResult("m", "1", "", {"p": flat}), "p")
    assert unbatched.indices.tolist() == [1, 0] and unbatched.scores[0] == 0.5 and np.isnan(unbatched.scores[1])
    assert unbatched.labels is None  # the model has no labels


@pytest.mark.parametrize(
    ("outputs", "message"),
    [
        ({"p": labels([[b"0.5"]])}, "malformed classification label b'0.5'"),
        ({"p": labels([[b"x:1"]])}, "malformed classification label b'x:1'"),
        ({"p": np.zeros((1, 2), np.float32)}, "expected classification labels \\(BYTES\\), got float32 \\[1, 2\\]"),
        ({}, "expected classification labels \\(BYTES\\), got nothing"),
    ],
)
def test_a_malformed_classification_answer_is_a_server_error(outputs: dict, message: str) -> None:
    with pytest.raises(ServerError, match=message):
        parse_classification(InferResult("m", "1", "", outputs), "p")


def test_only_output_needs_exactly_one() -> None:
    tensor = TensorInfo("out", "FP32", (-1, 3))
    assert only_output(ModelMetadata("m", ("1",), "p", (), (tensor,))) == "out"
    two = ModelMetadata("m", ("1",), "p", (), (tensor, TensorInfo("aux", "FP32", (-1,))))
    with pytest.raises(InvalidArgumentError, match=r"model 'm' has outputs \['out', 'aux'\]: pass output="):
        only_output(two)


# --- model config -------------------------------------------------------------------------------------------


def test_config_with_dynamic_batching_and_gpu_groups() -> None:
    config = pb.ModelConfig(
        name="m",
        platform="tensorflow_savedmodel",
        backend="tensorflow",
        max_batch_size=32,
        input=[
            pb.ModelInput(name="text", data_type=pb.TYPE_STRING, dims=[-1]),
            pb.ModelInput(name="x", data_type=pb.TYPE_BF16, dims=[4, 2]),
        ],
        output=[pb.ModelOutput(name="y", data_type=pb.TYPE_FP32, dims=[10])],
        instance_group=[
            pb.ModelInstanceGroup(name="m_gpu", kind=pb.ModelInstanceGroup.KIND_GPU, count=1, gpus=[0, 1]),
            pb.ModelInstanceGroup(name="m_cpu", kind=pb.ModelInstanceGroup.KIND_CPU, count=2),
            pb.ModelInstanceGroup(name="m", kind=pb.ModelInstanceGroup.KIND_MODEL, count=1),
        ],
    )
    config.dynamic_batching.preferred_batch_size.extend([8, 16, 32])
    config.dynamic_batching.max_queue_delay_microseconds = 2500
    parsed = parse_config(pb.ModelConfigResponse(config=config))
    assert (parsed.name, parsed.platform, parsed.backend, parsed.max_batch_size) == (
        "m",
        "tensorflow_savedmodel",
        "tensorflow",
        32,
    )
    assert parsed.inputs == (TensorConfig("text", "BYTES", (-1,)), TensorConfig("x", "BF16", (4, 2)))
    assert parsed.outputs == (TensorConfig("y", "FP32", (10,)),)
    assert parsed.dynamic_batching and parsed.preferred_batch_sizes == (8, 16, 32)
    assert parsed.max_queue_delay_s == pytest.approx(0.0025)
    assert parsed.instance_groups == (
        InstanceGroup("m_gpu", "GPU", 1, (0, 1)),
        InstanceGroup("m_cpu", "CPU", 2, ()),
        InstanceGroup("m", "MODEL", 1, ()),
    )
    assert (parsed.priority_levels, parsed.queue_policy, parsed.priority_queue_policies) == (0, None, ())

    config.dynamic_batching.priority_levels = 2
    config.dynamic_batching.default_priority_level = 2
    config.dynamic_batching.default_queue_policy.max_queue_size = 100
    level_1 = config.dynamic_batching.priority_queue_policy[1]
    level_1.default_timeout_microseconds, level_1.timeout_action = 5000, pb.ModelQueuePolicy.DELAY
    level_1.allow_timeout_override = True
    parsed = parse_config(pb.ModelConfigResponse(config=config))
    assert (parsed.priority_levels, parsed.default_priority_level) == (2, 2)
    assert parsed.queue_policy == QueuePolicy(0.0, "reject", False, 100)
    assert parsed.priority_queue_policies == ((1, QueuePolicy(0.005, "delay", True, 0)),)
    assert parsed.response_cache is None  # not reported: off
    assert config_message(parsed) == config  # back to what was read: get -> edit -> load_model(config=...)
    config.response_cache.enable = True
    parsed = parse_config(pb.ModelConfigResponse(config=config))
    assert parsed.response_cache is True and config_message(parsed) == config
    off = config_message(dataclasses.replace(parsed, response_cache=False))
    assert off.HasField("response_cache") and not off.response_cache.enable  # sent: it turns the cache off


def test_config_without_a_batcher() -> None:
    config = pb.ModelConfig(name="m", max_batch_size=0, input=[pb.ModelInput(name="x", data_type=pb.TYPE_INT64)])
    parsed = parse_config(pb.ModelConfigResponse(config=config))
    assert parsed.max_batch_size == 0 and not parsed.dynamic_batching
    assert parsed.max_queue_delay_s is None and parsed.preferred_batch_sizes == ()
    assert parsed.inputs == (TensorConfig("x", "INT64", ()),) and parsed.instance_groups == ()

    zero_delay = pb.ModelConfig(name="m", max_batch_size=8)
    zero_delay.dynamic_batching.max_queue_delay_microseconds = 0  # present, all defaults
    assert parse_config(pb.ModelConfigResponse(config=zero_delay)).max_queue_delay_s == 0.0
    for message in (config, zero_delay):  # both round-trip, dynamic_batching present or not
        back = config_message(parse_config(pb.ModelConfigResponse(config=message)))
        assert back == message and back.HasField("dynamic_batching") == message.HasField("dynamic_batching")


# --- in-band stream errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "cls", "code", "text"),
    [
        (
            "INVALID_ARGUMENT: input 'x': expected FP32",
            InvalidArgumentError,
            "INVALID_ARGUMENT",
            "input 'x': expected FP32",
        ),
        ("NOT_FOUND: model 'm' not found: a: b", NotFoundError, "NOT_FOUND", "model 'm' not found: a: b"),
        ("CANCELLED: shutting down", CancelledError, "CANCELLED", "shutting down"),
        ("INTERNAL: boom", ServerError, "INTERNAL", "boom"),
        ("OK: odd", ServerError, "UNKNOWN", "OK: odd"),
        ("no status here", ServerError, "UNKNOWN", "no status here"),
        ("invalid_argument: lower case", ServerError, "UNKNOWN", "invalid_argument: lower case"),
    ],
)
def test_in_band_stream_errors_map_to_the_status_classes(message: str, cls: type, code: str, text: str) -> None:
    error = from_error_message(message)
    assert type(error) is cls and error.code == code and error.message == text


# --- log settings -------------------------------------------------------------------------------------------


def test_log_settings_take_their_field_from_the_value_type() -> None:
    request = log_settings_request(
        {
            "log_info": False,
            "log_error": np.bool_(True),
            "log_verbose_level": 2,
            "other_level": np.uint64(UINT32_MAX),
            "log_format": "ISO8601",
            "log_file": "",
        }
    )
    fields = {key: (value.WhichOneof("parameter_choice"), getattr(value, value.WhichOneof("parameter_choice")))
              for key, value in request.settings.items()}  # fmt: skip
    assert fields == {
        "log_info": ("bool_param", False),
        "log_error": ("bool_param", True),  # a bool is an int to Python, not to the server
        "log_verbose_level": ("uint32_param", 2),
        "other_level": ("uint32_param", UINT32_MAX),
        "log_format": ("string_param", "ISO8601"),
        "log_file": ("string_param", ""),
    }
    assert not log_settings_request({}).settings  # a request that only reads


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"log_verbose_level": -1}, r"'log_verbose_level' takes an integer from 0 to 4294967295, got -1"),
        ({"log_verbose_level": 2**32}, r"'log_verbose_level' takes an integer from 0 to 4294967295, got 4294967296"),
        ({"log_verbose_level": np.int8(-3)}, "got -3"),
        ({"log_info": None}, "'log_info' takes a bool, an int or a str, got None"),
        ({"log_verbose_level": 1.0}, "got 1.0"),
        ({"log_file": b"x"}, "got b'x'"),
        ({"": True}, "a log setting's name must be a non-empty str, got ''"),
        ({1: True}, "got 1"),
    ],
)
def test_log_settings_the_wire_cannot_carry_are_refused_before_sending(settings: dict, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        log_settings_request(settings)


def test_log_settings_answer_parses_to_plain_values() -> None:
    response = pb.LogSettingsResponse()
    response.settings["log_info"].bool_param = False
    response.settings["log_verbose_level"].uint32_param = 0
    response.settings["log_format"].string_param = "default"
    parsed = parse_log_settings(response)
    assert parsed == {"log_format": "default", "log_info": False, "log_verbose_level": 0}
    assert [type(v) for v in parsed.values()] == [str, bool, int]
    response.settings["log_file"].Clear()  # present without a value
    with pytest.raises(ServerError, match="log setting 'log_file' came back without a value"):
        parse_log_settings(response)


def test_trace_settings_travel_as_lists_of_strings() -> None:
    request = trace_settings_request({"trace_level": ["TIMESTAMPS"], "trace_rate": 1, "trace_count": None}, "m")
    assert request.model_name == "m"
    assert {k: list(v.value) for k, v in request.settings.items()} == {
        "trace_level": ["TIMESTAMPS"],
        "trace_rate": ["1"],
        "trace_count": [],  # None clears it
    }
    assert not trace_settings_request().settings and trace_settings_request().model_name == ""  # a read
    for bad in ({"trace_rate": True}, {"trace_rate": 1.5}, {"": "x"}):
        with pytest.raises(InvalidArgumentError):
            trace_settings_request(bad)
    response = pb.TraceSettingResponse()
    response.settings["trace_rate"].value.append("5")
    response.settings["trace_level"].value.extend(["TIMESTAMPS"])
    assert parse_trace_settings(response) == {"trace_level": ["TIMESTAMPS"], "trace_rate": ["5"]}


# --- model control, statistics, server metadata -------------------------------------------------------------


def test_a_load_config_travels_as_the_json_string_parameter() -> None:
    config = {"max_batch_size": 4, "dynamic_batching": {"priority_queue_policy": {"1": {"max_queue_size": 2}}}}
    request = load_model_request("m", config)
    assert request.model_name == "m" and not request.repository_name and list(request.parameters) == ["config"]
    sent = request.parameters["config"]
    assert sent.WhichOneof("parameter_choice") == "string_param" and json.loads(sent.string_param) == config
    text = '{"max_batch_size": 8}'
    assert load_model_request("m", text).parameters["config"].string_param == text  # a str goes as it is
    assert not load_model_request("m").parameters  # no config: config.yaml
    read = parse_config(pb.ModelConfigResponse(config=pb.ModelConfig(name="m", max_batch_size=4)))
    sent = load_model_request("m", read).parameters["config"].string_param  # the SDK's ModelConfig, as Triton's
    assert json_format.Parse(sent, pb.ModelConfig()) == pb.ModelConfig(name="m", max_batch_size=4)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ([{"max_batch_size": 4}], "must be a ModelConfig, a dict .* or a str of its JSON, got list"),
        (b'{"max_batch_size": 4}', "must be a ModelConfig, a dict .*, got bytes"),
        (4, "must be a ModelConfig, a dict .*, got int"),
        ({"max_batch_size": np.int64(4)}, "is not JSON: .*int64"),
        ({"dynamic_batching": {"max_queue_delay_microseconds": float("nan")}}, "is not JSON: Out of range float"),
    ],
)
def test_a_load_config_json_cannot_carry_is_refused_before_sending(config: object, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=f"load config for model 'm' {message}"):
        load_model_request("m", config)  # type: ignore[arg-type]


def test_statistics_parse_with_seconds_and_batches_by_size() -> None:
    response = pb.ModelStatisticsResponse()
    stats = response.model_stats.add(
        name="m", version="2", last_inference=1_700_000_000_123, inference_count=12, execution_count=3
    )
    infer = stats.inference_stats
    infer.success.count, infer.success.ns = 5, 2_500_000_000
    infer.fail.count, infer.fail.ns = 1, 1_000
    infer.queue.count, infer.queue.ns = 5, 500_000_000
    infer.compute_infer.count, infer.compute_infer.ns = 5, 1_500_000_000
    infer.compute_input.count, infer.compute_input.ns = 5, 50_000_000
    infer.compute_output.count, infer.compute_output.ns = 5, 25_000_000
    infer.cache_hit.count, infer.cache_hit.ns = 2, 4_000
    infer.cache_miss.count, infer.cache_miss.ns = 5, 50_000
    big = stats.batch_stats.add(batch_size=8)
    big.compute_infer.count, big.compute_infer.ns = 1, 1_000_000_000
    big.compute_input.count, big.compute_input.ns = 1, 3_000_000
    big.compute_output.count, big.compute_output.ns = 1, 2_000_000
    small = stats.batch_stats.add(batch_size=2)
    small.compute_infer.count, small.compute_infer.ns = 2, 500_000_000
    response.model_stats.add(name="n", version="1")  # loaded, never called

    parsed = parse_statistics(response)
    assert parsed == (
        ModelStatistics(
            name="m",
            version="2",
            last_inference_ms=1_700_000_000_123,
            inference_count=12,
            execution_count=3,
            success=Duration(5, 2.5),
            fail=Duration(1, 1e-6),
            queue=Duration(5, 0.5),
            compute_infer=Duration(5, 1.5),
            batch_stats=((2, Duration(2, 0.5)), (8, Duration(1, 1.0))),  # by batch size, whatever the order sent
            compute_input=Duration(5, 0.05),
            compute_output=Duration(5, 0.025),
            cache_hit=Duration(2, 4e-6),
            cache_miss=Duration(5, 5e-5),
            batches=(
                BatchStatistics(2, Duration(0, 0.0), Duration(2, 0.5), Duration(0, 0.0)),
                BatchStatistics(8, Duration(1, 0.003), Duration(1, 1.0), Duration(1, 0.002)),
            ),
        ),
        ModelStatistics("n", "1", 0, 0, 0, Duration(0, 0.0), Duration(0, 0.0), Duration(0, 0.0), Duration(0, 0.0), ()),
    )
    assert parse_statistics(pb.ModelStatisticsResponse()) == ()


def test_server_metadata_parses_to_a_frozen_record() -> None:
    response = pb.ServerMetadataResponse(name="kerve", version="0.1.0", extensions=["statistics", "model_repository"])
    assert parse_server_metadata(response) == ServerMetadata("kerve", "0.1.0", ("statistics", "model_repository"))
    assert parse_server_metadata(pb.ServerMetadataResponse()) == ServerMetadata("", "", ())
