"""The committed generated modules are exactly what tools/gen_protos.py produces from proto/."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ["kerve/protos/grpc_service_pb2.py", "kerve/protos/grpc_service_pb2_grpc.py"]


@pytest.mark.skipif(importlib.util.find_spec("grpc_tools") is None, reason="grpcio-tools (dev extra) not installed")
def test_regeneration_is_byte_identical(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(ROOT / "tools" / "gen_protos.py"), "--out", str(tmp_path)], check=True)
    for rel in GENERATED:
        assert (tmp_path / rel).read_bytes() == (ROOT / rel).read_bytes(), f"{rel} is stale: run tools/gen_protos.py"


def test_private_pool_coexists_with_tritonclient() -> None:
    """tritonclient registers the same inference.* names; our modules must not collide with it."""
    code = (
        "import tritonclient.grpc.service_pb2 as t\n"
        "from kerve.protos import grpc_service_pb2 as k\n"
        "r = k.ModelInferRequest(model_name='m', id='x')\n"
        "assert t.ModelInferRequest.FromString(r.SerializeToString()).id == 'x'\n"
    )
    pytest.importorskip("tritonclient.grpc")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_client_import_pulls_in_no_tensorflow() -> None:
    code = (
        "import sys, kerve.client, kerve.cli\n"
        "kerve.cli.build_parser()\n"
        "bad = [m for m in ('tensorflow', 'keras', 'keras_tuner') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
