"""Triton's LogSettings against a real server through tritonclient: read, change at run time, one line per request
at verbose level 1; the zoo server's log is read back. Settings are restored for the tests after these."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from helpers import wait_for

pytestmark = pytest.mark.integration

DEFAULTS = {
    "log_file": "", "log_info": True, "log_warning": True, "log_error": True, "log_verbose_level": 0,
    "log_format": "default",
}  # fmt: skip


def settings(client: triton.InferenceServerClient) -> dict:
    values = client.get_log_settings(as_json=True)["settings"]
    return {k: next(iter(v.values())) for k, v in values.items()}


def test_log_settings_change_at_run_time(zoo) -> None:
    client = triton.InferenceServerClient(zoo.target)
    try:
        assert "logging" in client.get_server_metadata().extensions
        assert settings(client) == DEFAULTS
        client.update_log_settings({"log_verbose_level": 1, "log_format": "ISO8601"})
        assert settings(client) == {**DEFAULTS, "log_verbose_level": 1, "log_format": "ISO8601"}
        image = triton.InferInput("image", [1, 8, 8, 1], "FP32").set_data_from_numpy(np.zeros((1, 8, 8, 1), np.float32))
        client.infer("cnn", [image], request_id="trace-me-42")
        line = "v2 request 'trace-me-42' for cnn version "
        wait_for(lambda: line in zoo.log.read_text(errors="replace"), "the request's verbose log line", 30)
        with pytest.raises(InferenceServerException, match="unknown log setting 'log_colour'") as info:
            client.update_log_settings({"log_colour": True})
        assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
        with pytest.raises(InferenceServerException, match="log_file must stay empty"):
            client.update_log_settings({"log_file": "/tmp/kerve.log"})
    finally:
        client.update_log_settings(DEFAULTS)
        client.close()
    assert settings(triton.InferenceServerClient(zoo.target)) == DEFAULTS
