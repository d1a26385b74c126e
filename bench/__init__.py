"""kerve benchmarks: in-process limit vs bare gRPC vs kerve, side by side (see docs/benchmarks.md)."""
