"""Generated protobuf/gRPC modules for the Open Inference Protocol (see tools/gen_protos.py)."""
