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
starts its own. Its stdin closing (the parent exiting, even by SIGKILL) ends it.
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
from typing import IO

#: Seconds one comparison (both parses and the verify) may take.
DEADLINE_S = 5.0
#: Seconds a fresh child may take to import math-verify and answer a first check.
STARTUP_S = 120.0
#: Longer answers are not parsed: no real final answer is this long, and parse time grows with length.
MAX_CHARS = 1000

# The three answers a child gives; `None` from `compare` means it gave none in time.
EQUAL, DIFFERENT, UNPARSED = "equal", "different", "unparsed"

_CHILD_CODE = "from qrdistill.tasks.mathcheck import serve; serve()"


def _as_latex(s: str) -> str:
    s = s.strip()
    return s if s.startswith("$") or s.startswith("\\boxed") else f"${s}$"


def serve() -> None:
    """The child's loop: one JSON `[pred, gold]` per stdin line, one verdict word per stdout line."""
    import logging

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
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD_CODE],
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
            raise RuntimeError(
                f"the math-verify worker process did not start ({line or 'it exited'}; its error output, if any, "
                f"is above): is math-verify installed for {sys.executable}?"
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
            except RuntimeError:
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
    global _child, _lock
    _child = None
    _lock = threading.Lock()


def _close() -> None:
    if _child is not None:
        _child.kill()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)
atexit.register(_close)
