"""Server settings that are not about one subsystem: the GIL switch interval, TF's threads, the event loop, GC."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kerve.server import event_loop, settings


def _settings(tmp_path: Path, *argv: str) -> settings.ServerSettings:
    parser = argparse.ArgumentParser()
    settings.add_arguments(parser)
    return settings.from_args(parser.parse_args(["--model-repository", str(tmp_path), *argv]))


@pytest.fixture
def restore_switch_interval() -> Iterator[None]:
    before = sys.getswitchinterval()
    yield
    sys.setswitchinterval(before)


def test_gil_switch_interval_flag_env_and_validation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _settings(tmp_path, "--gil-switch-interval-us", "250").gil_switch_interval_us == 250
    monkeypatch.setenv("KERVE_GIL_SWITCH_INTERVAL_US", "700")
    assert _settings(tmp_path).gil_switch_interval_us == 700
    with pytest.raises(ValueError, match="--gil-switch-interval-us must be >= 0, got -1"):
        _settings(tmp_path, "--gil-switch-interval-us", "-1")


def test_inline_call_flag_env_and_validation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _settings(tmp_path, "--inline-call-max-ms", "2.5").inline_call_max_s == pytest.approx(0.0025)
    assert _settings(tmp_path, "--inline-call-max-ms", "0").inline_call_max_s == 0.0
    assert _settings(tmp_path).inline_call_max_s == 0.0  # off unless asked for
    monkeypatch.setenv("KERVE_INLINE_CALL_MAX_MS", "4")
    assert _settings(tmp_path).inline_call_max_s == pytest.approx(0.004)
    for bad in ("-1", "nan", "1001"):
        with pytest.raises(ValueError, match="--inline-call-max-ms must be in 0..1000"):
            _settings(tmp_path, "--inline-call-max-ms", bad)


def test_caller_thread_max_batch_flag_env_and_validation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _settings(tmp_path).caller_thread_max_batch is None  # auto unless told otherwise
    assert _settings(tmp_path, "--caller-thread-max-batch", "8").caller_thread_max_batch == 8
    assert _settings(tmp_path, "--caller-thread-max-batch", "0").caller_thread_max_batch == 0  # off
    monkeypatch.setenv("KERVE_CALLER_THREAD_MAX_BATCH", "4")
    assert _settings(tmp_path).caller_thread_max_batch == 4
    assert _settings(tmp_path, "--caller-thread-max-batch", "auto").caller_thread_max_batch is None
    with pytest.raises(ValueError, match="--caller-thread-max-batch must be >= 0, got -1"):
        _settings(tmp_path, "--caller-thread-max-batch", "-1")
    with pytest.raises(SystemExit):  # argparse: "expected auto or a number of rows >= 0, got 'some'"
        _settings(tmp_path, "--caller-thread-max-batch", "some")


def test_gil_switch_interval_is_applied_and_zero_keeps_pythons(restore_switch_interval: None) -> None:
    sys.setswitchinterval(0.005)
    settings.apply_gil_switch_interval(0)
    assert sys.getswitchinterval() == pytest.approx(0.005)
    settings.apply_gil_switch_interval(250)
    assert sys.getswitchinterval() == pytest.approx(0.00025)


def test_thread_flags_env_and_validation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    default = _settings(tmp_path)
    assert (default.cpu_replicas, default.intra_op_threads, default.inter_op_threads) == (1, 0, 0)
    chosen = _settings(tmp_path, "--cpu-replicas", "2", "--intra-op-threads", "1", "--inter-op-threads", "2")
    assert (chosen.cpu_replicas, chosen.intra_op_threads, chosen.inter_op_threads) == (2, 1, 2)
    monkeypatch.setenv("KERVE_CPU_REPLICAS", "4")
    monkeypatch.setenv("KERVE_INTRA_OP_THREADS", "3")
    from_env = _settings(tmp_path)
    assert (from_env.cpu_replicas, from_env.intra_op_threads) == (4, 3)
    for flag in ("--intra-op-threads", "--inter-op-threads"):
        with pytest.raises(ValueError, match=f"{flag} must be >= 0, got -1"):
            _settings(tmp_path, flag, "-1")


def test_batches_per_replica_flag_env_and_validation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    default = _settings(tmp_path).batching
    assert default is not None and default.batches_per_replica == "auto"
    chosen = _settings(tmp_path, "--batches-per-replica", "2").batching
    assert chosen is not None and chosen.batches_per_replica == 2
    monkeypatch.setenv("KERVE_BATCHES_PER_REPLICA", "3")
    from_env = _settings(tmp_path).batching
    assert from_env is not None and from_env.batches_per_replica == 3
    with pytest.raises(ValueError, match="batches_per_replica must be >= 1, got 0"):
        _settings(tmp_path, "--batches-per-replica", "0")
    auto = _settings(tmp_path, "--batches-per-replica", "Auto").batching
    assert auto is not None and auto.batches_per_replica == "auto"
    with pytest.raises(SystemExit):
        _settings(tmp_path, "--batches-per-replica", "two")


def test_workers_default_to_the_cores_and_every_batch_slot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settings.os, "cpu_count", lambda: 4)
    assert settings.workers_for(_settings(tmp_path), devices=1) == 4  # one per core
    assert settings.workers_for(_settings(tmp_path, "--batches-per-replica", "3"), devices=2) == 6  # every slot
    assert settings.workers_for(_settings(tmp_path, "--batches-per-replica", "auto"), devices=3) == 6  # two each
    assert settings.workers_for(_settings(tmp_path, "--no-batching", "--batches-per-replica", "3"), devices=2) == 4
    monkeypatch.setattr(settings.os, "cpu_count", lambda: None)
    assert settings.workers_for(_settings(tmp_path), devices=1) == 2  # at least two
    given = _settings(tmp_path, "--workers", "1", "--batches-per-replica", "3")
    assert given.workers == 1 and settings.workers_for(given, devices=2) == 1  # as asked (the server warns)
    with pytest.raises(ValueError, match="--workers must be >= 1, got 0"):
        _settings(tmp_path, "--workers", "0")


def test_event_loop_flag_env_and_validation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _settings(tmp_path).event_loop == "asyncio"
    assert _settings(tmp_path, "--event-loop", "auto").event_loop == "auto"
    monkeypatch.setenv("KERVE_EVENT_LOOP", "uvloop")
    assert _settings(tmp_path).event_loop == "uvloop"
    with pytest.raises(ValueError, match="--event-loop must be one of auto, asyncio, uvloop, got 'trio'"):
        settings.ServerSettings(model_repository=tmp_path, event_loop="trio")


def test_event_loop_runner_picks_uvloop_when_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    async def which() -> str:
        return type(asyncio.get_running_loop()).__module__

    uvloop = pytest.importorskip("uvloop")
    name, run = event_loop.runner("auto")
    assert name == f"uvloop {uvloop.__version__}" and run(which()).startswith("uvloop")
    name, run = event_loop.runner("asyncio")
    assert name == "asyncio" and run(which()).startswith("asyncio")
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as if not installed: import fails
    assert event_loop.runner("auto")[0] == "asyncio"
    with pytest.raises(ValueError, match="uvloop is not installed"):
        event_loop.runner("uvloop")


def test_model_thread_nice_flag_env_auto_and_validation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _settings(tmp_path).model_thread_nice is None  # auto: resolved against the usable cores at start
    assert _settings(tmp_path, "--model-thread-nice", "0").model_thread_nice == 0
    assert _settings(tmp_path, "--model-thread-nice", "auto").model_thread_nice is None
    monkeypatch.setenv("KERVE_MODEL_THREAD_NICE", "5")
    assert _settings(tmp_path).model_thread_nice == 5
    with pytest.raises(ValueError, match=r"--model-thread-nice must be auto or 0\.\.19, got 20"):
        _settings(tmp_path, "--model-thread-nice", "20")
    with pytest.raises(SystemExit):  # argparse: not a number
        _settings(tmp_path, "--model-thread-nice", "high")


def test_gc_freeze_flag_env_and_validation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _settings(tmp_path).gc_freeze is True
    assert _settings(tmp_path, "--no-gc-freeze").gc_freeze is False
    monkeypatch.setenv("KERVE_GC_FREEZE", "0")
    assert _settings(tmp_path).gc_freeze is False
    assert _settings(tmp_path, "--gc-freeze").gc_freeze is True  # the flag wins over the environment
    monkeypatch.setenv("KERVE_GC_FREEZE", "off")
    assert _settings(tmp_path).gc_freeze is False
    monkeypatch.setenv("KERVE_GC_FREEZE", "true")
    assert _settings(tmp_path).gc_freeze is True
    monkeypatch.setenv("KERVE_GC_FREEZE", "sometimes")
    with pytest.raises(ValueError, match="KERVE_GC_FREEZE must be 1/0 .* got 'sometimes'"):
        _settings(tmp_path)


def test_tf_thread_spinning_flag_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _settings(tmp_path).tf_thread_spinning is False  # TensorFlow's own default is on
    assert _settings(tmp_path, "--no-tf-thread-spinning").tf_thread_spinning is False
    assert _settings(tmp_path, "--tf-thread-spinning").tf_thread_spinning is True
    monkeypatch.setenv("KERVE_TF_THREAD_SPINNING", "on")
    assert _settings(tmp_path).tf_thread_spinning is True
    assert _settings(tmp_path, "--no-tf-thread-spinning").tf_thread_spinning is False  # the flag wins
    monkeypatch.setenv("KERVE_TF_THREAD_SPINNING", "0")
    assert _settings(tmp_path).tf_thread_spinning is False
    monkeypatch.setenv("KERVE_TF_THREAD_SPINNING", "maybe")
    with pytest.raises(ValueError, match="KERVE_TF_THREAD_SPINNING must be 1/0 .* got 'maybe'"):
        _settings(tmp_path)


def test_shared_memory_flag_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _settings(tmp_path).shared_memory is True
    assert _settings(tmp_path, "--no-shared-memory").shared_memory is False
    monkeypatch.setenv("KERVE_SHARED_MEMORY", "0")
    assert _settings(tmp_path).shared_memory is False
    assert _settings(tmp_path, "--shared-memory").shared_memory is True


def test_load_model_flag_env_and_validation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    explicit = ("--model-control", "explicit")
    assert _settings(tmp_path, *explicit).load_models is None
    assert _settings(tmp_path, *explicit, "--load-model", "a", "--load-model", "b").load_models == ("a", "b")
    assert _settings(tmp_path, *explicit, "--load-model", "a", "--load-model", "*").load_models is None
    monkeypatch.setenv("KERVE_LOAD_MODELS", "x, y")
    assert _settings(tmp_path, *explicit).load_models == ("x", "y")
    assert _settings(tmp_path, *explicit, "--load-model", "a").load_models == ("a",)  # the flag wins
    with pytest.raises(ValueError, match="--load-model needs --model-control explicit"):
        _settings(tmp_path, "--load-model", "a")


def test_trace_flags_env_and_validation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    default = _settings(tmp_path)
    assert (default.trace_file, default.trace_level, default.trace_rate) == (None, "OFF", 1000)
    traced = _settings(tmp_path, "--trace-file", str(tmp_path / "t.json"), "--trace-level", "TIMESTAMPS",
                       "--trace-rate", "10")  # fmt: skip
    assert (traced.trace_file, traced.trace_level, traced.trace_rate) == (tmp_path / "t.json", "TIMESTAMPS", 10)
    monkeypatch.setenv("KERVE_TRACE_RATE", "3")
    monkeypatch.setenv("KERVE_TRACE_FILE", str(tmp_path / "e.json"))
    assert (_settings(tmp_path).trace_rate, _settings(tmp_path).trace_file) == (3, tmp_path / "e.json")
    with pytest.raises(ValueError, match="--trace-rate must be >= 1"):
        _settings(tmp_path, "--trace-rate", "0")
    assert _settings(tmp_path, "--trace-level", "TIMESTAMPS,TENSORS").trace_level == "TIMESTAMPS,TENSORS"
    for bad in ("SOMETIMES", "OFF,TENSORS", ""):
        with pytest.raises(ValueError, match="--trace-level must be OFF, or TIMESTAMPS and/or TENSORS"):
            _settings(tmp_path, "--trace-level", bad)


def test_trace_mode_opentelemetry_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert (_settings(tmp_path).trace_mode, _settings(tmp_path).trace_otel_url) == ("triton", None)
    otel = _settings(tmp_path, "--trace-mode", "opentelemetry", "--trace-otel-url", "collector:4318/v1/traces",
                     "--trace-otel-resource", "service.name=edge", "--trace-otel-resource", "zone=a",
                     "--trace-rate", "0")  # fmt: skip
    assert (otel.trace_mode, otel.trace_otel_url, otel.trace_rate) == ("opentelemetry", "collector:4318/v1/traces", 0)
    assert otel.trace_otel_resource == ("service.name=edge", "zone=a")
    monkeypatch.setenv("KERVE_TRACE_MODE", "opentelemetry")
    monkeypatch.setenv("KERVE_TRACE_OTEL_URL", "http://c:4318/v1/traces")
    assert (_settings(tmp_path).trace_mode, _settings(tmp_path).trace_otel_url) == (
        "opentelemetry",
        "http://c:4318/v1/traces",
    )
    monkeypatch.delenv("KERVE_TRACE_MODE")
    monkeypatch.delenv("KERVE_TRACE_OTEL_URL")
    with pytest.raises(ValueError, match="need --trace-mode opentelemetry"):
        _settings(tmp_path, "--trace-otel-url", "c:4318")
    with pytest.raises(ValueError, match="--trace-file is for --trace-mode triton"):
        _settings(tmp_path, "--trace-mode", "opentelemetry", "--trace-file", str(tmp_path / "t.json"))
    with pytest.raises(ValueError, match="--trace-otel-resource takes KEY=VALUE, got 'zone'"):
        _settings(tmp_path, "--trace-mode", "opentelemetry", "--trace-otel-resource", "zone")
    with pytest.raises(ValueError, match=r"--trace-rate must be >= 1 \(>= 0 with --trace-mode opentelemetry"):
        _settings(tmp_path, "--trace-mode", "opentelemetry", "--trace-rate", "-1")
    with pytest.raises(SystemExit):  # argparse's choices
        _settings(tmp_path, "--trace-mode", "zipkin")


def test_response_cache_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _settings(tmp_path).response_cache_bytes == 0
    assert _settings(tmp_path, "--response-cache-mb", "1.5").response_cache_bytes == 3 * 2**19
    monkeypatch.setenv("KERVE_RESPONSE_CACHE_MB", "2")
    assert _settings(tmp_path).response_cache_bytes == 2 * 2**20
    with pytest.raises(ValueError, match="--response-cache-mb must be >= 0, got -1"):
        _settings(tmp_path, "--response-cache-mb", "-1")


def test_triton_metrics_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert not _settings(tmp_path).triton_metrics
    assert _settings(tmp_path, "--triton-metrics").triton_metrics
    monkeypatch.setenv("KERVE_TRITON_METRICS", "1")
    assert _settings(tmp_path).triton_metrics and not _settings(tmp_path, "--no-triton-metrics").triton_metrics


def test_bad_numbers_from_the_environment_or_flags_are_usage_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A malformed KERVE_* number is argparse's error (exit 2, the flag named) when it is used, and none at all
    when the flag overrides it; NaN, infinity and sizes gRPC cannot take are refused before anything starts."""
    monkeypatch.setenv("KERVE_PORT", "abc")
    with pytest.raises(SystemExit) as exited:
        _settings(tmp_path)
    assert exited.value.code == 2 and "argument --port: invalid int value: 'abc'" in capsys.readouterr().err
    assert _settings(tmp_path, "--port", "9000").port == 9000  # the flag wins; the variable is never read
    monkeypatch.delenv("KERVE_PORT")
    for flag, value, message in (
        ("--grace-period", "nan", "--grace-period must be a number of seconds >= 0"),
        ("--max-connection-age-s", "inf", "--max-connection-age-s must be a number of seconds >= 0"),
        ("--response-cache-mb", "inf", "--response-cache-mb must be a number of MiB >= 0"),
        ("--max-message-mb", "4096", "--max-message-mb must be from 1 to 2047"),
    ):
        with pytest.raises(ValueError, match=message):
            _settings(tmp_path, flag, value)


def test_an_empty_model_repository_variable_is_unset_not_the_current_directory(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KERVE_MODEL_REPOSITORY", "")
    parser = argparse.ArgumentParser()
    settings.add_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args([])
    assert "--model-repository" in capsys.readouterr().err
