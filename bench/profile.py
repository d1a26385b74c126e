"""Where the server's time goes: py-spy attached to a server process during a measurement window.

`PySpy` records collapsed ("raw") stacks with thread ids (optionally native frames); `summarize` turns them into the top
functions by self and inclusive samples, the split by thread, and a split by component (grpc, protobuf, asyncio,
kerve.server, TensorFlow, numpy, other), which is what the benchmark doc reports.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")

# Checked in order against "function (file)"; the first match names the component.
COMPONENTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("kerve.server", ("kerve/server/", "/server/", "kerve/codecs", "kerve/protos")),
    ("tensorflow", ("tensorflow", "libtensorflow", "_pywrap_tf", "tf2xla", "eigen", "onednn", "mkl", "keras")),
    ("protobuf", ("protobuf", "upb", "google/_upb", "message.py")),
    ("grpc", ("grpc", "cygrpc", "_cython", "libgrpc", "absl", "ev_epoll", "chttp2", "completion_queue")),
    ("asyncio", ("asyncio", "selectors", "uvloop")),
    ("numpy", ("numpy",)),
    ("concurrent/threading", ("concurrent/futures", "threading.py", "queue.py")),
    ("libc/kernel", ("libc", "libpthread", "syscall", "epoll_wait", "__poll", "sendmsg", "recvmsg", "futex")),
)


# With --native, py-spy reports threads blocked in C as busy; these leaves (or a bare libc/syscall leaf under a
# waiting frame) mark a sample as idle, so `summarize(drop_idle=True)` keeps only where the CPU goes.
IDLE_LEAVES = (
    "epoll_wait", "epoll_pwait", "poll ", "ppoll", "select ", "pselect", "pthread_cond_wait", "pthread_cond_timedwait",
    "sem_wait", "sem_timedwait", "sem_clockwait", "futex", "nanosleep", "accept",
)  # fmt: skip
_WAITING = ("wait", "acquire_lock", "simplequeue_get", "semaphore", "condvar", "sleep")


def is_idle(frames: tuple[str, ...]) -> bool:
    if not frames:
        return True
    leaf = frames[-1].lower()
    if any(leaf.startswith(name) for name in IDLE_LEAVES):
        return True
    bare = leaf.startswith(("0x", "syscall")) or "(libc.so" in leaf
    return bare and any(w in f.lower() for f in frames[-6:-1] for w in _WAITING)


def find_py_spy() -> str | None:
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


class PySpy:
    """`py-spy record` against one pid for a fixed duration, in raw (collapsed stacks) format."""

    def __init__(self, exe: str, pid: int, seconds: float, out: Path, rate: int = 200, native: bool = False) -> None:
        self.out = out
        self.rate = rate
        self.cmd = [
            exe, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))), "--rate", str(rate),
            "--format", "raw", "--output", str(out), "--threads",
        ]  # fmt: skip
        # --native unwinds C frames but needs the process paused per sample (no --nonblocking) and counts threads
        # blocked in C (epoll_wait, lock waits) as busy; without it py-spy drops idle threads, so the samples are
        # where the CPU goes.
        self.cmd.append("--native" if native else "--nonblocking")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def wait(self, timeout: float = 60.0) -> str:
        """Wait for the recording to finish; returns py-spy's stderr (empty when it went well)."""
        if self.proc is None:
            return "py-spy was not started"
        try:
            _, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return "" if self.proc.returncode == 0 else err.decode(errors="replace")[-2000:]


def parse(text: str) -> Counter[tuple[str, ...]]:
    """Collapsed stacks "frame;frame;... count" (root first) -> Counter of stacks."""
    stacks: Counter[tuple[str, ...]] = Counter()
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks[tuple(stack.split(";"))] += int(count)
    return stacks


def component(frame: str) -> str:
    lowered = frame.lower()
    for name, needles in COMPONENTS:
        if any(n in lowered for n in needles):
            return name
    return "other"


def _component_of(thread: str, frames: tuple[str, ...]) -> str:
    """The component a sample's CPU time belongs to.

    Without --native, C and Cython code shows as self time of the Python frame that called it: on the event loop
    that is `Handle._run` (grpc.aio's Cython callbacks and C-implemented asyncio tasks), and grpc's completion-queue
    poller thread shows as `Thread.run`; both are named for what they are. Otherwise the innermost frame that is
    not generic libc decides.
    """
    if "_poll_wrapper" in thread:
        return "grpc poller thread"
    leaf = frames[-1]
    if leaf.startswith("Handle._run ") or leaf.startswith("task_step"):
        return "event-loop C/Cython callbacks (grpc.aio, asyncio)"
    owner = next((component(f) for f in reversed(frames) if component(f) not in ("libc/kernel", "other")), None)
    return owner or component(leaf)


