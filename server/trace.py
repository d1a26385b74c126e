"""Triton's trace extension: timestamps (and tensors) of a sample of requests, to see where one request's time went.

At level TIMESTAMPS a traced request records REQUEST_START (decoded), QUEUE_START (handed to its batcher or
worker), COMPUTE_START, COMPUTE_INPUT_END, COMPUTE_OUTPUT_START and COMPUTE_END (its batch's execution: batch
assembled, model call, outputs cut back) and REQUEST_END (answer built); a failed or cancelled one records its
start and end. At level TENSORS (alone or with TIMESTAMPS) it records its input tensors as they
were queued (TENSOR_QUEUE_INPUT) and the output tensors it was answered with (TENSOR_BACKEND_OUTPUT), as Triton's
entries {"id", "activity", "tensor": {"name", "data", "shape", "dtype"}} with the values flattened into a
comma-separated string: what a request carried, to debug a model's answer to it (trace_summary.py's data flow).
Every `trace_rate`-th request of a model is traced, until `trace_count` traces (-1: no limit) have been.
Traces go to `--trace-file` as Triton's JSON (an array of {"id", "model_name", "model_version", "request_id",
"timestamps": [{"name", "ns"}]}, readable by Triton's trace_summary.py): with `log_frequency` N > 0 every N traces
to `<file>.<index>`, with 0 all of them to `<file>` at shutdown. Without a trace file each entry is one JSON line
in the log (logger kerve.trace), where a container's logs are collected.

With `--trace-mode opentelemetry` the same sampled requests become OpenTelemetry spans sent over OTLP/HTTP
instead (server/otel.py), and a request that carries a W3C `traceparent` in its gRPC metadata is traced whatever
the rate and count (Triton's rule; rate 0 then traces only those), joining its caller's trace. The mode is fixed
at start, as the file is.

Settings change at run time through the TraceSetting RPC (tritonclient's get/update_trace_settings), globally or
per model (a model's own values override the global ones key by key; clearing one falls back to the global value).
Values travel as lists of strings, as in Triton. The trace file itself is fixed at start: a client must not be able
to make the server write wherever it names (Triton made the same choice). Each process keeps its own tracer; in a
--processes group, changes reach the others through the group's journal (group_settings.py), and trace_count
counts per process.

The request path pays one attribute test while tracing is off (`Tracer.on`).
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kerve import codecs

from .errors import invalid

if TYPE_CHECKING:
    from .otel import OtelExporter

log = logging.getLogger("kerve.trace")

LEVELS = ("OFF", "TIMESTAMPS", "TENSORS")
MODES = ("triton", "opentelemetry")
CONTEXT_KEYS = ("traceparent", "tracestate")  # W3C trace context, as gRPC metadata keys
KEYS = ("trace_file", "trace_level", "trace_rate", "trace_count", "log_frequency", "trace_mode")
FIXED_KEYS = ("trace_file", "trace_mode")  # set when the server starts; a change may only repeat them
Stamps = Sequence[tuple[str, float]]  # (Triton's activity name, time.monotonic() seconds)


@dataclass(frozen=True)
class _Plan:
    """A model's settings as the request path uses them, parsed once per settings change."""

    on: bool
    timestamps: bool
    tensors: bool
    rate: int
    count: int  # -1: no limit
    count_scope: str | None  # where trace_count was set: the model, or None (global)
    frequency: int  # log_frequency


