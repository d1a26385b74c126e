"""Dynamic batching: many small requests become one model call.

A model call has a fixed cost (Python -> TF dispatch, kernel launches, host <-> device copies) that dwarfs the
per-row cost, so a batch of 64 rows costs little more than a batch of one. The batcher concatenates concurrent
requests into one call, runs it on a replica in a worker thread (TF releases the GIL, so the event loop keeps
serving), and hands each caller back its own rows.

Everything except the model call runs on the event loop thread, so the queue needs no locks. There is no task
per request or per batch: submits wake a single coalesced dispatch callback, worker completions come back as one
loop callback per batch, and a single ``call_later`` timer bounds how long a request is held. Each request's
outcome goes to its *sink*, synchronously, from that callback: an asyncio future (``submit``), or the caller's
own object (``enqueue``), so a caller that finishes a request in a callback costs no extra loop turn.

This module imports numpy and nothing heavier (no TensorFlow, no grpc): it takes plain callables, which keeps it
testable with fakes and usable by any device backend.
"""

from __future__ import annotations

import asyncio
import bisect
import concurrent.futures
import contextlib
import dataclasses
import functools
import heapq
import itertools
import logging
import math
import numbers
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from . import slot_choice
from .errors import ErrorCode, ServingError, invalid, unavailable
from .queue_policy import QueuePolicy, level_policies

__all__ = ["BatchStats", "Batcher", "BatchingConfig", "Replica", "Sink", "Ticket"]

logger = logging.getLogger(__name__)

Replica = Callable[[dict[str, np.ndarray]], Mapping[str, np.ndarray]]
"""A synchronous model call: input arrays with a leading batch dimension in, output arrays with the same one out."""


class Sink(Protocol):
    """Where a request's outcome goes; an asyncio.Future is one. Called on the event loop thread, at most once
    (``done()`` is checked first), and must not raise."""

    def done(self) -> bool: ...

    def set_result(self, result: dict[str, np.ndarray], /) -> None: ...

    def set_exception(self, exception: BaseException, /) -> None: ...


# What makes two requests concatenable: the same input names, dtypes and trailing shapes.
_Key = tuple[tuple[str, np.dtype, tuple[int, ...]], ...]


# --------------------------------------------------------------------------------------------- configuration

MAX_BATCHES_PER_REPLICA = 16  # a bound on a typo, far past what one device overlaps usefully
AUTO = "auto"  # batches_per_replica learned per batcher (slot_choice)


