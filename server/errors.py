"""Errors raised inside the server, independent of any wire protocol.

Protocol adapters map ErrorCode to their own status (gRPC codes for V2 and TF Serving); the batcher, the
model manager and the models raise ServingError and never import grpc.
"""

from __future__ import annotations

import enum
import re


class ErrorCode(enum.Enum):
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    UNAVAILABLE = "UNAVAILABLE"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    CANCELLED = "CANCELLED"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    UNIMPLEMENTED = "UNIMPLEMENTED"
    INTERNAL = "INTERNAL"


class ServingError(Exception):
    """A request failed with a status the client can act on."""

    def __init__(self, code: ErrorCode, message: str, *, shed: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.shed = shed
        """The scheduler refused or dropped the request to shed load (a queue policy's timeout), whatever the
        code says: Triton counts it as REJECTED."""

    def __repr__(self) -> str:
        return f"ServingError({self.code.value}, {self.message!r})"


MAX_REASON_CHARS = 500
"""A reason longer than this is cut: it goes into a gRPC status message and a log line, not a report."""

_PREAMBLES = ("Graph execution error:", "in user code:")
_PREAMBLE_PREFIXES = ("Detected at node", "Defined at", "Node: ")
_ENDS = ("Function call stack:", "Original stack trace for", "During handling of the above exception")
# "\t [[{{node X}}]] [Op:__inference_f_11]", "[[{{function_node __inference_f_2}}{{node X}}]]"
_NODE_MARKER = re.compile(r"\s*\[\[\{\{(?:function_)?node .*$")
_OP_SUFFIX = re.compile(r"\s*\[Op:[^\]]*\](?:\s+name:.*)?$")  # eager ops: "... [Op:MatMul] name: "
# eager ops: "{{function_node __wrapped__X}} ..."; a session's callable repeats it: "{{function_node F}} {{...F}} ..."
_FUNCTION_NODE = re.compile(r"^(?:\{\{function_node [^}]*\}\}\s*)+")
_ROOT_ERRORS = re.compile(r"^\d+ root error\(s\) found\.?$")
_PLACEHOLDER = re.compile(r"^<[^<>]*>$")  # "<stack traces unavailable>" where the frames would be
_ROOT_INDEX = re.compile(r"^\(\d+\)\s+")  # "(0) INVALID_ARGUMENT: ..." of a multi-error message


def _meaningful(line: str) -> str:
    """A line with TensorFlow's node and op markers cut off: what is left says what went wrong ('' if nothing)."""
    line = _FUNCTION_NODE.sub("", _OP_SUFFIX.sub("", _NODE_MARKER.sub("", line.strip())))
    return _ROOT_INDEX.sub("", line).strip()


def _bounded(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "\u2026"


def reason(text: str, limit: int = MAX_REASON_CHARS) -> str:
    """The first line of an error message that says what went wrong, at most `limit` characters.

    TensorFlow 2's errors from a graph or a tf.function (both call paths) open with "Graph execution error:", then
    "Detected at node ... defined at (most recent call last):" and Python stack frames, and only then the cause
    ("Name: <unknown>, Key: x, Index: 0.  Data types don't match. ..."), followed by "[[{{node X}}]]". A client
    that gets the first line alone learns nothing, so those preambles, frames (with the source lines under them),
    blank lines and node/op markers are skipped. A message with nothing else keeps its first line.
    """
    lines = text.strip().splitlines()
    frame_indent: int | None = None  # inside a stack frame: lines indented deeper are its source code
    for raw in lines:
        stripped = raw.strip()
        indent = len(raw) - len(raw.lstrip())
        if frame_indent is not None and stripped and indent > frame_indent:
            continue  # the source line under a 'File "...", line N' frame
        frame_indent = None
        if not stripped or stripped in _PREAMBLES or stripped.startswith(_PREAMBLE_PREFIXES):
            continue
        if stripped.startswith(_ENDS):
            break
        if stripped.startswith('File "'):
            frame_indent = indent
            continue
        if _ROOT_ERRORS.match(stripped) or _PLACEHOLDER.match(stripped):
            continue
        meaningful = _meaningful(stripped)
        if meaningful:
            return _bounded(meaningful, limit)
    return _bounded(lines[0].strip(), limit) if lines else ""


def first_line(exc: BaseException) -> str:
    """What went wrong, in one line ('' if the exception has no message): `reason` of its message, since
    TensorFlow errors bury the cause under a preamble and stack frames, and carry pages after it."""
    return reason(getattr(exc, "message", None) or str(exc))


def invalid(message: str) -> ServingError:
    return ServingError(ErrorCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> ServingError:
    return ServingError(ErrorCode.NOT_FOUND, message)


def unavailable(message: str) -> ServingError:
    return ServingError(ErrorCode.UNAVAILABLE, message)