class Tracer:
    def __init__(
        self,
        trace_file: Path | None = None,
        level: str = "OFF",
        rate: int = 1000,
        otel: OtelExporter | None = None,
    ) -> None:
        """`otel`: send traces as OpenTelemetry spans through it (trace_mode opentelemetry) instead of Triton's
        JSON to `trace_file` or the log."""
        self._otel = otel
        self._file = None if otel is not None else trace_file
        self.propagates = otel is not None
        """Whether requests' W3C trace context matters: the protocol adapters read gRPC metadata only then."""
        self._defaults: dict[str, list[str]] = {
            "trace_file": [str(self._file or "")],
            "trace_level": level.split(","),  # "TIMESTAMPS,TENSORS" from --trace-level
            "trace_rate": [str(rate)],
            "trace_count": ["-1"],
            "log_frequency": ["0"],
            "trace_mode": ["opentelemetry" if otel is not None else "triton"],
        }
        _check(self._defaults, self._defaults["trace_mode"][0])
        self._global = dict(self._defaults)
        self._models: dict[str, dict[str, list[str]]] = {}  # a model's own values
        self._seen: dict[str, int] = {}  # requests of a model since its rate last changed
        self._left: dict[str | None, int] = {}  # traces left to take where trace_count was set (None: global)
        self._plans: dict[str, _Plan] = {}  # by model, made on first use after each change
        self._pending: list[dict[str, Any]] = []
        self._files = itertools.count()
        self._ids = itertools.count(1)
        self.on = False
        self._settle()

    # ---- settings (the TraceSetting RPC)

    def settings(self, model: str | None = None) -> dict[str, list[str]]:
        """The settings that apply to `model` (None: the global ones)."""
        return {**self._global, **self._models.get(model or "", {})}

    def update(self, model: str | None, changes: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
        """Apply `changes` (an empty list clears a setting: a model's falls back to the global value, a global one
        to the server's start value); all are checked first, so a bad one changes nothing."""
        unknown = sorted(set(changes) - set(KEYS))
        if unknown:
            raise invalid(f"unknown trace setting {unknown[0]!r}; settings are {', '.join(KEYS)}")
        if "trace_file" in changes and list(changes["trace_file"]) not in ([], self._defaults["trace_file"]):
            raise invalid("the trace file is fixed when the server starts (--trace-file); it cannot be changed")
        mode = self._defaults["trace_mode"]
        if "trace_mode" in changes and list(changes["trace_mode"]) not in ([], mode):
            raise invalid(f"trace_mode is fixed when the server starts (--trace-mode); it is {mode[0]}")
        scope = dict(self._models.get(model, {})) if model else dict(self._global)
        for key, values in changes.items():
            if list(values):
                scope[key] = [str(v) for v in values]
            elif model:
                scope.pop(key, None)
            else:
                scope[key] = self._defaults[key]
        _check(scope, mode[0])
        if model:
            self._models[model] = scope
        else:
            self._global = scope
        if "trace_count" in changes:
            self._left.pop(model or None, None)  # a new count starts over
        if "trace_rate" in changes:
            self._seen.clear()
        self._plans.clear()
        self._settle()
        return self.settings(model)

    def _settle(self) -> None:
        levels = [self._global["trace_level"], *(s["trace_level"] for s in self._models.values() if "trace_level" in s)]
        self.on = any(level != ["OFF"] for level in levels)

    # ---- the request path (the event loop thread)

    def _plan(self, model: str) -> _Plan:
        plan = self._plans.get(model)
        if plan is None:
            settings = self.settings(model)
            levels = settings["trace_level"]
            plan = self._plans[model] = _Plan(
                on=levels != ["OFF"],
                timestamps=levels != ["TENSORS"],  # a traced request has its timestamps unless only tensors were asked
                tensors="TENSORS" in levels,
                rate=int(settings["trace_rate"][0]),
                count=int(settings["trace_count"][0]),
                count_scope=model if "trace_count" in self._models.get(model, {}) else None,
                frequency=int(settings["log_frequency"][0]),
            )
        return plan

    def sample(self, model: str, has_context: bool = False) -> bool:
        """Whether to trace this request of `model` (called only while `on`); `has_context`: it carries a W3C
        trace context, which in opentelemetry mode is traced whatever the rate and count."""
        plan = self._plan(model)
        if not plan.on:
            return False
        if has_context and self.propagates:
            return True
        seen = self._seen[model] = self._seen.get(model, 0) + 1
        if not plan.rate or seen % plan.rate:  # rate 0 (opentelemetry mode): only requests with a context
            return False
        if plan.count < 0:
            return True
        left = self._left.setdefault(plan.count_scope, plan.count)
        if left <= 0:
            return False
        self._left[plan.count_scope] = left - 1
        return True

    def record(
        self,
        model: str,
        version: int | None,
        request_id: str,
        stamps: Stamps,
        inputs: Mapping[str, np.ndarray] | None = None,
        outputs: Mapping[str, np.ndarray] | None = None,
        context: Mapping[str, str] | None = None,
        error: tuple[str, str] | None = None,
    ) -> None:
        """One traced request; its tensors (`inputs` as queued, `outputs` as answered) count only at level
        TENSORS. `context` (its W3C trace context) and `error` ((gRPC code, message) of a failed one) matter to
        OpenTelemetry spans only: Triton's JSON has no place for them."""
        plan = self._plan(model)
        if self._otel is not None:
            tensors = []
            if plan.tensors:
                for activity, arrays in (("TENSOR_QUEUE_INPUT", inputs), ("TENSOR_BACKEND_OUTPUT", outputs)):
                    tensors += [(activity, _tensor(name, array)) for name, array in (arrays or {}).items()]
            try:
                self._otel.export(model, version, request_id, stamps, context, error, tensors, plan.timestamps)
            except Exception:  # a tracing fault must not fail the request it traced
                log.exception("cannot export the trace of a request to %s", model)
            return
        trace_id = next(self._ids)
        trace: dict[str, Any] = {
            "id": trace_id,
            "model_name": model,
            "model_version": -1 if version is None else version,
            "request_id": request_id,
        }
        if plan.timestamps:
            trace["timestamps"] = [{"name": name, "ns": int(at * 1e9)} for name, at in stamps]
        entries = [trace]
        if plan.tensors:
            for activity, tensors in (("TENSOR_QUEUE_INPUT", inputs), ("TENSOR_BACKEND_OUTPUT", outputs)):
                entries += [
                    {"id": trace_id, "activity": activity, "tensor": _tensor(name, array)}
                    for name, array in (tensors or {}).items()
                ]
        if self._file is None:
            for entry in entries:
                log.info("%s", json.dumps(entry))
            return
        self._pending.append(entries)
        if plan.frequency and len(self._pending) >= plan.frequency:
            self._write(Path(f"{self._file}.{next(self._files)}"))

    def close(self) -> None:
        """At shutdown: write what has not been written (all of it with log_frequency 0), or export it."""
        if self._otel is not None:
            self._otel.close()
        if self._pending and self._file is not None:
            self._write(self._file if not any(self._frequencies()) else Path(f"{self._file}.{next(self._files)}"))

    def _frequencies(self) -> list[int]:
        scopes = [self._global, *self._models.values()]
        return [int(s["log_frequency"][0]) for s in scopes if "log_frequency" in s]

    def _write(self, path: Path) -> None:
        traces, self._pending = self._pending, []
        try:
            path.write_text(json.dumps([entry for entries in traces for entry in entries], indent=1) + "\n")
        except OSError as exc:  # a full disk must not fail requests: say so and drop the traces
            log.error("cannot write %d traces to %s: %s", len(traces), path, exc)


def trace_context(metadata: Iterable[tuple[str, str | bytes]] | None) -> dict[str, str] | None:
    """The W3C trace context among a call's gRPC metadata (`traceparent`, and `tracestate` with it), or None:
    what a protocol adapter puts in InferRequest.trace_context when the tracer `propagates`."""
    found: dict[str, str] | None = None
    for key, value in metadata or ():
        if key in CONTEXT_KEYS and isinstance(value, str):
            if found is None:
                found = {}
            found[key] = value
    return found if found is not None and "traceparent" in found else None


def _tensor(name: str, array: np.ndarray) -> dict[str, str]:
    """Triton's tensor entry: V2 datatype, shape and the values flattened, comma-separated (strings decoded)."""
    try:
        dtype = codecs.datatype_of(array.dtype)
    except codecs.CodecError:
        dtype = str(array.dtype)
    flat = array.reshape(-1)
    if dtype == codecs.BYTES:
        values = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in flat]
    else:
        values = [str(v) for v in flat.tolist()]
    return {"name": name, "data": ",".join(values), "shape": ",".join(str(d) for d in array.shape), "dtype": dtype}


def _check(scope: Mapping[str, list[str]], mode: str) -> None:
    """INVALID_ARGUMENT naming the setting unless every value in `scope` is one kerve can apply in `mode`."""
    for key, values in scope.items():
        if key == "trace_level":
            if not values or any(v not in LEVELS for v in values) or ("OFF" in values and len(values) > 1):
                raise invalid(f"trace_level must be OFF, or TIMESTAMPS and/or TENSORS, got {values}")
            continue
        if len(values) != 1:
            raise invalid(f"trace setting {key!r} takes one value, got {values}")
        value = values[0]
        if key == "trace_mode" and value not in MODES:
            raise invalid(f"trace_mode must be one of {', '.join(MODES)}, got {value!r}")
        # rate 0 traces only requests that carry a trace context: opentelemetry mode's, as in Triton
        rate_floor = 0 if mode == "opentelemetry" else 1
        lowest = {"trace_rate": rate_floor, "trace_count": -1, "log_frequency": 0}.get(key)
        if lowest is not None and not _integer(value) >= lowest:
            raise invalid(f"trace setting {key!r} must be an integer >= {lowest}, got {value!r}")


def _integer(text: str) -> float:
    try:
        return int(text)
    except ValueError:
        return float("-inf")