_ENTRY_FILES = ("server/app.py", "kerve/cli.py", "kerve/__main__.py")  # wrap every stack of the main thread


def _file(frame: str) -> str:
    """The kerve source file of a frame (server/*.py, kerve/*.py), or "" for anything else."""
    match = _FRAME.match(frame)
    file = match["file"] if match else ""
    if not file.endswith(".py") or "site-packages" in file or file.endswith(_ENTRY_FILES):
        return ""
    for root in ("server/", "kerve/", "client/"):  # py-spy shortens paths to the package part
        if file.startswith(root) or f"/{root}" in file:
            return root + file.rsplit(root, 1)[1]
    return ""


def _short(frame: str) -> str:
    match = _FRAME.match(frame)
    if not match:
        return frame
    file = match["file"]
    return f"{match['func']} ({file.rsplit('site-packages/', 1)[-1]})"


def summarize(
    stacks: Counter[tuple[str, ...]],
    top: int = 15,
    seconds: float | None = None,
    rate: int | None = None,
    drop_idle: bool = False,
) -> dict[str, Any]:
    """Top functions, threads and components, in % of all samples (a sample is one busy thread at one tick).

    With `seconds` and `rate`, `busy_threads` estimates how many threads were busy on average (~ cores used).
    `drop_idle` drops samples of threads blocked in C (needed with --native, see IDLE_LEAVES).
    """
    idle = 0
    if drop_idle:
        kept: Counter[tuple[str, ...]] = Counter()
        for stack, count in stacks.items():
            frames = stack[1:] if stack and stack[0].startswith(("thread", "process")) else stack
            if is_idle(frames):
                idle += count
            else:
                kept[stack] += count
        stacks = kept
    total = sum(stacks.values())
    if not total:
        return {"samples": 0}
    self_counts: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    components: Counter[str] = Counter()
    by_file: Counter[str] = Counter()
    for stack, count in stacks.items():
        thread, frames = (stack[0], stack[1:]) if stack[0].startswith(("thread", "process")) else ("", stack)
        threads[thread or "?"] += count
        if not frames:
            continue
        leaf = _short(frames[-1])
        self_counts[leaf] += count
        components[_component_of(thread, frames)] += count
        for frame in {_short(f) for f in frames}:
            inclusive[frame] += count
        for file in {_file(f) for f in frames if _file(f)}:
            by_file[file] += count

    def pct(counter: Counter[str], n: int) -> list[list[Any]]:
        return [[name, round(100.0 * c / total, 1)] for name, c in counter.most_common(n)]

    return {
        "samples": total,
        **({"idle_samples_dropped": idle} if drop_idle else {}),
        **({"busy_threads": round(total / (seconds * rate), 2)} if seconds and rate else {}),
        "threads_pct": pct(threads, 10),
        "components_pct": pct(components, 10),
        "self_pct": pct(self_counts, top),
        "inclusive_pct": pct(inclusive, top),
        "kerve_files_inclusive_pct": pct(by_file, top),
    }


def format_summary(title: str, summary: dict[str, Any], top: int = 12) -> str:
    if not summary.get("samples"):
        return f"{title}: no samples"
    busy = f", {summary['busy_threads']} threads busy on average" if "busy_threads" in summary else ""
    lines = [f"{title}: {summary['samples']} samples{busy}"]
    lines.append("  by component: " + ", ".join(f"{n} {p}%" for n, p in summary["components_pct"]))
    lines.append("  by thread:    " + ", ".join(f"{n} {p}%" for n, p in summary["threads_pct"][:6]))
    lines.append("  top self:")
    lines += [f"    {p:5.1f}%  {n}" for n, p in summary["self_pct"][:top]]
    if summary.get("kerve_files_inclusive_pct"):
        files = summary["kerve_files_inclusive_pct"]
        lines.append("  kerve code, inclusive: " + ", ".join(f"{n} {p}%" for n, p in files))
    lines.append("  top inclusive:")
    lines += [f"    {p:5.1f}%  {n}" for n, p in summary["inclusive_pct"][:top]]
    return "\n".join(lines)
