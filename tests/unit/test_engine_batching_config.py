"""How the engine combines the server's batching flags with a model's config.yaml (no TF, no server)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from kerve.server.batcher import BatchingConfig
from kerve.server.errors import ErrorCode, ServingError
from kerve.server.inference import InferenceEngine, tpu_batch_sizes
from kerve.server.manager import ModelVersion
from kerve.server.metrics import Metrics
from kerve.server.model_config import parse_model_config


def engine(batching: BatchingConfig | None, pad: bool = False) -> InferenceEngine:
    return InferenceEngine(
        manager=None, executor=ThreadPoolExecutor(1), metrics=Metrics(), batching=batching, pad_batches=pad
    )  # type: ignore[arg-type]


def version(batching: dict | None = None) -> ModelVersion:
    return ModelVersion("m", 1, Path("/nowhere"), config=parse_model_config({"batching": batching or {}}))


def test_server_defaults_apply_without_overrides() -> None:
    server = BatchingConfig(max_batch_size=16)
    assert engine(server).config_for(version()) is server


def test_model_overrides_win_key_by_key() -> None:
    merged = engine(BatchingConfig(max_batch_size=16, max_queued=99)).config_for(version({"max_batch_size": 4}))
    assert merged == BatchingConfig(max_batch_size=4, max_queued=99)


def test_allowed_sizes_alone_make_their_largest_the_max_batch_size() -> None:
    # as config.yaml validation reads them: a model asking only for sizes [4, 8] batches up to 8 rows, whatever
    # the server's --max-batch-size (it failed the model before, as a clash with the server's 64)
    merged = engine(BatchingConfig(max_batch_size=64)).config_for(version({"allowed_batch_sizes": [4, 8]}))
    assert merged == BatchingConfig(max_batch_size=8, allowed_batch_sizes=(4, 8))


def test_model_or_server_can_turn_batching_off() -> None:
    assert engine(BatchingConfig()).config_for(version({"enabled": False})) is None
    assert engine(None).config_for(version({"max_batch_size": 4})) is None


def test_tpu_padding_defaults_to_powers_of_two() -> None:
    assert tpu_batch_sizes(48) == (1, 2, 4, 8, 16, 32, 48)
    assert engine(BatchingConfig(max_batch_size=8), pad=True).batching.allowed_batch_sizes == (1, 2, 4, 8)


def test_on_tpu_a_models_own_batch_size_gets_its_own_padded_sizes() -> None:
    """The powers of two are derived after the model's config.yaml is merged in, so its max_batch_size stands
    (instead of clashing with sizes derived from the server's); sizes a model or the flags give stay as given."""
    tpu = engine(BatchingConfig(max_batch_size=64), pad=True)
    assert tpu.config_for(version({"max_batch_size": 8})).allowed_batch_sizes == (1, 2, 4, 8)
    assert tpu.config_for(version({"max_batch_size": 128})).allowed_batch_sizes == (1, 2, 4, 8, 16, 32, 64, 128)
    given = version({"max_batch_size": 8, "allowed_batch_sizes": [4, 8]})
    assert tpu.config_for(given).allowed_batch_sizes == (4, 8)
    assert (
        engine(BatchingConfig(max_batch_size=64)).config_for(version({"max_batch_size": 8})).allowed_batch_sizes == ()
    )


def test_override_that_clashes_with_server_flags_is_a_failed_precondition() -> None:
    server = BatchingConfig(max_batch_size=64, allowed_batch_sizes=(32, 64))
    with pytest.raises(ServingError) as info:
        engine(server).config_for(version({"max_batch_size": 8}))
    assert info.value.code is ErrorCode.FAILED_PRECONDITION and "does not combine" in info.value.message
