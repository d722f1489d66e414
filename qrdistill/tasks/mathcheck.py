"""math-verify equivalence with a deadline, in a child process.

math-verify's own timeouts use SIGALRM, which only works on the main thread,
and even there does not stop C code: `9^{9^{9^{9}}}` makes sympy compute a
number with hundreds of millions of digits and no signal gets through. So
every comparison runs in one persistent child process (`python -c`, which
neither re-runs the caller's `__main__` as multiprocessing's spawn does, nor
inherits its threads as fork does). The caller waits at most `DEADLINE_S`
for a verdict; past that the child is killed and the answer is
unverifiable, and a fresh child starts at once (about a second to import
math-verify, which is not counted in any check's deadline: a cold start
under load must not fail a check).

One child per process, used by one caller at a time; a process that forks
starts its own. The child cannot outlive the process that started it, even one
killed by SIGKILL in the middle of a comparison: on Linux it asks the kernel
(`PR_SET_PDEATHSIG`) for SIGKILL when its parent dies, and it is started from one
long-lived thread, since the kernel ties that signal to the thread that started
it; elsewhere it ends when its stdin closes, which it notices between
comparisons only. Its address space is capped (`MEMORY_LIMIT_BYTES`, where the
platform allows), so a runaway big integer fails with MemoryError (no verdict)
instead of taking the machine's memory.
"""

from __future__ import annotations

import atexit
import json
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Any

from qrdistill.errors import QRDistillError

#: Seconds one comparison (both parses and the verify) may take.
DEADLINE_S = 5.0
#: Seconds a fresh child may take to import math-verify and answer a first check.
STARTUP_S = 120.0
#: Longer answers are not parsed: no real final answer is this long, and parse time grows with length.
MAX_CHARS = 1000
#: The child's address-space limit (RLIMIT_AS): math-verify and sympy need a few hundred MB.
MEMORY_LIMIT_BYTES = 2 * 1024**3

# The three answers a child gives; `None` from `compare` means it gave none in time.
EQUAL, DIFFERENT, UNPARSED = "equal", "different", "unparsed"

_CHILD_CODE = "import sys; from qrdistill.tasks.mathcheck import serve; serve(int(sys.argv[1]))"


def _as_latex(s: str) -> str:
    s = s.strip()
    return s if s.startswith("$") or s.startswith("\\boxed") else f"${s}$"


def _die_with_parent(parent_pid: int) -> None:
    """SIGKILL for this process when its parent dies (Linux), and an address-space cap."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    # The parent may have died before the request above: then nobody is left to signal.
    if os.getppid() != parent_pid:
        os._exit(1)
    try:
        import resource

        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        cap = MEMORY_LIMIT_BYTES if hard == resource.RLIM_INFINITY else min(hard, MEMORY_LIMIT_BYTES)
        resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    except (ImportError, ValueError, OSError):
        pass  # no resource module (Windows), or a platform that refuses the limit


def serve(parent_pid: int | None = None) -> None:
    """The child's loop: one JSON `[pred, gold]` per stdin line, one verdict word per stdout line."""
    import logging

    if parent_pid is not None:
        _die_with_parent(parent_pid)

    # Anything printed (by us, sympy or antlr) must not reach the protocol stream.
    proto: IO[str] = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="ascii")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    # math-verify warns on every call that its timeouts are off, and logs each answer it cannot read.
    logging.disable(logging.CRITICAL)
    from math_verify import parse, verify

    verify(parse("$1$", parsing_timeout=None), parse("$1$", parsing_timeout=None), timeout_seconds=None)
    proto.write("ready\n")
    proto.flush()
    for line in sys.stdin:
        pred, gold = json.loads(line)
        try:
            gold_parsed = parse(_as_latex(gold), parsing_timeout=None)
            pred_parsed = parse(_as_latex(pred), parsing_timeout=None)
            if not gold_parsed or not pred_parsed:
                verdict = UNPARSED
            else:
                verdict = EQUAL if verify(gold_parsed, pred_parsed, timeout_seconds=None) else DIFFERENT
        except Exception as e:  # noqa: BLE001  (any failure inside math-verify means "no verdict")
            verdict = f"error: {type(e).__name__}"
        proto.write(verdict + "\n")
        proto.flush()


