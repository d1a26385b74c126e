"""errors.reason / first_line: the cause of a TensorFlow error, not its preamble (no TensorFlow needed).

The messages are TensorFlow 2.21's own, copied verbatim; tests/integration/test_tfs_fixes_server.py produces them
live and checks the same."""

from __future__ import annotations

import pytest

from kerve.server.errors import MAX_REASON_CHARS, first_line, reason

DTYPE_CAUSE = "Name: <unknown>, Key: x, Index: 0.  Data types don't match. Data type: int64 but expected type: float"

FUNCTION_PATH = (  # a tf.function (the function call path) parsing an int64 feature declared float
    "Graph execution error:\n\nDetected at node ParseExample/ParseExampleV2 defined at (most recent call last):\n"
    '  File "/tmp/m.py", line 9, in <module>\n\n  File "/tmp/m.py", line 7, in f\n\n'
    f"{DTYPE_CAUSE}\n\t [[{{{{node ParseExample/ParseExampleV2}}}}]] [Op:__inference_f_11]"
)
SESSION_PATH = (  # the same through Session.make_callable (the session call path)
    "Graph execution error:\n\nDetected at node 'ParseExample/ParseExampleV2' defined at (most recent call last):\n"
    '    File "/tmp/m.py", line 16, in <module>\n'
    "Node: 'ParseExample/ParseExampleV2'\n"
    f"{DTYPE_CAUSE}\n\t [[{{{{node ParseExample/ParseExampleV2}}}}]]"
)
RESHAPE = (
    "Graph execution error:\n\nDetected at node Reshape defined at (most recent call last):\n"
    '  File "/tmp/m.py", line 17, in <module>\n\n  File "/tmp/m.py", line 15, in k\n\n'
    "Input to reshape is a tensor with 3 values, but the requested shape requires a multiple of 2\n"
    "\t [[{{node Reshape}}]] [Op:__inference_k_24]"
)
EAGER_OP = (
    "{{function_node __wrapped__MatMul_device_/job:localhost/replica:0/task:0/device:CPU:0}} "
    "Matrix size-incompatible: In[0]: [2,3], In[1]: [4,5] [Op:MatMul] name: "
)
USER_CODE = (  # a tf.function that fails while tracing
    'in user code:\n\n    File "/tmp/m.py", line 9, in h  *\n        def h(a, b): return tf.matmul(a, b)\n\n'
    "    ValueError: Dimensions must be equal, but are 3 and 4 with input shapes: [2,3], [4,5].\n"
)
ROOT_ERRORS = (
    "2 root error(s) found.\n  (0) INVALID_ARGUMENT: indices[0] = 7 is not in [0, 5)\n"
    "\t [[{{node embedding_lookup}}]]\n  (1) INVALID_ARGUMENT: indices[0] = 7 is not in [0, 5)\n"
    "0 successful operations."
)
SAVED_FUNCTION = (  # a loaded SavedModel's signature (tf.saved_model.load): no frames to show
    "Graph execution error:\n\nDetected at node ParseExample/ParseExampleV2 defined at (most recent call last):\n"
    "<stack traces unavailable>\n"
    f"{DTYPE_CAUSE}\n\t [[{{{{node ParseExample/ParseExampleV2}}}}]] [Op:__inference_signature_wrapper_classify_212]"
)
SESSION_CALLABLE = (  # the session path's C++ callable (Session::RunCallable) names the function twice
    "{{function_node __inference_signature_wrapper_classify_65}} "
    f"{{{{function_node __inference_signature_wrapper_classify_65}}}} {DTYPE_CAUSE}\n"
    "\t [[{{function_node __inference_classify_53}}{{node ParseExample/ParseExampleV2}}]]\n"
    "\t [[StatefulPartitionedCall]]"
)
NESTED_NODE = (
    f"{DTYPE_CAUSE}\n\t [[{{{{function_node __inference_classify_203}}}}{{{{node ParseExample/ParseExampleV2}}}}]]"
)


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (FUNCTION_PATH, DTYPE_CAUSE),
        (SESSION_PATH, DTYPE_CAUSE),
        (SAVED_FUNCTION, DTYPE_CAUSE),
        (SESSION_CALLABLE, DTYPE_CAUSE),
        (NESTED_NODE, DTYPE_CAUSE),
        (RESHAPE, "Input to reshape is a tensor with 3 values, but the requested shape requires a multiple of 2"),
        (EAGER_OP, "Matrix size-incompatible: In[0]: [2,3], In[1]: [4,5]"),
        (USER_CODE, "ValueError: Dimensions must be equal, but are 3 and 4 with input shapes: [2,3], [4,5]."),
        (ROOT_ERRORS, "INVALID_ARGUMENT: indices[0] = 7 is not in [0, 5)"),
        ("plain message\nsecond line", "plain message"),
        ("  \n\nafter blanks  \n", "after blanks"),
    ],
    ids=[
        "function",
        "session",
        "saved-function",
        "session-callable",
        "nested-node",
        "reshape",
        "eager-op",
        "user-code",
        "root-errors",
        "plain",
        "blanks",
    ],
)
def test_reason_is_the_first_line_that_says_what_went_wrong(message: str, expected: str) -> None:
    assert reason(message) == expected


def test_a_message_that_is_all_preamble_keeps_its_first_line() -> None:
    assert reason("Graph execution error:\n\n") == "Graph execution error:"
    assert reason("Graph execution error:\n\nDetected at node X defined at (most recent call last):\n") == (
        "Graph execution error:"
    )
    assert reason("") == "" and reason("\n \n") == ""


def test_a_long_reason_is_bounded() -> None:
    long = "Graph execution error:\n\n" + "x" * 5000 + "\n\t [[{{node X}}]]"
    got = reason(long)
    assert len(got) == MAX_REASON_CHARS and got.endswith("\u2026") and got.startswith("xxx")
    assert reason("y" * 50, limit=10) == "y" * 9 + "\u2026"


class _TFError(Exception):
    """Like tf.errors.OpError: the message in a `message` attribute, str() perhaps decorated."""

    def __init__(self, message: str) -> None:
        super().__init__(f"decorated: {message}")
        self.message = message


def test_first_line_reads_an_exceptions_message() -> None:
    assert first_line(_TFError(FUNCTION_PATH)) == DTYPE_CAUSE
    assert first_line(ValueError(SESSION_PATH)) == DTYPE_CAUSE
    assert first_line(ValueError()) == ""
