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


def test_every_field_matches_tritonclient_on_the_wire() -> None:
    """Each message and enum kerve declares, field by field, as tritonclient's own descriptors have it (Triton's
    grpc_service.proto and model_config.proto): same numbers, types and cardinality, so each side reads the other's
    bytes. Fields Triton has and kerve leaves out are allowed; a kerve field Triton lacks is not."""
    service = pytest.importorskip("tritonclient.grpc.service_pb2")
    from tritonclient.grpc import model_config_pb2

    from kerve.protos import grpc_service_pb2 as k

    theirs = {}
    for module in (service, model_config_pb2):
        theirs.update(_messages(module.DESCRIPTOR.message_types_by_name.values()))
        theirs.update({e.full_name: e for e in module.DESCRIPTOR.enum_types_by_name.values()})
    ours = _messages(k.DESCRIPTOR.message_types_by_name.values())
    assert "inference.ModelConfig" in ours and "inference.ModelVersionPolicy.Specific" in ours
    for name, message in ours.items():
        assert name in theirs, f"{name} is not a Triton message"
        other = theirs[name].fields_by_name
        for field in message.fields:
            assert field.name in other, f"{name}.{field.name} is not in Triton's {name}"
            mine, twin = field, other[field.name]
            assert (mine.number, mine.type, mine.label) == (twin.number, twin.type, twin.label), f"{name}.{field.name}"
            for kind in ("message_type", "enum_type"):
                a, b = getattr(mine, kind), getattr(twin, kind)
                assert (a and a.full_name) == (b and b.full_name), f"{name}.{field.name}"
            if mine.enum_type is not None:
                values = {v.name: v.number for v in mine.enum_type.values}
                assert values.items() <= {v.name: v.number for v in twin.enum_type.values}.items(), mine.enum_type
    for enum in k.DESCRIPTOR.enum_types_by_name.values():
        assert {v.name: v.number for v in enum.values} == {v.name: v.number for v in theirs[enum.full_name].values}


def _messages(descriptors) -> dict:  # noqa: ANN001 - protobuf descriptors
    found = {}
    for descriptor in descriptors:
        if descriptor.GetOptions().map_entry:
            continue
        found[descriptor.full_name] = descriptor
        found.update(_messages(descriptor.nested_types))
    return found