class _Child:
    def __init__(self) -> None:
        import qrdistill

        # cwd: where this qrdistill is imported from, so the child imports the same copy, and a
        # `math.py` in the caller's working directory cannot shadow the standard library.
        root = Path(qrdistill.__file__).resolve().parent.parent
        self.proc = _spawner.popen(
            [sys.executable, "-c", _CHILD_CODE, str(os.getpid())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=root,
            text=True,
            encoding="ascii",
            bufsize=1,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, name="qrdistill-mathcheck", daemon=True).start()
        self.ready = False

    def _pump(self) -> None:
        # A reader thread, because a pipe read cannot time out portably.
        assert self.proc.stdout is not None
        with self.proc.stdout:
            for line in self.proc.stdout:
                self.lines.put(line.strip())
        self.lines.put(None)

    def wait_ready(self) -> None:
        try:
            line = self.lines.get(timeout=STARTUP_S)
        except queue.Empty:
            line = "(no answer in time)"
        if line != "ready":
            self.kill()
            raise QRDistillError(
                f"the math-verify worker process did not start ({line or 'it exited'}; its error output, if any, "
                f"is above); math answers need math-verify: install it with `{sys.executable} -m pip install "
                f"'math-verify[antlr4_13_2]'` (or `pip install -e .` in a qrdistill checkout)"
            )
        self.ready = True

    def ask(self, pred: str, gold: str) -> str | None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps([pred, gold]) + "\n")
            self.proc.stdin.flush()
            return self.lines.get(timeout=DEADLINE_S)
        except (OSError, queue.Empty):
            return None

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        # stdout is the reader thread's: it reads to the end a dead child leaves, then closes it.
        if self.proc.stdin is not None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass  # a write buffered for the dead child cannot be flushed


class _Spawner:
    """Starts processes from one thread that lives as long as this process: PR_SET_PDEATHSIG fires
    when the *thread* that started the child exits, so a child started by a short-lived caller
    thread (a pool worker) would be killed with it."""

    def __init__(self) -> None:
        self._requests: queue.Queue[tuple[list[str], dict[str, Any], queue.Queue[Any]]] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def popen(self, argv: list[str], **kwargs: Any) -> subprocess.Popen[str]:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._serve, name="qrdistill-mathcheck-spawner", daemon=True
                )
                self._thread.start()
        box: queue.Queue[Any] = queue.Queue(maxsize=1)
        self._requests.put((argv, kwargs, box))
        ok, got = box.get()
        if not ok:
            raise got
        return got

    def _serve(self) -> None:
        while True:
            argv, kwargs, box = self._requests.get()
            try:
                box.put((True, subprocess.Popen(argv, **kwargs)))
            except BaseException as e:  # noqa: BLE001  (re-raised in the caller's thread)
                box.put((False, e))


_spawner = _Spawner()
_lock = threading.Lock()
_child: _Child | None = None


def compare(pred: str, gold: str) -> str | None:
    """EQUAL, DIFFERENT or UNPARSED (math-verify could not read one side), or None when no verdict
    came within `DEADLINE_S` (or the answer is longer than `MAX_CHARS`, or math-verify failed on it)."""
    global _child
    if len(pred) > MAX_CHARS or len(gold) > MAX_CHARS:
        return None
    with _lock:
        if _child is None:
            _child = _Child()
        if not _child.ready:
            try:
                _child.wait_ready()
            except QRDistillError:
                _child = None
                raise
        got = _child.ask(pred, gold)
        if got is None:
            # Killed, not left running: a runaway comparison would hold a CPU (and memory) until exit.
            # Its successor starts now, so it is warm by the next check.
            _child.kill()
            _child = _Child()
            return None
    return got if got in (EQUAL, DIFFERENT, UNPARSED) else None


def _forget_after_fork() -> None:
    # The parent's child and lock belong to the parent; this process starts its own when it needs one.
    global _child, _lock, _spawner
    _child = None
    _lock = threading.Lock()
    _spawner = _Spawner()


def _close() -> None:
    if _child is not None:
        _child.kill()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)
atexit.register(_close)
