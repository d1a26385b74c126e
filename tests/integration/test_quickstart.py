"""The README's first command: `kerve quickstart` trains, serves, predicts over gRPC and stops cleanly."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_quickstart_end_to_end(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kerve", "quickstart", "--max-trials", "1", "--epochs", "2"],
        cwd=tmp_path,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert (tmp_path / "models" / "digits" / "1" / "saved_model.pb").is_file()
    assert (tmp_path / "models" / "digits" / "1" / "kerve.json").is_file()
    grpc_acc = float(re.search(r"accuracy over gRPC\s+([0-9.]+)", out).group(1))
    local_acc = float(re.search(r"accuracy in process\s+([0-9.]+)", out).group(1))
    assert grpc_acc == local_acc  # same model, same test images: serving must not change a single prediction
    assert re.search(r"test images\s+360", out)
    assert re.search(r"server exit code\s+0", out)
