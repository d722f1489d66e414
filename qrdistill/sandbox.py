"""Run a teacher's program in a sandbox and check what it prints (`filter.execute_programs`).

`run_program(code, limits)` is the pure core: the code runs in a fresh Python
interpreter (this one's `sys.executable`, isolated mode `-I -B`) in its own
session, with

- an empty environment: no inherited variable (so no API key) reaches it,
  only fixed locale/thread settings and HOME/TMPDIR pointing at its directory;
- a temporary working directory, deleted afterwards;
- kernel limits (`resource.setrlimit`): CPU time (RLIMIT_CPU), address space
  (RLIMIT_AS), the size of every file it writes including stdout and stderr
  (RLIMIT_FSIZE), processes and threads (RLIMIT_NPROC, set to the count its
  user already has plus a small headroom, since the limit is per user), no
  core dumps; and a wall-clock limit after which the parent kills its whole
  process group;
- where the kernel lets an unprivileged process create them (`isolation()`
  probes once per process), fresh user, network, PID and IPC namespaces: the
  program sees only a loopback interface that is down, so no connection can
  leave it, and its process is PID 1 of its own namespace, so when it (or the
  bootstrap that waits for it) dies the kernel kills every process it
  started. Without them ("hooks" isolation) only Landlock's TCP rule (below)
  and the Python-level hook keep it off the network. The namespaces do not
  touch the file system: there is no mount namespace;
- where the kernel offers Landlock (`landlock_abi()`, Linux 5.13+; it works
  as root and without namespaces), a Landlock ruleset applied to the program
  and everything it starts: no file may be executed, and writing, creating,
  truncating, deleting, renaming or linking files is allowed only under its
  directory and /dev/null. With ABI 4+ TCP bind/connect is refused, with
  ABI 6+ signals and abstract Unix sockets to processes outside. Landlock
  does not cover reads, metadata changes (chmod, chown, utime, xattrs) or
  executing a memfd (it is not a file on a path);
- on Linux x86_64 (`_seccomp_supported()`), a seccomp filter that fails with
  EPERM: execve/execveat, fork/vfork and clone without CLONE_THREAD (threads
  still start), memfd_create, the chmod, chown, utime and xattr families
  (inside the directory too), open_by_handle_at, io_uring and
  setrlimit/prlimit64; and every syscall of another ABI (i386, x32);
- a Python audit hook (`sys.addaudithook`), installed before the program's
  first line, that refuses: sockets and name lookups; starting processes
  (fork, exec, spawn, system, subprocess, and `_posixsubprocess.fork_exec`,
  which has no audit event of its own: it is replaced wherever it is bound,
  `subprocess._fork_exec` included, by a `functools.partial` of `sys.audit`
  that raises an event the hook refuses, and a fresh copy of the module, by
  import or `importlib`, is refused); `os.memfd_create` (replaced the same
  way); signals to other processes; raising its own limits; ctypes;
  changing directory; opening for writing, creating, renaming, deleting,
  chmod/chown/utime/xattr/chflags of files outside its directory, and
  SQLite databases outside it; reading outside its directory, the Python
  installation and a few system files (so other processes'
  `/proc/<pid>/environ` and secret files are out of reach).

How strong it is. The namespaces, Landlock, seccomp and rlimits are enforced
by the kernel. The audit hook is not: it runs in the same interpreter as the
program. Its state is kept out of the obvious reach (it reads no module
global, the replacements carry no `__globals__` or closure, gc introspection
is refused), but pure Python cannot hide everything: the `_imp` guards'
closures hold the real `_imp` functions, and the hook's path checks call
`os.path.realpath` and builtins that a program can monkeypatch; a C
extension calling libc skips it entirely. So code written to defeat the hook
can; it stops accidents and ordinary library calls, and records every
refusal it makes. Some writes raise no audit event at all (`os.mkfifo`,
`os.mknod`, SQLite's ATTACH DATABASE and VACUUM INTO). What protects what
against code that gets past the hook: with Landlock, the kernel refuses
every content write, create, delete, rename or link outside the directory
and every exec of a file; with seccomp (x86_64), also every exec and fork,
memfd_create, and chmod/chown/utime/xattr changes anywhere. Without Landlock
it writes wherever its user may (as root: anywhere); without seccomp it may
fork (RLIMIT_NPROC does not bind root), change metadata of files outside,
and run native code from a memfd. Reads outside are refused by the hook
only. This is a filter for teacher output written in good faith, not a
security boundary against a determined attacker (that needs a container or
VM: gVisor, Firecracker, E2B).

The filter stage calls `execute_programs`: it extracts the last fenced Python
block of each program-style path, runs it (results are kept in
`D/executions.sqlite`, keyed by the code, the limits, the isolation, the
Landlock ABI, whether seccomp is used and the Python version; a malformed row is
refused the same way; an unreadable or full cache file is a
one-line `QRDistillError` naming it, so a re-run executes only what is new), reads the last line
the program printed with the task's own answer check, and records a verdict
per path.

This module imports only the standard library at the top: the sandboxed
interpreter runs it as a script (`python -I -B sandbox.py SPEC`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

#: Part of the cache key: bump it when a change here could change an outcome.
SANDBOX_VERSION = 3
NAMESPACES = "namespaces"
HOOKS = "hooks"
#: A path's verdict: `run_program`'s status (ok, error, timeout, memory, refused) with "ok" read by the
#: answer check as pass or fail, or no_code.
VERDICTS = ("pass", "fail", "error", "timeout", "memory", "refused", "no_code")
#: RLIMIT_FSIZE: the most a program may write to stdout, stderr or any one file.
MAX_OUTPUT_BYTES = 1 << 20
#: Threads and processes a program may add to its user's count (the interpreter and the namespace's PID 1 are two).
PROCESS_HEADROOM = 8
#: Interpreter start-up and imports (sympy takes about a second) on top of the time limit, wall clock only.
STARTUP_ALLOWANCE_S = 2.0
TAIL_CHARS = 500
#: Tests turn this off to check that the kernel layer (Landlock) stands on its own.
_AUDIT_HOOK = True
#: A program that retries a refused call in a loop must not fill the report file.
MAX_REPORTED_REFUSALS = 20
EXECUTIONS_FILE = "executions.sqlite"

_CLONE_NEWIPC, _CLONE_NEWUSER, _CLONE_NEWPID, _CLONE_NEWNET = 0x08000000, 0x10000000, 0x20000000, 0x40000000
_PR_SET_PDEATHSIG = 1
_PR_SET_NO_NEW_PRIVS = 38
# Landlock (Linux 5.13+): the same syscall numbers on every architecture.
_LL_CREATE_RULESET, _LL_ADD_RULE, _LL_RESTRICT_SELF = 444, 445, 446
_LL_CREATE_RULESET_VERSION, _LL_RULE_PATH_BENEATH = 1, 1
_LL_EXECUTE, _LL_WRITE_FILE, _LL_REFER, _LL_TRUNCATE = 1 << 0, 1 << 1, 1 << 13, 1 << 14
# remove dir/file, make char/dir/reg/sock/fifo/block/sym
_LL_CHANGE_TREE = sum(1 << b for b in range(4, 13))
# Extension modules whose fresh copy would bring back a function the sandbox replaced (the hook and the
# `_imp` guard hold this set as a constant of their code, not as a global a program could rebind).
_GUARDED_MODULES = frozenset({"_posixsubprocess", "_imp", "posix"})
_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 22, 2
_AUDIT_ARCH_X86_64 = 0xC000003E
_SECCOMP_RET_ALLOW, _SECCOMP_RET_ERRNO = 0x7FFF0000, 0x00050000
_CLONE_THREAD = 0x00010000
# x86_64 syscalls the seccomp filter answers with EPERM: starting processes (execve, execveat, fork, vfork;
# clone without CLONE_THREAD is checked separately, clone3 gets ENOSYS so glibc falls back to clone),
# memfd_create/memfd_secret, metadata changes Landlock does not cover (chmod, chown, utime and xattr
# families), open_by_handle_at, io_uring (its operations bypass seccomp), setrlimit/prlimit64.
_SECCOMP_DENY_X86_64 = (
    (59, 322, 57, 58)
    + (319, 447)
    + (90, 91, 268, 452, 92, 93, 94, 260, 132, 235, 261, 280)
    + (188, 189, 190, 197, 198, 199, 463, 466)
    + (303, 304, 425, 426, 427, 160, 302)
)
_NR_CLONE, _NR_CLONE3 = 56, 435
# The last fenced block tagged python/py/python3 (or untagged): teachers often show a snippet before the final program.
_CODE_RE = re.compile(
    r"^[ \t]*```[ \t]*(python3?|py)?[ \t]*\n(.*?)^[ \t]*```", re.MULTILINE | re.DOTALL | re.IGNORECASE
)


@dataclass(frozen=True)
class Limits:
    time_s: float = 5.0
    memory_mb: int = 1024

    @property
    def cpu_s(self) -> int:
        return max(1, math.ceil(self.time_s))

    @property
    def wall_s(self) -> float:
        return self.time_s + STARTUP_ALLOWANCE_S


@dataclass(frozen=True)
class ExecutionResult:
    """How one program ran: `status` is ok, error, timeout, memory or refused; `stdout` holds at most
    MAX_OUTPUT_BYTES."""

    status: str
    reason: str
    stdout: str
    stderr_tail: str
    returncode: int | None
    seconds: float
    isolation: str
    #: False for outcomes that depend on the machine's load or on the sandbox itself failing
    #: (a wall-clock timeout, a failed namespace setup): a re-run tries those again.
    cacheable: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Any) -> ExecutionResult:
        """Rebuild a stored result; a ValueError (the cache reports it as unusable) for anything malformed."""
        text = ("reason", "stdout", "stderr_tail", "isolation")
        if not isinstance(d, dict) or set(d) != {"status", *text, "returncode", "seconds", "cacheable"}:
            raise ValueError(f"a stored result is not an execution record: {str(d)[:100]}")
        if d["status"] not in ("ok", "error", "timeout", "memory", "refused"):
            raise ValueError(f"a stored result has status {str(d['status'])[:40]!r}")
        rc, secs = d["returncode"], d["seconds"]
        if (
            not all(isinstance(d[k], str) for k in text)
            or not (rc is None or (isinstance(rc, int) and not isinstance(rc, bool)))
            or not (isinstance(secs, (int, float)) and not isinstance(secs, bool))
            or not isinstance(d["cacheable"], bool)
        ):
            raise ValueError(f"a stored result has a field of the wrong type: {str(d)[:100]}")
        return cls(**d)


# ------------------------------------------------------------------------------------------------ parent side


@functools.cache
def isolation() -> str:
    """NAMESPACES when this machine lets this user create user+network+PID namespaces, else HOOKS."""
    try:
        probe = subprocess.run(
            [sys.executable, "-I", "-B", __file__, "--probe"],
            env=_base_env("/"),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=30,
            cwd="/",
        )
    except (OSError, subprocess.SubprocessError):
        return HOOKS
    return NAMESPACES if probe.returncode == 0 else HOOKS


@functools.cache
def landlock_abi() -> int:
    """The Landlock ABI version this kernel offers (0: none), probed without restricting anything."""
    if not sys.platform.startswith("linux"):
        return 0
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        abi = libc.syscall(
            ctypes.c_long(_LL_CREATE_RULESET),
            None,
            ctypes.c_size_t(0),
            ctypes.c_uint32(_LL_CREATE_RULESET_VERSION),
        )
    except (OSError, AttributeError):
        return 0
    return max(0, int(abi))


def _seccomp_supported() -> bool:
    """Whether the sandbox installs its seccomp filter here (Linux on x86_64; the filter is written for
    that architecture's syscall numbers)."""
    import platform

    return sys.platform.startswith("linux") and platform.machine() == "x86_64"


def _base_env(box: str) -> dict[str, str]:
    # Nothing is inherited: the parent's environment may hold API keys.
    return {
        "LC_ALL": "C.UTF-8",
        "HOME": box,
        "TMPDIR": box,
        "MPLBACKEND": "Agg",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }


def _tasks_of_user(uid: int) -> int:
    """Threads (RLIMIT_NPROC counts threads) of processes whose real uid is `uid`."""
    n = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            status = Path(entry.path, "status").read_text()
        except OSError:
            continue  # exited meanwhile
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if int(fields.get("Uid", "-1").split()[0]) == uid:
            n += int(fields.get("Threads", "1"))
    return n


def run_program(code: str, limits: Limits | None = None) -> ExecutionResult:
    """Run `code` in the sandbox described in the module docstring and say how it went."""
    limits = limits or Limits()
    iso = isolation()
    started = time.monotonic()
    with (
        tempfile.TemporaryDirectory(prefix="qrdistill-sandbox-", ignore_cleanup_errors=True) as box,
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        tempfile.TemporaryFile() as rep,
    ):
        Path(box, "main.py").write_text(code, encoding="utf-8")
        spec = {
            "cpu_s": limits.cpu_s,
            "memory_bytes": limits.memory_mb << 20,
            "fsize_bytes": MAX_OUTPUT_BYTES,
            "nproc": _tasks_of_user(os.getuid()) + PROCESS_HEADROOM,
            "report_fd": rep.fileno(),
            "parent": os.getpid(),
            "namespaces": iso == NAMESPACES,
            "landlock": landlock_abi(),
            "seccomp": _seccomp_supported(),
            "audit_hook": _AUDIT_HOOK,
        }
        proc = subprocess.Popen(
            [sys.executable, "-I", "-B", __file__, json.dumps(spec)],
            cwd=box,
            env=_base_env(box),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            pass_fds=(rep.fileno(),),
            start_new_session=True,
        )
        timed_out = _wait_then_kill_group(proc, limits.wall_s)
        seconds = time.monotonic() - started
        stdout, stderr, report = (_read(f) for f in (out, err, rep))
    status, reason, cacheable = _classify(proc.returncode, timed_out, report.splitlines(), stderr, limits)
    return ExecutionResult(
        status, reason, stdout, stderr[-TAIL_CHARS:], proc.returncode, round(seconds, 3), iso, cacheable
    )


def _read(f: Any) -> str:
    f.seek(0)
    return f.read(MAX_OUTPUT_BYTES).decode("utf-8", errors="replace")


def _wait_then_kill_group(proc: subprocess.Popen, wall_s: float) -> bool:
    """Wait up to `wall_s` for `proc` to exit, then SIGKILL its process group; True if it ran out of time.

    The group is killed while its leader is still unreaped (waitid with WNOWAIT), so its id cannot have
    been reused by an unrelated process; that also ends anything the program left behind in its group.
    """
    deadline = time.monotonic() + wall_s
    delay = 0.001
    timed_out = False
    while os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        if time.monotonic() >= deadline:
            timed_out = True
            break
        time.sleep(delay)
        delay = min(delay * 2, 0.02)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    return timed_out


def _classify(
    rc: int | None, timed_out: bool, report: list[str], stderr: str, limits: Limits
) -> tuple[str, str, bool]:
    """(status, reason, cacheable) from the exit status, the bootstrap's report lines and stderr."""
    refusals = [line.removeprefix("refused ") for line in report if line.startswith("refused ")]
    setup = [line.removeprefix("setup ") for line in report if line.startswith("setup ")]
    last_err = next((line.strip() for line in reversed(stderr.splitlines()) if line.strip()), "")
    if setup:
        return "error", f"sandbox setup failed: {setup[0]}", False
    if refusals:
        at_least = "at least " if len(refusals) >= MAX_REPORTED_REFUSALS else ""
        more = f" (and {at_least}{len(refusals) - 1} more)" if len(refusals) > 1 else ""
        return "refused", f"refused {refusals[0]}{more}", True
    if timed_out:
        return "timeout", f"still running after the wall-clock limit ({limits.wall_s:g} s)", False
    if rc == -signal.SIGKILL:
        # Not the parent's kill (that is a timeout above): RLIMIT_CPU's hard limit sends SIGKILL.
        return "timeout", f"CPU time limit ({limits.cpu_s} s) reached", True
    if "memory" in report or last_err.startswith("MemoryError"):
        return "memory", f"memory limit ({limits.memory_mb} MB) reached", True
    if rc == 0:
        return "ok", "exited normally", True
    if rc is not None and rc < 0:
        return "error", f"killed by {signal.Signals(-rc).name}", True
    return "error", last_err or f"exit status {rc}", True


def extract_code(response: str) -> str | None:
    """The last fenced Python (or untagged) code block of a response, or None."""
    blocks = [m.group(2) for m in _CODE_RE.finditer(response)]
    return blocks[-1] if blocks and blocks[-1].strip() else None


def answer_check(stdout: str, row: dict[str, Any]) -> tuple[bool, str]:
    """Whether the last line the program printed is the row's gold answer, by the task's own check."""
    from qrdistill.errors import DataError
    from qrdistill.tasks import get_task
    from qrdistill.tasks.base import Record

    last = next((line.strip() for line in reversed(stdout.splitlines()) if line.strip()), None)
    if last is None:
        return False, "printed nothing"
    if "answer" not in row:
        raise DataError(
            f"filter.execute_programs: path {row['qid']} has no gold `answer` to compare the program's "
            f"output with; run `qrdistill generate` again to rewrite paths.jsonl"
        )
    record = Record(
        id=row["qid"].split("/", 1)[-1],
        question=row.get("question") or "",
        answer=str(row["answer"]),
        choices=list(row.get("choices") or []),
        meta=dict((row.get("meta") or {}).get("record") or {}),
    )
    gold = row.get("gold_text") or record.answer
    shown = last[:200]
    if get_task(row["task"]).is_correct(last, record):
        return True, f"printed {shown!r}, the gold answer {gold!r}"
    return False, f"printed {shown!r}, not the gold answer {gold!r}"


def _cache_key(code: str, limits: Limits, iso: str) -> str:
    blob = json.dumps(
        {
            "version": SANDBOX_VERSION,
            "code": code,
            "limits": asdict(limits),
            "isolation": iso,
            "landlock": landlock_abi(),
            "seccomp": _seccomp_supported(),
            "python": sys.version,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


class ExecutionCache:
    """Results of programs already run, in SQLite: each is committed when it finishes, so a killed filter
    loses only the programs that were running."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._db = sqlite3.connect(str(path), timeout=30.0, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS executions (key TEXT PRIMARY KEY, result TEXT NOT NULL, "
                "created REAL NOT NULL)"
            )
        except sqlite3.Error as e:
            raise self._unreadable(e) from None

    def _unreadable(self, e: Exception) -> Exception:
        from qrdistill.errors import DataError

        return DataError(
            f"{self.path}: not a usable execution cache ({e}); delete it and every program is run again"
        )

    def get(self, keys: list[str]) -> dict[str, ExecutionResult]:
        out = {}
        try:
            for i in range(0, len(keys), 500):
                chunk = keys[i : i + 500]
                q = f"SELECT key, result FROM executions WHERE key IN ({','.join('?' * len(chunk))})"
                for key, result in self._db.execute(q, chunk):
                    out[key] = ExecutionResult.from_dict(json.loads(result))
        except (sqlite3.Error, ValueError, TypeError) as e:
            raise self._unreadable(e) from None
        return out

    def put(self, key: str, result: ExecutionResult) -> None:
        try:
            self._db.execute(
                "INSERT OR REPLACE INTO executions VALUES (?, ?, ?)",
                (key, json.dumps(result.to_dict()), time.time()),
            )
        except sqlite3.Error as e:
            from qrdistill.errors import QRDistillError

            raise QRDistillError(
                f"{self.path}: cannot store an execution result ({e}); free disk space or delete the file"
            ) from None

    def close(self) -> None:
        self._db.close()


def execute_programs(rows: list[dict[str, Any]], config: Any, cache_path: Path) -> dict[str, Any]:
    """Set `row["execution"]` on every row and return the report's `execution` section.

    Only program-style rows whose answer passed step 1 are run (the others cannot be kept anyway);
    every other row gets `execution: null`. A program row gets {verdict, reason, stdout_tail}.
    """
    from concurrent.futures import ThreadPoolExecutor, as_completed

    from tqdm.auto import tqdm

    limits = Limits(time_s=config.time_limit_s, memory_mb=config.memory_mb)
    iso = isolation()
    programs: list[tuple[dict[str, Any], str | None]] = []
    for r in rows:
        r["execution"] = None
        if r["style"] == "program" and r["correct"]:
            programs.append((r, extract_code(r["response"])))
    keys = {code: _cache_key(code, limits, iso) for _, code in programs if code is not None}
    cache = ExecutionCache(cache_path)
    try:
        results = cache.get(sorted(set(keys.values())))
        todo = [code for code, key in keys.items() if key not in results]
        cached = len(keys) - len(todo)
        if todo:
            # Each program is a separate process and mostly waits on interpreter start-up, so threads suffice.
            with (
                ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool,
                tqdm(total=len(todo), desc="execute", unit="program", dynamic_ncols=True) as bar,
            ):
                futures = {pool.submit(run_program, code, limits): code for code in todo}
                for fut in as_completed(futures):
                    result = fut.result()
                    key = keys[futures[fut]]
                    results[key] = result
                    if result.cacheable:
                        cache.put(key, result)
                    bar.update(1)
    finally:
        cache.close()

    counts: dict[str, dict[str, dict[str, int]]] = {}
    for r, code in programs:
        if code is None:
            verdict, reason, tail = "no_code", "no fenced Python code block in the path", ""
        else:
            res = results[keys[code]]
            tail = res.stdout[-TAIL_CHARS:]
            verdict, reason = res.status, res.reason
            if res.status == "ok":
                ok, reason = answer_check(res.stdout, r)
                verdict = "pass" if ok else "fail"
        r["execution"] = {"verdict": verdict, "reason": reason, "stdout_tail": tail}
        by_style = counts.setdefault(r["task"], {}).setdefault(r["style"], dict.fromkeys(VERDICTS, 0))
        by_style[verdict] += 1
    return {
        "isolation": iso,
        "limits": {
            "time_s": limits.time_s,
            "cpu_s": limits.cpu_s,
            "wall_s": limits.wall_s,
            "memory_mb": limits.memory_mb,
            "output_bytes": MAX_OUTPUT_BYTES,
        },
        "programs": len(programs),
        "distinct_programs": len(keys),
        "run": len(keys) - cached,
        "cached": cached,
        "by_task_style": counts,
    }


# ------------------------------------------------------------------------------------------------ sandbox side
# Everything below runs inside the sandboxed interpreter, before and around the program.


class SandboxRefusal(PermissionError):
    """Raised by the audit hook; a PermissionError so code that tolerates a missing permission still runs."""


def _lower_limit(res: int, soft: int, hard: int) -> None:
    import resource

    cur_soft, cur_hard = resource.getrlimit(res)
    if cur_hard != resource.RLIM_INFINITY:
        hard = min(hard, cur_hard)
    resource.setrlimit(res, (min(soft, hard), hard))


def _libc() -> Any:
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def _die_with_parent(libc: Any, parent: int | None) -> None:
    """SIGKILL this process when its parent dies (the parent may be gone already: then exit)."""
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if parent is not None and os.getppid() != parent:
        os._exit(70)


def _unshare(libc: Any, flags: int) -> None:
    if hasattr(os, "unshare"):  # Python 3.12+
        os.unshare(flags)
    elif libc.unshare(flags) != 0:
        import ctypes

        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


def _enter_namespaces(libc: Any) -> None:
    """Move into new user, network, PID and IPC namespaces; continue as PID 1 of the new PID namespace.

    The bootstrap stays outside as that process's parent and exits with its status; if the bootstrap is
    killed, PID 1 gets SIGKILL (PDEATHSIG), and the kernel kills the rest of the namespace with it.
    """
    _unshare(libc, _CLONE_NEWUSER | _CLONE_NEWNET | _CLONE_NEWPID | _CLONE_NEWIPC)
    pid = os.fork()
    if pid == 0:
        _die_with_parent(libc, None)
        return
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
    os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 70)


def _landlock(libc: Any, box: str, abi: int) -> None:
    """Let the kernel refuse, for this process and all it starts: executing any file; creating, deleting,
    renaming, linking or writing to files outside `box` (except /dev/null); and, where the ABI has them,
    TCP bind/connect (ABI 4) and signals or abstract Unix sockets to processes outside (ABI 6). Reads are
    left to the audit hook."""
    import ctypes

    class PathBeneath(ctypes.Structure):
        _pack_ = 1
        _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]

    def call(nr: int, *args: Any) -> int:
        r = libc.syscall(ctypes.c_long(nr), *args)
        if r < 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"landlock: {os.strerror(errno)}")
        return r

    libc.syscall.restype = ctypes.c_long
    change = (
        _LL_WRITE_FILE | _LL_CHANGE_TREE | (_LL_REFER if abi >= 2 else 0) | (_LL_TRUNCATE if abi >= 3 else 0)
    )
    attr = (ctypes.c_uint64 * 3)(change | _LL_EXECUTE, 3 if abi >= 4 else 0, 3 if abi >= 6 else 0)
    size = 8 if abi < 4 else 16 if abi < 6 else 24
    ruleset = call(_LL_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    try:
        for path, allowed in ((box, change), ("/dev/null", change & (_LL_WRITE_FILE | _LL_TRUNCATE))):
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            try:
                rule = PathBeneath(allowed, fd)
                call(
                    _LL_ADD_RULE,
                    ctypes.c_int(ruleset),
                    ctypes.c_int(_LL_RULE_PATH_BENEATH),
                    ctypes.byref(rule),
                    0,
                )
            finally:
                os.close(fd)
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
        call(_LL_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0))
    finally:
        os.close(ruleset)


def _seccomp(libc: Any) -> None:
    """Install a seccomp filter (x86_64) that fails with EPERM, for this process and all it starts, the
    syscalls in _SECCOMP_DENY_X86_64 and clone without CLONE_THREAD (threads still start); every syscall of
    another ABI (i386 via int 0x80, x32) fails too."""
    import ctypes

    class SockFilter(ctypes.Structure):
        _fields_ = [
            ("code", ctypes.c_uint16),
            ("jt", ctypes.c_uint8),
            ("jf", ctypes.c_uint8),
            ("k", ctypes.c_uint32),
        ]

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]

    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06
    eperm = _SECCOMP_RET_ERRNO | 1
    prog = [
        (ld, 0, 0, 4),  # seccomp_data.arch
        (jeq, 1, 0, _AUDIT_ARCH_X86_64),
        (ret, 0, 0, eperm),
        (ld, 0, 0, 0),  # seccomp_data.nr
        (jge, 0, 1, 0x40000000),  # x32
        (ret, 0, 0, eperm),
    ]
    for nr in _SECCOMP_DENY_X86_64:
        prog += [(jeq, 0, 1, nr), (ret, 0, 0, eperm)]
    prog += [
        (jeq, 0, 1, _NR_CLONE3),
        (ret, 0, 0, _SECCOMP_RET_ERRNO | 38),  # ENOSYS
        (jeq, 0, 4, _NR_CLONE),
        (ld, 0, 0, 16),  # low half of args[0], the clone flags
        (jset, 1, 0, _CLONE_THREAD),
        (ret, 0, 0, eperm),
        (ret, 0, 0, _SECCOMP_RET_ALLOW),
        (ret, 0, 0, _SECCOMP_RET_ALLOW),
    ]
    filters = (SockFilter * len(prog))(*(SockFilter(*insn) for insn in prog))
    fprog = SockFprog(len(prog), filters)
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    if libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"seccomp: {os.strerror(errno)}")


def _sqlite_target(database: Any) -> str | None:
    """The file an sqlite3.connect name opens, None for an in-memory database."""
    name = os.fsdecode(database) if isinstance(database, (str, bytes)) else str(database)
    if name.startswith("file:"):
        # A URI (uri=True; without it the name is a relative file in the sandbox, which is checked the same).
        name, _, query = name[5:].partition("?")
        if "mode=memory" in query:
            return None
        name = name.partition("#")[0]
        if name.startswith("//"):
            name = "/" + name[2:].partition("/")[2]
    return None if name in ("", ":memory:") else name


def _install_hook(box: str, report_fd: int) -> None:
    """Install the audit hook of the module docstring.

    Paths are resolved against the working directory, which the hook keeps fixed (os.chdir is refused).
    The hook reads no global of this module (a program can reach those through its frames): what it uses
    is bound here, and the hook itself is referenced by nothing a program can reach without gc (refused)."""
    import site

    sep = os.sep
    realpath, join, dirname, isdir, isabs, fsdecode = (
        os.path.realpath,
        os.path.join,
        os.path.dirname,
        os.path.isdir,
        os.path.isabs,
        os.fsdecode,
    )
    write, refusal, max_reported, sqlite_target = (
        os.write,
        SandboxRefusal,
        MAX_REPORTED_REFUSALS,
        _sqlite_target,
    )
    own_proc = (f"/proc/{os.readlink('/proc/self')}", "/proc/self", "/proc/thread-self")
    read_roots = tuple(
        sorted(
            {
                os.path.realpath(p)
                for p in (*sys.path, sys.prefix, sys.base_prefix, sys.exec_prefix, *site.getsitepackages())
                if p and isabs(p)
            }
            | {"/usr/share/zoneinfo", "/usr/share/mime", "/sys/devices/system/cpu", *own_proc}
        )
    )
    # This file, so that tracebacks through the hook can show its lines.
    read_files = frozenset(
        {
            os.path.realpath(__file__),
            "/dev/null",
            "/dev/zero",
            "/dev/urandom",
            "/dev/random",
            "/etc/localtime",
            "/etc/timezone",
            "/etc/mime.types",
            "/proc/cpuinfo",
            "/proc/meminfo",
            "/proc/stat",
        }
    )
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
    refused_always = frozenset(
        {
            "os.fork",
            "os.forkpty",
            "os.exec",
            "os.posix_spawn",
            "os.spawn",
            "os.system",
            "subprocess.Popen",
            "os.kill",
            "os.killpg",
            "resource.setrlimit",
            "resource.prlimit",
            "os.chdir",
            "sys.remote_exec",
            "gc.get_objects",
            "gc.get_referrers",
            "gc.get_referents",
            # Raised by the replacements of _posixsubprocess.fork_exec and os.memfd_create (_guard_processes).
            "_posixsubprocess.fork_exec",
            "os.memfd_create",
        }
    )
    # event -> positions of the paths it changes. A dir_fd argument is not checked: descriptors of directories
    # outside the sandbox cannot be opened, and shutil.rmtree works through them.
    mutations = {
        "os.remove": (0,),
        "os.rmdir": (0,),
        "os.mkdir": (0,),
        "os.rename": (0, 1),
        "os.link": (0, 1),
        "os.symlink": (1,),
        "os.chmod": (0,),
        "os.chown": (0,),
        "os.utime": (0,),
        "os.truncate": (0,),
        "os.setxattr": (0,),
        "os.removexattr": (0,),
        "os.chflags": (0,),
        "os.lchmod": (0,),
        "shutil.rmtree": (0,),
    }
    refusals = [0]

    def inside(path: str, roots: tuple[str, ...]) -> bool:
        return any(path == r or path.startswith(r if r.endswith(sep) else r + sep) for r in roots)

    def resolve(p: Any) -> str:
        return realpath(join(box, fsdecode(p)))

    def refuse(event: str, detail: Any) -> None:
        refusals[0] += 1
        if refusals[0] <= max_reported:
            write(report_fd, f"refused {event} {detail!r:.300}\n".encode("utf-8", "replace"))
        raise refusal(f"sandbox: {event} refused ({detail!r:.200})")

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event == "open":
            path, mode, flags = args
            if isinstance(path, int):
                return  # wraps a descriptor that was checked when it was opened
            real = resolve(path)
            writing = (mode is not None and any(c in mode for c in "wax+")) or bool(
                (flags or 0) & write_flags
            )
            if inside(real, (box,)) or (real == "/dev/null"):
                return
            if writing:
                refuse("open for writing", real)
            if real not in read_files and not inside(real, read_roots):
                refuse("open outside the sandbox", real)
            if isdir(real):
                # A descriptor of a directory outside would let dir_fd calls escape the checks.
                refuse("open of a directory outside the sandbox", real)
        elif event in mutations:
            for i in mutations[event]:
                if isinstance(args[i], int) and event == "os.truncate":
                    continue  # ftruncate needs a descriptor opened for writing, which was checked
                if isinstance(args[i], int) or not inside(resolve(args[i]), (box,)):
                    refuse(event, args[i])
            if event == "os.symlink":
                # A link in the sandbox to a file outside would let a later open write through it.
                target = join(dirname(resolve(args[1])), fsdecode(args[0]))
                if not inside(realpath(target), (box,)):
                    refuse("os.symlink to outside the sandbox", args[0])
        elif event in refused_always or event.startswith(("socket.", "ctypes.")):
            refuse(event, args[:2] if args else "")
        elif event == "import" and args[0] in {"_posixsubprocess", "_imp", "posix"}:  # _GUARDED_MODULES
            refuse(event, args[0])  # a fresh copy would bring back the real fork_exec or memfd_create
        elif event == "sqlite3.connect":
            # SQLite opens its files itself, without the open event.
            target = sqlite_target(args[0])
            if target is not None and not inside(resolve(target), (box,)):
                refuse(event, target)
            # ATTACH DATABASE and VACUUM INTO open files with no audit event at all: only Landlock stops those.

    sys.addaudithook(hook)


# Compiled into a namespace of its own (only builtins, none of this module's globals): the guard set is a
# constant of the code. Its closure still holds the real `_imp` function and `sys.audit` (cells a program
# can read and rebind), which pure Python cannot hide; the seccomp filter is what stops the fork and
# memfd_create of a fresh copy obtained that way.
_IMP_GUARD = """
def guarded(create, audit):
    def create_module(spec, *args):
        name = spec.name
        if name.rpartition(".")[2] in {"_posixsubprocess", "_imp", "posix"}:
            audit("import", name)
        return create(spec, *args)
    return create_module
"""


def _guard_processes() -> None:
    """Replace `_posixsubprocess.fork_exec` (starts a process) and `os.memfd_create` (a file that Landlock
    does not cover), which raise no audit event, everywhere they are bound (`subprocess._fork_exec` is an
    alias made when subprocess was imported; `posix` holds os's functions), and refuse a fresh copy of
    their extension modules (`import` after deleting one from sys.modules raises an audit event;
    `importlib.util.module_from_spec` goes through `_imp.create_dynamic`/`create_builtin`, which do not).

    A replacement is a `functools.partial` of `sys.audit` with the event's name: calling it raises that
    event, which the hook refuses. It carries no `__globals__`, closure or defaults, only sys.audit and a
    string."""
    import _imp
    import _posixsubprocess

    replacements = {
        id(_posixsubprocess.fork_exec): (
            _posixsubprocess.fork_exec,
            functools.partial(sys.audit, "_posixsubprocess.fork_exec"),
        )
    }
    if hasattr(os, "memfd_create"):
        replacements[id(os.memfd_create)] = (os.memfd_create, functools.partial(sys.audit, "os.memfd_create"))
    for module in list(sys.modules.values()):
        namespace = getattr(module, "__dict__", None)
        if isinstance(namespace, dict):
            for name, value in list(namespace.items()):
                entry = replacements.get(id(value))
                if entry is not None and entry[0] is value:
                    namespace[name] = entry[1]
    del replacements
    import builtins

    # Real builtins: C functions called from the guard's frame look some up (getattr) there; it uses none.
    ns: dict[str, Any] = {"__builtins__": builtins}
    exec(_IMP_GUARD, ns)
    guarded = ns.pop("guarded")
    _imp.create_dynamic = guarded(_imp.create_dynamic, sys.audit)
    _imp.create_builtin = guarded(_imp.create_builtin, sys.audit)


def _child(spec: dict[str, Any]) -> None:
    import resource
    import traceback
    import types

    report_fd = spec["report_fd"]
    libc = _libc()
    try:
        _die_with_parent(libc, spec["parent"])
        _lower_limit(resource.RLIMIT_CORE, 0, 0)
        # soft = hard: SIGKILL when it is reached. PID 1 of a namespace would ignore the gentler SIGXCPU.
        _lower_limit(resource.RLIMIT_CPU, spec["cpu_s"], spec["cpu_s"])
        _lower_limit(resource.RLIMIT_FSIZE, spec["fsize_bytes"], spec["fsize_bytes"])
        _lower_limit(resource.RLIMIT_NPROC, spec["nproc"], spec["nproc"])
        if spec["namespaces"]:
            _enter_namespaces(libc)
        _lower_limit(resource.RLIMIT_AS, spec["memory_bytes"], spec["memory_bytes"])
        box = os.getcwd()
        if spec["landlock"]:
            _landlock(libc, box, spec["landlock"])
        if spec["seccomp"]:
            _seccomp(libc)
    except OSError as e:
        os.write(report_fd, f"setup {e}\n".encode())
        os._exit(70)
    source = Path(box, "main.py").read_text(encoding="utf-8")
    main = types.ModuleType("__main__")
    main.__file__ = "main.py"
    sys.modules["__main__"] = main
    sys.argv = ["main.py"]
    del libc
    if spec["audit_hook"]:
        _install_hook(box, report_fd)
        _guard_processes()
    try:
        exec(compile(source, "main.py", "exec"), main.__dict__)
    except MemoryError:
        os.write(report_fd, b"memory\n")
        traceback.print_exc()
        sys.exit(1)
    except SystemExit:
        raise
    except BaseException:
        traceback.print_exc()
        sys.exit(1)


def _probe() -> None:
    """Exit 0 if this process may create the namespaces the sandbox uses."""
    libc = _libc()
    try:
        _unshare(libc, _CLONE_NEWUSER | _CLONE_NEWNET | _CLONE_NEWPID | _CLONE_NEWIPC)
        pid = os.fork()
    except OSError:
        os._exit(1)
    if pid == 0:
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    os._exit(0 if os.waitstatus_to_exitcode(status) == 0 else 1)


if __name__ == "__main__":
    if sys.argv[1] == "--probe":
        _probe()
    _child(json.loads(sys.argv[1]))