@dataclasses.dataclass(frozen=True)
class BatchingConfig:
    """Batching knobs for one model version, validated once so a bad config.yaml fails at load, not per request.

    - ``max_batch_size``: most rows per model call; larger requests are split into several calls.
    - ``max_queue_delay_s``: longest a request is held to let a batch fill while the model is under load
      (0 disables holding: every idle replica takes whatever is queued).
    - ``allowed_batch_sizes``: static shapes the model was compiled for (TPU/XLA); batches are padded up to the
      smallest one that fits by repeating the last row, and outputs are sliced back.
    - ``max_queued``: queued rows beyond which new requests are refused with RESOURCE_EXHAUSTED, so overload
      turns into fast, retryable errors instead of unbounded latency and memory.
    - ``pad_to_allowed``: False keeps ``allowed_batch_sizes`` in the config but runs batches at their natural
      size, so one config.yaml serves both a TPU deployment and a CPU/GPU one.
    - ``priority_levels``: Triton's priority levels (0: none). A request's ``priority`` 1 is the highest level;
      batches take the highest level queued first, oldest first within a level, and fill up from lower levels.
      A lower level waits as long as higher ones keep the replicas busy (as in Triton): give its requests a
      deadline. ``default_priority_level`` is the level of a request without one (0: the lowest level).
    - ``queue_policy``, ``priority_queue_policy``: Triton's queue policies (``queue_policy.QueuePolicy``), the
      first for every level the second (level -> policy) does not name: a timeout per queued request, what happens
      to a request that reaches it (reject or delay), and the most requests a level may hold.
    - ``batches_per_replica``: batches one replica runs at once (TF Serving's ``num_batch_threads``, Triton's
      instances per device). A model whose call leaves cores idle (a chain of small ops, as an LSTM's steps)
      serves more with two; a second batch also shrinks batches, which costs a light model. ``"auto"``: one or
      two, whichever the batcher measures serving more (``slot_choice``; the batcher needs a SlotChoice for it,
      without one it runs one).
    """

    max_batch_size: int = 64
    max_queue_delay_s: float = 0.001
    allowed_batch_sizes: tuple[int, ...] = ()
    max_queued: int = 1024
    pad_to_allowed: bool = True
    priority_levels: int = 0
    default_priority_level: int = 0
    queue_policy: QueuePolicy = QueuePolicy()
    priority_queue_policy: tuple[tuple[int, QueuePolicy], ...] = ()  # a mapping is accepted and kept as pairs
    batches_per_replica: int | str = 1  # or "auto"

    def __post_init__(self) -> None:
        set_ = functools.partial(object.__setattr__, self)
        set_("max_batch_size", positive_int("max_batch_size", self.max_batch_size))
        set_("max_queued", positive_int("max_queued", self.max_queued))
        if isinstance(self.batches_per_replica, str) and self.batches_per_replica != AUTO:
            raise ValueError(f"batches_per_replica must be an integer or {AUTO!r}, got {self.batches_per_replica!r}")
        if self.batches_per_replica != AUTO:
            set_("batches_per_replica", positive_int("batches_per_replica", self.batches_per_replica))
        if self.most_batches_per_replica > MAX_BATCHES_PER_REPLICA:
            raise ValueError(
                f"batches_per_replica must be at most {MAX_BATCHES_PER_REPLICA}, got {self.batches_per_replica}"
            )
        delay = self.max_queue_delay_s
        if isinstance(delay, bool) or not isinstance(delay, numbers.Real):
            raise ValueError(f"max_queue_delay_s must be a number of seconds, got {delay!r}")
        delay = float(delay)
        if not math.isfinite(delay) or delay < 0:
            raise ValueError(f"max_queue_delay_s must be a finite number >= 0, got {delay!r}")
        set_("max_queue_delay_s", delay)
        if not isinstance(self.pad_to_allowed, bool):
            raise ValueError(f"pad_to_allowed must be true or false, got {self.pad_to_allowed!r}")
        levels = non_negative_int("priority_levels", self.priority_levels)
        default = non_negative_int("default_priority_level", self.default_priority_level)
        if default > levels:
            raise ValueError(f"default_priority_level must be between 1 and priority_levels ({levels}), got {default}")
        set_("priority_levels", levels)
        set_("default_priority_level", default or levels)
        per_level = self.priority_queue_policy
        if isinstance(per_level, tuple) and all(isinstance(p, tuple) and len(p) == 2 for p in per_level):
            per_level = dict(per_level)  # the pairs this field keeps (dataclasses.replace, a copy)
        base, policies = level_policies(self.queue_policy, per_level, levels)
        set_("queue_policy", base)
        set_("priority_queue_policy", tuple(sorted(policies.items())))

        sizes = self.allowed_batch_sizes
        if isinstance(sizes, (str, bytes)) or not isinstance(sizes, (tuple, list)):
            raise ValueError(f"allowed_batch_sizes must be a list of integers, got {sizes!r}")
        sizes = tuple(positive_int("allowed_batch_sizes entry", s) for s in sizes)
        if any(a >= b for a, b in itertools.pairwise(sizes)):
            raise ValueError(f"allowed_batch_sizes must be strictly increasing, got {list(sizes)}")
        if sizes and sizes[-1] != self.max_batch_size:
            raise ValueError(
                f"the largest allowed_batch_sizes entry ({sizes[-1]}) must equal max_batch_size "
                f"({self.max_batch_size}), otherwise some batches could not be padded to an allowed size"
            )
        set_("allowed_batch_sizes", sizes)

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any] | None) -> BatchingConfig:
        """Build from a model's config.yaml ``batching:`` section; typos become errors instead of silent defaults."""
        if mapping is None:
            return cls()
        if not isinstance(mapping, Mapping):
            raise ValueError(f"batching config must be a mapping, got {type(mapping).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for key, value in mapping.items():
            if key not in known:
                raise ValueError(f"unknown batching option {key!r}; expected one of: {', '.join(sorted(known))}")
            if key == "max_queue_delay_s" and isinstance(value, str):
                # PyYAML reads `1e-3` (no dot) as a string; accept what a person would write.
                try:
                    value = float(value)
                except ValueError:
                    raise ValueError(f"max_queue_delay_s must be a number of seconds, got {value!r}") from None
            values[key] = value
        return cls(**values)

    @property
    def most_batches_per_replica(self) -> int:
        """The most batches one replica runs at once: what threads and Triton's instance count are sized for."""
        return slot_choice.MOST if self.batches_per_replica == AUTO else int(self.batches_per_replica)

    def policy(self, level: int) -> QueuePolicy:
        """The queue policy of priority level ``level`` (0 on a model without levels)."""
        return dict(self.priority_queue_policy).get(level, self.queue_policy)

    def padded_size(self, rows: int) -> int:
        """Size the model is actually called with for ``rows`` real rows."""
        sizes = self.allowed_batch_sizes
        if not (self.pad_to_allowed and sizes):
            return rows
        return sizes[bisect.bisect_left(sizes, rows)]


def positive_int(name: str, value: object) -> int:
    """``value`` as an int if it is an integer >= 1 (bools are not), else ValueError naming ``name``."""
    return _int_at_least(name, value, 1)


def non_negative_int(name: str, value: object) -> int:
    return _int_at_least(name, value, 0)


def _int_at_least(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


# --------------------------------------------------------------------------------------------- statistics


@dataclasses.dataclass(frozen=True)
class BatchStats:
    """What one model call did, for metrics (batch size histogram, queue and compute latency) and statistics."""

    batch_size: int  # real rows, padding excluded
    padded_size: int  # rows the model was called with
    requests: int  # distinct requests (or pieces of split requests) in the batch
    queue_wait_s: float  # longest time a row of this batch waited before the batch formed
    compute_s: float  # time inside the replica call
    input_s: float  # assembling the batch from its requests' rows (and padding) before the call
    output_s: float  # checking the outputs and cutting them into each request's rows after it
    replica: int  # index into the replicas the batcher was built with
    ok: bool  # False when the replica raised or returned malformed outputs


# --------------------------------------------------------------------------------------------- internals


class _Request:
    """One submit() call. Split requests stay one object; ``next_row`` is how far batches have consumed it."""

    __slots__ = (
        "__weakref__", "arrival", "dead", "deadline", "expires", "first_span", "inline", "inputs", "key", "n",
        "next_row", "own_timeout", "parts", "rank", "rows_done", "seq", "sink",
    )  # fmt: skip

    def __init__(
        self,
        inputs: dict[str, np.ndarray],
        n: int,
        sink: Sink,
        arrival: float,
        deadline: float | None,
        seq: int,
        rank: int,
        inline: bool = False,
    ) -> None:
        self.inputs = inputs
        self.n = n
        self.sink = sink
        self.arrival = arrival
        self.deadline = deadline
        self.seq = seq
        # Queue order: 2 x priority level (1 first; 0 when the batcher has none), + 1 once delayed by its queue
        # policy, so a level's delayed requests go after its others and before the next level's
        self.rank = rank
        self.expires = math.inf  # when its queue policy's timeout strikes, if it has one and has not started
        self.key: _Key | None = None  # its inputs' key, kept when it has a queue timeout (to find its queue)
        self.own_timeout = False  # that timeout is the request's own (the policy allows overrides), not the policy's
        self.next_row = 0  # rows [0, next_row) have been put into batches
        self.rows_done = 0  # rows whose outputs came back (split requests only)
        self.parts: list[tuple[int, dict[str, np.ndarray]]] | None = None
        self.dead = False  # failed or cancelled: its remaining rows must never run
        self.inline = inline  # its caller allows its model call on the event loop thread (see Batcher.enqueue)


class _Discard:
    """The sink of an abandoned request: already done, so nothing is delivered to it."""

    def done(self) -> bool:
        return True

    def set_result(self, result: dict[str, np.ndarray], /) -> None:
        return None

    def set_exception(self, exception: BaseException, /) -> None:
        return None


_DISCARD = _Discard()

Ticket = _Request
"""What ``enqueue`` hands back: pass it to ``abandon`` when the caller stops waiting."""

# A slice of a request that goes into one batch: (request, first row, end row).
_Slice = tuple[_Request, int, int]


class _Batch:
    __slots__ = ("padded", "replica", "rows", "slices", "wait")

    def __init__(self, slices: list[_Slice], rows: int, padded: int, wait: float) -> None:
        self.slices = slices
        self.rows = rows
        self.padded = padded
        self.wait = wait
        self.replica = -1


Span = tuple[float, float, float, float]
"""A model call's (start, input end, output start, end) on the batcher's clock: Triton's COMPUTE_START,
COMPUTE_INPUT_END, COMPUTE_OUTPUT_START and COMPUTE_END. Input is assembling the batch from its requests' rows,
output cutting the model's outputs back into theirs."""

NO_SPAN: Span = (0.0, 0.0, 0.0, 0.0)

# (per-slice outputs, error, span): the worker never raises, so errors keep their times.
# Per slice: its outputs, or (a batch of several requests the model refused) the error of that request alone.
_Outcome = tuple["list[dict[str, np.ndarray] | ServingError] | None", "BaseException | None", "Span"]


def _signature(inputs: Mapping[str, np.ndarray]) -> tuple[int, _Key]:
    if not isinstance(inputs, (dict, Mapping)) or not inputs:  # dict first: a dict skips the ABC check (a call)
        raise invalid("request has no inputs")
    n = -1
    first = ""
    for name, arr in inputs.items():
        if not isinstance(arr, np.ndarray):
            raise invalid(f"input {name!r} is a {type(arr).__name__}, expected a numpy array")
        if arr.ndim == 0:
            raise invalid(f"input {name!r} is a scalar; inputs need a leading batch dimension")
        if n < 0:
            n, first = arr.shape[0], name
        elif arr.shape[0] != n:
            raise invalid(
                f"inputs disagree on the batch dimension: {first!r} has {n} rows, {name!r} has {arr.shape[0]}"
            )
    if n == 0:
        raise invalid("request has an empty batch (leading dimension 0)")
    if len(inputs) == 1:
        key: _Key = ((name, arr.dtype, arr.shape[1:]),)  # the loop's one input
    else:
        key = tuple(sorted(((name, arr.dtype, arr.shape[1:]) for name, arr in inputs.items()), key=_first))
    return n, key


def _first(item: tuple[str, np.dtype, tuple[int, ...]]) -> str:
    return item[0]


def pad_rows(arr: np.ndarray, extra: int) -> np.ndarray:
    """``extra`` more rows, copies of the last: padding any model accepts (it is a real input), cut off the outputs."""
    return np.concatenate([arr, np.repeat(arr[-1:], extra, axis=0)])


def _execute(
    replica: Replica,
    slices: list[_Slice],
    rows: int,
    padded: int,
    clock: Callable[[], float],
    padded_size: Callable[[int], int] | None = None,
) -> _Outcome:
    """Runs in a worker thread: assemble the batch, call the model, split its outputs per slice; each phase timed
    (Triton's compute input, infer and output).

    A batch of several requests that the model refuses (INVALID_ARGUMENT: inputs only the model can judge, such
    as serialized tf.Examples) is run again one request at a time, so only the request at fault fails: without
    batching (TF Serving's default) nobody's answer depends on what another client sent."""
    began = called = returned = clock()
    try:
        batch = _inputs_of(slices, rows, padded)
        called = returned = clock()
        try:
            raw = replica(batch)
        except ServingError as exc:
            if exc.code is not ErrorCode.INVALID_ARGUMENT or len(slices) == 1:
                raise
            parts = [_run_alone(replica, piece, padded_size) for piece in slices]
            return parts, None, (began, called, clock(), clock())
        finally:
            returned = clock()
        outputs = _check_outputs(raw, padded)

        if len(slices) == 1 and padded == rows:
            return [outputs], None, (began, called, returned, clock())
        parts = []
        offset = 0
        for _, start, stop in slices:
            end = offset + stop - start
            parts.append({name: arr[offset:end] for name, arr in outputs.items()})
            offset = end
        return parts, None, (began, called, returned, clock())
    except Exception as exc:  # delivered to every request of the batch by the loop
        return None, exc, (began, called, returned, returned)


def _inputs_of(slices: list[_Slice], rows: int, padded: int) -> dict[str, np.ndarray]:
    if len(slices) == 1:
        req, start, stop = slices[0]
        batch = req.inputs
        if stop - start != req.n:
            batch = {name: arr[start:stop] for name, arr in batch.items()}
        if padded != rows:
            batch = {name: pad_rows(arr, padded - rows) for name, arr in batch.items()}
        return batch
    batch = {}
    for name in slices[0][0].inputs:
        pieces = [req.inputs[name][start:stop] for req, start, stop in slices]
        if padded != rows:
            pieces.append(np.repeat(pieces[-1][-1:], padded - rows, axis=0))
        batch[name] = np.concatenate(pieces)
    return batch


def _run_alone(
    replica: Replica, piece: _Slice, padded_size: Callable[[int], int] | None
) -> dict[str, np.ndarray] | ServingError:
    rows = piece[2] - piece[1]
    padded = rows if padded_size is None else padded_size(rows)
    try:
        outputs = _check_outputs(replica(_inputs_of([piece], rows, padded)), padded)
    except ServingError as exc:
        return exc
    except Exception as exc:  # a defect, not this request's fault: its own INTERNAL, the others still answered
        logger.error("a model call for one request of a refused batch failed", exc_info=exc)
        return ServingError(ErrorCode.INTERNAL, str(exc) or type(exc).__name__)
    return outputs if padded == rows else {name: arr[:rows] for name, arr in outputs.items()}


def _check_outputs(raw: object, padded: int) -> dict[str, np.ndarray]:
    if not isinstance(raw, Mapping):
        raise ServingError(ErrorCode.INTERNAL, f"model returned {type(raw).__name__}; expected a dict of output arrays")
    outputs = {}
    for name, value in raw.items():
        arr = value if isinstance(value, np.ndarray) else np.asarray(value)
        if arr.ndim == 0 or arr.shape[0] != padded:
            raise ServingError(
                ErrorCode.INTERNAL,
                f"model output {name!r} has shape {arr.shape}; expected a leading batch dimension of {padded}",
            )
        outputs[name] = arr
    return outputs


def _assemble(parts: list[tuple[int, dict[str, np.ndarray]]]) -> dict[str, np.ndarray]:
    parts.sort(key=_start)
    names = parts[0][1].keys()
    return {name: np.concatenate([out[name] for _, out in parts]) for name in names}


def _start(part: tuple[int, dict[str, np.ndarray]]) -> int:
    return part[0]


# --------------------------------------------------------------------------------------------- the batcher


class Batcher:
    """Queues requests for one model version and runs them in batches on its replicas.

    Dispatch policy (the loop thread runs all of it):

    - A request arriving while a replica is idle and the batcher is *cold* (nothing in flight, no batch finished
      in the last ``max_queue_delay_s``) runs at once: at low load latency wins. Requests arriving in the same
      event-loop turn still share that batch.
    - While every replica is busy, requests accumulate.
    - When a replica is idle but the batcher is *warm* (a batch is running or finished within the last
      ``max_queue_delay_s``), the head of the queue is held until the *expected* batch is queued or it has
      waited ``max_queue_delay_s`` since it arrived, whichever comes first. The expected batch is the rows of
      the last finished batch plus the rows queued when it finished (capped at ``max_batch_size``): with
      closed-loop clients those are exactly the callers about to come back. Without holding, responses that
      return a few at a time make batch sizes alternate (1, N-1, 1, ...) and a compute-bound model loses half
      its throughput; holding for a full ``max_batch_size`` instead would stall a lone sequential client, or a
      few light-model clients, for the whole delay on every request.
    - A batch takes up to ``max_batch_size`` rows from the oldest queued request onwards (FIFO, so nothing
      starves), only from requests concatenable with it; others wait for a later batch. A request larger than
      the room left is split, and its pieces are reassembled in order. With priority levels the batch starts at
      the oldest request of the highest level queued and fills up from the levels below.
    - A queue policy's timeout is watched by one timer for the earliest one: a request that reaches it before
      any of its rows started is answered DEADLINE_EXCEEDED (``reject``) or moved behind its level's requests
      that have not timed out (``delay``).
    - The batch goes to the replica that has been idle longest (each replica runs one batch at a time by default,
      so the idle ones are the least loaded; with ``batches_per_replica`` above 1, to the one running the fewest
      batches, idle longest among equals), in a worker thread, so the loop goes on decoding and answering requests.
      With ``batches_per_replica: auto`` the count is ``slots``'s (a SlotChoice fed every completed batch), 1 or 2,
      and changes while the batcher runs.
      The exception (``inline_max_s``): a 1-row batch of a request its caller marked ``inline`` (nothing else in
      the server, traffic arriving one request at a time) runs on the loop thread when no other batch of this
      batcher runs and its 1-row calls have averaged at most ``inline_max_s``; the loop had nothing else to do,
      and the request saves the hop to a worker and back.
    """

    def __init__(
        self,
        replicas: Sequence[Replica],
        config: BatchingConfig | None = None,
        executor: concurrent.futures.Executor | None = None,
        clock: Callable[[], float] = time.monotonic,
        name: str = "",
        *,
        on_batch: Callable[[BatchStats], None] | None = None,
        on_timeout: Callable[[str], None] | None = None,
        inline_max_s: float = 0.0,
        slots: slot_choice.SlotChoice | None = None,
    ) -> None:
        if not replicas:
            raise ValueError("a Batcher needs at least one replica")
        self._replicas = tuple(replicas)
        self._config = config if config is not None else BatchingConfig()
        self._clock = clock
        self._name = name
        self.on_batch = on_batch
        """Called on the event loop after every model call; metrics hook. Exceptions are logged and ignored."""
        self.on_timeout = on_timeout
        """Called with the action ("reject" or "delay") when a request reaches its queue policy's timeout; metrics
        hook, as ``on_batch``."""
        per_replica = self._config.batches_per_replica
        auto = per_replica == AUTO
        # batches_per_replica "auto" learns its limit with `slots`; without one it runs a batch at a time
        self._slot_choice = slots if auto else None
        self._owns_executor = executor is None
        self._executor = executor or concurrent.futures.ThreadPoolExecutor(
            max_workers=len(self._replicas) * self._config.most_batches_per_replica,
            thread_name_prefix=f"kerve-batch-{name or 'model'}",
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        # by input key; with priority levels by (level, input key)
        self._queues: dict[Any, deque[_Request]] = {}
        self._queued = 0  # live rows not yet put into a batch
        self._seq = itertools.count()
        # free batch slots (batches_per_replica per replica) by replica index, longest idle first
        self._idle: deque[int] = deque()
        self._running = [0] * len(self._replicas)  # batches in flight per replica (several slots: pick the least)
        self._limit = 0
        self._set_limit((slots.limit if slots is not None else 1) if auto else int(per_replica))
        self._in_flight = 0
        self._warm_until = -math.inf
        self._expected = 1  # rows worth holding for under load; learned at each batch completion
        self._kick_scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_req: _Request | None = None
        self._hold_until = math.inf  # when the armed hold timer fires
        self._closing = False
        self._drained: asyncio.Future[None] | None = None
        # queue policies, by priority level (index 0: a batcher without levels)
        config = self._config
        self._levels = levels = config.priority_levels
        self._policies = policies = tuple(config.policy(level) for level in range(levels + 1))
        self._ranked = bool(levels) or any(p.delays for p in policies)  # queues keyed (rank, inputs key)
        self._waiting = [0] * (levels + 1)  # requests not yet wholly in batches, by level
        # heap of (when, seq, kind, request) for queue timeouts (_TIMEOUT) and, in a batcher whose lower levels
        # can wait behind higher ones, deadlines (_DEADLINE): weak, so the entries of requests that left (swept
        # now and then) keep no arrays
        self._expiry: list[tuple[float, int, int, weakref.ref[_Request]]] = []
        self._expiry_timer: asyncio.TimerHandle | None = None
        self._expiry_when = math.inf
        self._compact_at = _COMPACT_MIN
        self._inline_max_s = inline_max_s
        self._solo_s = math.inf  # moving average of a 1-row batch's model call; unknown until one ran in a thread
        self.last_compute: Span = NO_SPAN
        """The Span of the model call of the batch whose results are being delivered (for a split request: its
        first piece's start and input end, its last piece's output start and end): a sink reads it in
        ``set_result``, for statistics and traces."""

    # ---- introspection

    @property
    def name(self) -> str:
        return self._name

    @property
    def config(self) -> BatchingConfig:
        return self._config

    @property
    def queued_samples(self) -> int:
        """Rows waiting for a batch (queue depth gauge, autoscaling signal)."""
        return self._queued

    @property
    def queued_requests(self) -> int:
        """Requests not yet wholly in batches: Triton's pending count (a split request counts until its last
        piece is in a batch). Safe to read from another thread (a sum of ints)."""
        return sum(self._waiting)

    @property
    def in_flight_batches(self) -> int:
        return self._in_flight

    @property
    def replica_count(self) -> int:
        return len(self._replicas)

    @property
    def closing(self) -> bool:
        return self._closing

    def __repr__(self) -> str:
        return (
            f"Batcher({self._name!r}, replicas={len(self._replicas)}, queued={self._queued}, "
            f"in_flight={self._in_flight}, closing={self._closing})"
        )

    @property
    def _label(self) -> str:
        return f"model {self._name!r}" if self._name else "model"

    # ---- public API

    async def submit(
        self,
        inputs: dict[str, np.ndarray],
        deadline: float | None = None,
        priority: int = 0,
        timeout_s: float | None = None,
        inline: bool = False,
    ) -> dict[str, np.ndarray]:
        """Run ``inputs`` (leading batch dimension n >= 1) through the model, batched with other callers.

        ``deadline`` is an absolute time on the batcher's clock; a request still queued when it passes is
        failed with DEADLINE_EXCEEDED instead of wasting model time on an answer nobody is waiting for.
        Cancelling the awaiting task removes the request from the queue if it has not started.
        """
        future: asyncio.Future[dict[str, np.ndarray]] = asyncio.get_running_loop().create_future()
        ticket = self.enqueue(inputs, deadline, future, priority, timeout_s, inline)
        try:
            return await future
        except asyncio.CancelledError:
            self.abandon(ticket)
            raise

    def enqueue(
        self,
        inputs: dict[str, np.ndarray],
        deadline: float | None,
        sink: Sink,
        priority: int = 0,
        timeout_s: float | None = None,
        inline: bool = False,
    ) -> Ticket:
        """``submit`` without a coroutine: queue the request and return at once; its outputs (or a ServingError)
        go to ``sink`` from the batch's completion callback. Must run on the event loop thread. Raises a
        ServingError instead of queueing when the batcher is draining, the queue is full or the deadline passed.
        A caller that stops waiting passes the ticket to ``abandon``. ``priority`` (Triton's: 1 is the highest
        level) counts only with ``priority_levels``; 0 or a level the config lacks means the default level.
        ``timeout_s`` is the request's own timeout (Triton's ``timeout`` parameter): its queue timeout where its
        level's queue policy allows overrides and it is shorter than the policy's, otherwise a deadline.
        ``inline``: the caller knows nothing else is in flight in the server (traffic arrives one request at a
        time), so a 1-row batch of this request alone may run on the event loop thread, saving the two thread hops
        of a worker, when this batcher has ``inline_max_s`` and its 1-row calls have averaged no more than that.
        """
        if self._closing:
            raise unavailable(f"{self._label} is draining; not accepting new requests")
        n, key = _signature(inputs)
        limit = self._config.max_queued
        if self._queued + n > limit and not (n > limit and self._queued == 0):
            # a request larger than the whole queue is taken when the queue is empty (split into batches): refused
            # even then, it could never run, though RESOURCE_EXHAUSTED tells its client to retry
            if n > limit:
                message = (
                    f"{self._label}: request has {n} samples, more than max_queued={limit}; it is taken when "
                    "nothing else is queued, retry later"
                )
            else:
                message = (
                    f"{self._label}: queue is full ({self._queued} samples queued, max_queued={limit}); retry later"
                )
            raise ServingError(ErrorCode.RESOURCE_EXHAUSTED, message)
        levels = self._levels
        level = (priority if 0 < priority <= levels else self._config.default_priority_level) if levels else 0
        policy = self._policies[level]
        if policy.max_queue_size and self._waiting[level] >= policy.max_queue_size:
            where = f"priority level {level}'s queue" if levels else "queue"
            raise ServingError(
                ErrorCode.RESOURCE_EXHAUSTED,
                f"{self._label}: {where} is full ({policy.max_queue_size} requests, its queue policy's "
                "max_queue_size); retry later",
            )
        now = self._clock()
        timeout = policy.timeout_s
        own = False
        if timeout_s:
            if policy.allow_timeout_override:
                if not timeout or timeout_s < timeout:
                    timeout, own = timeout_s, True
            elif deadline is None or now + timeout_s < deadline:
                deadline = now + timeout_s
        if deadline is not None and deadline <= now:
            raise ServingError(ErrorCode.DEADLINE_EXCEEDED, "deadline passed before the request was queued")

        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._bind(loop)
        req = _Request(inputs, n, sink, now, deadline, next(self._seq), level << 1, inline)
        queue_key: Any = (req.rank, key) if self._ranked else key
        queue = self._queues.get(queue_key)
        if queue is None:
            queue = self._queues[queue_key] = deque()
        queue.append(req)
        self._queued += n
        self._waiting[level] += 1
        if timeout or deadline is not None:
            req.key = key
        if timeout:
            req.expires = now + timeout
            req.own_timeout = own
            self._push_expiry(req.expires, _TIMEOUT, req)
        if deadline is not None:
            # a timer of its own, FIFO queues included: waiting behind busy replicas, an expired request would
            # count against max_queued and hear DEADLINE_EXCEEDED only once it reached the head
            self._push_expiry(deadline, _DEADLINE, req)
        if self._timer is not None and min(req.expires, math.inf if deadline is None else deadline) < self._hold_until:
            # a replica idles while the head is held for a fuller batch: this request cannot wait that long
            self._cancel_timer()
            loop.call_soon(self._dispatch, True)
        if self._idle and not self._kick_scheduled:
            # call_soon, not a direct dispatch: every request made runnable in this loop turn joins the batch.
            self._kick_scheduled = True
            loop.call_soon(self._kick)
        return req

    def abandon(self, ticket: Ticket) -> None:
        """The caller stopped waiting: whatever of its request has not started never runs, and its sink hears
        nothing more. Safe to call after the request finished."""
        if not ticket.dead:
            ticket.sink = _DISCARD
        self._abandon(ticket)

    async def close(self, drain: bool = True) -> None:
        """Stop accepting requests; run (``drain``) or fail (UNAVAILABLE) the queued ones; wait for in-flight.

        Always waits for batches already running, since a thread cannot be interrupted and the caller is about
        to unload the replicas they use.
        """
        self._closing = True
        self._cancel_timer()
        if not drain:
            for queue in self._queues.values():
                for req in queue:
                    if not req.dead:
                        self._fail(req, unavailable(f"{self._label} is shutting down; the request was not run"))
            self._queues.clear()
            self._clear_expiry()
        elif self._queued and self._idle:
            self._dispatch(force=False)  # nothing is held while closing
        if self._queued or self._in_flight:
            assert self._loop is not None
            if self._drained is None:
                self._drained = self._loop.create_future()
            await asyncio.shield(self._drained)
        self._clear_expiry()
        if self._owns_executor:
            self._executor.shutdown(wait=False)

    # ---- dispatch (event loop thread only)

    def _bind(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._loop is not None and (self._queued or self._in_flight):
            raise RuntimeError("Batcher is in use by another event loop")
        self._loop = loop
        self._drained = None
        self._clear_expiry()  # only stale entries can be left, and a timer of the old loop

    def _kick(self) -> None:
        self._kick_scheduled = False
        self._dispatch(force=False)

    def _dispatch(self, force: bool) -> None:
        """Fill idle replicas from the queue; ``force`` skips holding once (the hold timer expired)."""
        while self._idle and self._queued:
            found = self._oldest()
            if found is None:
                break
            key, queue, head = found
            if not force and self._hold(head):
                return
            force = False
            batch = self._form(self._lower_ranks(key, queue) if self._ranked else (queue,))
            if batch is not None:
                self._launch(batch)
        self._cancel_timer()

    def _oldest(self) -> tuple[Any, deque[_Request], _Request] | None:
        """The queue whose head goes first: the highest priority level queued (1 before 2), then the oldest."""
        best_key: Any = None
        best_queue: deque[_Request] | None = None
        best: _Request | None = None
        empty: list[Any] = []
        for key, queue in self._queues.items():
            while queue and queue[0].dead:
                queue.popleft()
            if not queue:
                empty.append(key)
                continue
            head = queue[0]
            if best is None or head.rank < best.rank or (head.rank == best.rank and head.seq < best.seq):
                best, best_queue, best_key = head, queue, key
        for key in empty:
            del self._queues[key]
        if best is None or best_queue is None:
            return None
        return best_key, best_queue, best

    def _lower_ranks(self, key: tuple[int, _Key], queue: deque[_Request]) -> list[deque[_Request]]:
        """``queue`` and then the queues of the same inputs ranked below it (its level's delayed requests, the
        levels below), to fill a batch from."""
        rank, inputs = key
        lower = (self._queues.get((below, inputs)) for below in range(rank + 1, 2 * self._levels + 2))
        return [queue, *(q for q in lower if q)]

    def _hold(self, head: _Request) -> bool:
        """Whether to keep ``head`` queued a little longer for a fuller batch; arms the timer if so."""
        config = self._config
        delay = config.max_queue_delay_s
        if delay <= 0 or self._closing or self._queued >= self._expected:
            return False
        now = self._clock()
        if self._in_flight == 0 and now >= self._warm_until:
            return False  # cold: latency first
        until = head.arrival + delay
        if until <= now:
            return False
        if min(head.expires, math.inf if head.deadline is None else head.deadline) <= until:
            return False  # it would time out held while a replica idles: run it now
        if self._timer_req is not head:
            self._cancel_timer()
            assert self._loop is not None
            self._timer_req = head
            self._hold_until = until
            self._timer = self._loop.call_later(until - now, self._on_timer, head)
        return True

    def _on_timer(self, head: _Request) -> None:
        self._timer = None
        self._timer_req = None
        # The timer is the authority that the delay has passed (the loop may fire it a hair early, and a test
        # clock need not move); if its request went away meanwhile, just re-evaluate.
        self._dispatch(force=not head.dead and head.next_row < head.n)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._timer_req = None

    def _form(self, queues: Sequence[deque[_Request]]) -> _Batch | None:
        """A batch from the front of ``queues``, taken in order (requests with the same inputs key)."""
        max_rows = self._config.max_batch_size
        now = self._clock()
        slices: list[_Slice] = []
        rows = 0
        for queue in queues:
            while queue and rows < max_rows:
                req = queue[0]
                if req.dead:
                    queue.popleft()
                    continue
                if req.expires <= now and req.next_row == 0:  # its queue policy's timeout (the timer may lag)
                    queue.popleft()
                    self._expire(req, now)
                    continue
                if req.deadline is not None and req.deadline <= now:
                    queue.popleft()
                    waited = now - req.arrival
                    self._fail(
                        req,
                        ServingError(
                            ErrorCode.DEADLINE_EXCEEDED, f"deadline exceeded after {waited:.3f}s waiting for the model"
                        ),
                    )
                    continue
                start = req.next_row
                stop = start + min(req.n - start, max_rows - rows)
                req.next_row = stop
                slices.append((req, start, stop))
                rows += stop - start
                if stop == req.n:
                    queue.popleft()
                    self._waiting[req.rank >> 1] -= 1
        if not slices:
            return None
        self._queued -= rows
        return _Batch(slices, rows, self._config.padded_size(rows), now - slices[0][0].arrival)

    def _launch(self, batch: _Batch) -> None:
        loop = self._loop
        assert loop is not None
        batch.replica = replica = self._take_slot()
        self._running[replica] += 1
        self._in_flight += 1
        if (
            self._inline_max_s
            and self._in_flight == 1
            and batch.padded == 1
            and batch.slices[0][0].inline
            and self._solo_s <= self._inline_max_s
        ):
            # the loop has nothing else to do meanwhile; it answers a loop turn later, after the queued callbacks
            ran: concurrent.futures.Future[_Outcome] = concurrent.futures.Future()
            ran.set_result(_execute(self._replicas[replica], batch.slices, 1, 1, self._clock, self._config.padded_size))
            loop.call_soon(self._on_done, batch, ran)
            return
        try:
            future = self._executor.submit(
                _execute, self._replicas[replica], batch.slices, batch.rows, batch.padded, self._clock,
                self._config.padded_size,
            )  # fmt: skip
        except RuntimeError as exc:  # the executor was shut down underneath us
            failed: concurrent.futures.Future[_Outcome] = concurrent.futures.Future()
            failed.set_exception(unavailable(f"{self._label} cannot run batches: {exc}"))
            loop.call_soon(self._on_done, batch, failed)
            return

        def done(future: concurrent.futures.Future[_Outcome]) -> None:
            # One hop back to the loop per batch; leaner than run_in_executor's chained asyncio future.
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
                loop.call_soon_threadsafe(self._on_done, batch, future)

        future.add_done_callback(done)

    def _take_slot(self) -> int:
        """The replica of the free slot the next batch takes: of the replicas running the fewest batches, the one
        idle longest (with one slot per replica, simply the one idle longest)."""
        idle = self._idle
        if self._limit == 1 or len(idle) == 1:
            return idle.popleft()  # one slot each: every idle replica runs nothing
        running = self._running
        best = min(range(len(idle)), key=lambda i: running[idle[i]])  # min keeps the first of equals
        replica = idle[best]
        del idle[best]
        return replica

    def _on_done(self, batch: _Batch, future: concurrent.futures.Future[_Outcome]) -> None:
        replica = batch.replica
        self._running[replica] -= 1
        self._in_flight -= 1
        if self._slot_choice is None or self._running[replica] + self._idle.count(replica) < self._limit:
            self._idle.append(replica)  # (a slot above a lowered limit ends with its batch)
        now = self._clock()
        self._warm_until = now + self._config.max_queue_delay_s
        # Before delivering: the callers of this batch have not come back yet, the queued ones already have.
        self._expected = min(self._config.max_batch_size, batch.rows + self._queued)

        parts: list[dict[str, np.ndarray] | ServingError] | None = None
        error: BaseException | None
        span = NO_SPAN
        if future.cancelled():
            error = unavailable(f"{self._label}: the batch was cancelled")
        else:
            error = future.exception()
            if error is None:
                parts, error, span = future.result()
                self.last_compute = span
                if self._inline_max_s and batch.padded == 1 and parts is not None:
                    took = span[2] - span[1]
                    solo = self._solo_s
                    self._solo_s = took if solo == math.inf else 0.8 * solo + 0.2 * took
                if self._slot_choice is not None and parts is not None:
                    limit = self._slot_choice.observe(now, batch.rows, span[2] - span[1], self._queued)
                    if limit is not None:
                        self._set_limit(limit)
        if parts is not None:
            # The next batch first: delivering runs each caller's completion (a sink finishes its request right
            # there), and the replica need not sit idle meanwhile.
            if self._queued and self._idle:
                self._dispatch(force=False)
            self._deliver(batch, parts)
        else:
            # Fail first: a failed batch must mark its split requests dead before their next piece is batched.
            self._fail_batch(batch, error)
            if self._queued and self._idle:
                self._dispatch(force=False)
        if self._closing:
            self._check_drained()

        hook = self.on_batch
        if hook is not None:
            began, called, returned, ended = span
            stats = BatchStats(
                batch.rows, batch.padded, len(batch.slices), batch.wait, returned - called, called - began,
                ended - returned, batch.replica, parts is not None,
            )  # fmt: skip
            try:
                hook(stats)
            except Exception:
                logger.exception("on_batch hook of %s failed", self._label)

    def _set_limit(self, limit: int) -> None:
        """Run up to ``limit`` batches at once per replica from now on: new slots are free at once, slots above a
        lowered limit go now if free, else when their batch ends (``_on_done``)."""
        old, self._limit = self._limit, limit
        if limit > old:
            self._idle.extend(index for _ in range(limit - old) for index in range(len(self._replicas)))
            return
        free = [0] * len(self._replicas)
        kept: deque[int] = deque()
        for index in self._idle:
            if self._running[index] + free[index] < limit:
                kept.append(index)
                free[index] += 1
        self._idle = kept

    def _deliver(self, batch: _Batch, parts: list[dict[str, np.ndarray] | ServingError]) -> None:
        for (req, start, stop), out in zip(batch.slices, parts, strict=True):
            try:
                self._deliver_one(req, start, stop, out)
            except Exception as exc:  # a sink's defect: the batch's other callers still get their answers
                logger.exception("delivering the outputs of a request to %s failed", self._label)
                with contextlib.suppress(Exception):
                    if not req.sink.done():
                        req.sink.set_exception(
                            ServingError(ErrorCode.INTERNAL, f"delivering its outputs failed: {exc!r}")
                        )

    def _deliver_one(self, req: _Request, start: int, stop: int, out: dict[str, np.ndarray] | ServingError) -> None:
        sink = req.sink
        if sink.done():  # cancelled, or failed through another piece
            return
        if isinstance(out, ServingError):  # refused when run alone: this request's own error
            self._fail(req, out)
            return
        if stop - start == req.n:
            sink.set_result(out)
            return
        span = self.last_compute
        if req.parts is None:
            req.parts = []
            req.first_span = span  # set with its first piece's outputs (split requests only)
        elif span[0] < req.first_span[0]:
            req.first_span = span
        req.parts.append((start, out))
        req.rows_done += stop - start
        if req.rows_done == req.n:
            try:
                result = _assemble(req.parts)
            except Exception as exc:  # pieces disagree on output names or shapes
                self._fail(req, ServingError(ErrorCode.INTERNAL, f"cannot reassemble split request: {exc}"))
            else:
                # its sink reads the model calls' span: from its first piece's start to its last piece's end
                last = self.last_compute
                first = req.first_span
                self.last_compute = (first[0], first[1], last[2], last[3])
                try:
                    sink.set_result(result)
                finally:
                    self.last_compute = last
            req.parts = None

    def _fail_batch(self, batch: _Batch, error: BaseException | None) -> None:
        if isinstance(error, ServingError):
            code, message = error.code, error.message
        else:
            code, message = ErrorCode.INTERNAL, (str(error) or type(error).__name__)
            logger.error(
                "%s failed on a batch of %d rows (replica %d)",
                self._label,
                batch.rows,
                batch.replica,
                exc_info=error,
            )
        for req, _, _ in batch.slices:
            # One exception object per request: tracebacks grow as each awaiting task re-raises it.
            exc = ServingError(code, message)
            exc.__cause__ = error
            self._fail(req, exc)

    def _fail(self, req: _Request, exc: ServingError) -> None:
        if not req.dead:
            req.dead = True
            self._leave(req)
        if not req.sink.done():
            req.sink.set_exception(exc)

    def _abandon(self, req: _Request) -> None:
        """The caller went away: drop whatever of its request has not started."""
        if req.dead:
            return
        req.dead = True
        self._leave(req)
        if self._queued == 0:
            self._queues.clear()  # only dead requests are left; free their arrays now
        if self._closing:
            self._check_drained()

    def _leave(self, req: _Request) -> None:
        """A dead request's rows that were still queued are no longer."""
        if req.next_row < req.n:
            self._queued -= req.n - req.next_row
            req.next_row = req.n
            self._waiting[req.rank >> 1] -= 1

    def _check_drained(self) -> None:
        if self._queued == 0 and self._in_flight == 0 and self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    # ---- queue policy timeouts (event loop thread only)

    def _push_expiry(self, when: float, kind: int, req: _Request) -> None:
        heap = self._expiry
        if len(heap) >= self._compact_at:  # entries of requests that left: drop them (amortised O(1) per push)
            heap[:] = [entry for entry in heap if _pending(entry)]
            heapq.heapify(heap)
            self._compact_at = max(_COMPACT_MIN, 2 * len(heap))
        heapq.heappush(heap, (when, req.seq, kind, weakref.ref(req)))
        if when < self._expiry_when:
            self._arm_expiry()

    def _arm_expiry(self) -> None:
        if self._expiry_timer is not None:
            self._expiry_timer.cancel()
            self._expiry_timer = None
        heap = self._expiry
        while heap and not _pending(heap[0]):
            heapq.heappop(heap)
        if not heap:
            self._expiry_when = math.inf
            return
        assert self._loop is not None
        self._expiry_when = when = heap[0][0]
        self._expiry_timer = self._loop.call_later(max(0.0, when - self._clock()), self._on_expiry, when)

    def _on_expiry(self, when: float) -> None:
        # As with the hold timer, the timer is the authority that `when` has come (a test clock need not move).
        self._expiry_timer = None
        now = self._clock()
        limit = max(when, now)
        heap = self._expiry
        while heap and heap[0][0] <= limit:
            entry = heapq.heappop(heap)
            req = entry[3]()
            if not _pending(entry):
                continue
            assert req is not None
            queue = self._queues.get((req.rank, req.key) if self._ranked else req.key)
            if queue is None:
                continue
            try:
                queue.remove(req)
            except ValueError:
                continue
            if entry[2] == _TIMEOUT:
                self._expire(req, now)
            else:
                waited = now - req.arrival
                message = f"deadline exceeded after {waited:.3f}s waiting for the model"
                self._fail(req, ServingError(ErrorCode.DEADLINE_EXCEEDED, message))
        self._arm_expiry()
        if self._closing:
            self._check_drained()

    def _expire(self, req: _Request, now: float) -> None:
        """``req`` (taken off its queue, none of it started) reached its queue policy's timeout."""
        policy = self._policies[req.rank >> 1]
        hook = self.on_timeout
        if hook is not None:
            try:
                hook(policy.timeout_action)
            except Exception:
                logger.exception("on_timeout hook of %s failed", self._label)
        if policy.delays:
            req.rank |= 1
            req.expires = math.inf
            key = (req.rank, req.key)
            queue = self._queues.get(key)
            if queue is None:
                queue = self._queues[key] = deque()
            queue.append(req)
            return
        waited, limit = 1e3 * (now - req.arrival), 1e3 * (req.expires - req.arrival)
        if req.own_timeout:  # the caller's own budget ran out: as a deadline would
            error = ServingError(
                ErrorCode.DEADLINE_EXCEEDED,
                f"{self._label}: request timed out after {waited:.1f} ms in the queue (its timeout: {limit:.1f} ms)",
            )
        else:  # the server shed it, as Triton does (UNAVAILABLE): retryable, another replica may be less busy
            error = ServingError(
                ErrorCode.UNAVAILABLE,
                f"{self._label}: request waited {waited:.1f} ms in the queue, past its queue policy's timeout "
                f"({limit:.1f} ms); the model is busy, retry later",
                shed=True,
            )
        self._fail(req, error)

    def _clear_expiry(self) -> None:
        if self._expiry_timer is not None:
            self._expiry_timer.cancel()
            self._expiry_timer = None
        self._expiry.clear()
        self._expiry_when = math.inf


_COMPACT_MIN = 1024  # queue timeout heap entries before the first sweep of stale ones


_TIMEOUT, _DEADLINE = 0, 1  # what an expiry heap entry watches: a queue policy's timeout, a request's deadline


def _pending(entry: tuple[float, int, int, weakref.ref[_Request]]) -> bool:
    """Whether an expiry heap entry still matters: its request is queued and not failed, and for a queue
    timeout, none of it started and it was not delayed already."""
    req = entry[3]()
    if req is None or req.dead:
        return False
    if entry[2] == _TIMEOUT:
        return req.next_row == 0 and req.expires != math.inf
    return req.next_row < req.n
