"""Regenerate kerve/protos/*_pb2*.py from proto/ with grpcio-tools.

The generated modules are committed so that `pip install kerve` needs no protoc. One post-processing step:
messages are registered in a private descriptor pool instead of protobuf's process-wide default pool, because
tritonclient registers the same `inference.*` message names from its own file and the default pool refuses
duplicates. A user can therefore import kerve.client and tritonclient in one process.
tests/unit/test_protos.py checks that running this script reproduces the committed files byte for byte.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
PROTO_ROOT = ROOT / "proto"
SOURCES = ["kerve/protos/grpc_service.proto"]
DEFAULT_POOL = "_descriptor_pool.Default()"
PRIVATE_POOL = "_descriptor_pool.DescriptorPool()"


def generate(out_dir: pathlib.Path) -> list[pathlib.Path]:
    """Run protoc into out_dir and return the generated module paths."""
    from grpc_tools import protoc  # dev-only dependency

    args = ["protoc", f"-I{PROTO_ROOT}", f"--python_out={out_dir}", f"--grpc_python_out={out_dir}", *SOURCES]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")
    written = []
    for source in SOURCES:
        stem = source[: -len(".proto")]
        pb2 = out_dir / f"{stem}_pb2.py"
        text = pb2.read_text()
        if text.count(DEFAULT_POOL) != 1:
            raise RuntimeError(f"{pb2}: expected exactly one {DEFAULT_POOL}")
        pb2.write_text(text.replace(DEFAULT_POOL, PRIVATE_POOL))
        written += [pb2, out_dir / f"{stem}_pb2_grpc.py"]
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=pathlib.Path, default=ROOT, help="root to write kerve/protos/ under")
    ns = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        for path in generate(pathlib.Path(tmp)):
            rel = path.relative_to(tmp)
            target = ns.out / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
            print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
