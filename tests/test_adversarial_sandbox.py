"""Case 12, teacher code run safely: `filter.execute_programs` and its sandbox (qrdistill/sandbox.py).

Each hostile program is stopped, recorded with its verdict, and leaves nothing behind outside its
sandbox directory. The fork bomb forks a bounded number of times: the machine runs tests as root,
whom the kernel exempts from RLIMIT_NPROC, so if the sandbox failed, an unbounded bomb would
take the machine down with it; six rounds are at most 64 processes.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest
from train_helpers import qrdistill_cmd, subprocess_env

from qrdistill import sandbox
from qrdistill.config.filter import ExecuteProgramsConfig
from qrdistill.sandbox import HOOKS, NAMESPACES, Limits, execute_programs, isolation, run_program

ROOT = Path(__file__).resolve().parents[1]
FAST = Limits(time_s=1.0, memory_mb=512)


@pytest.fixture(params=[NAMESPACES, HOOKS])
def mode(request, monkeypatch):
    """Each hostile program runs with this machine's namespaces and again without them, as on a machine
    without unprivileged namespaces (Landlock, where the kernel has it, and the audit hook)."""
    if request.param == NAMESPACES and isolation() != NAMESPACES:
        pytest.skip("this machine does not let an unprivileged process create namespaces")
    monkeypatch.setattr(sandbox, "isolation", lambda: request.param)
    return request.param


def sandbox_processes() -> list[int]:
    """PIDs of processes running the sandbox's bootstrap (its command line names sandbox.py)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"qrdistill/sandbox.py" in cmdline and b"--probe" not in cmdline:
                pids.append(int(entry.name))
    return pids


def arith_row(response: str, style: str = "program", answer: str = "42") -> dict:
    return {
        "qid": "procedural_arith/q1",
        "task": "procedural_arith",
        "style": style,
        "question": "What is 6 x 7?",
        "choices": [],
        "answer": answer,
        "gold_text": answer,
        "response": response,
        "correct": True,
        "meta": {"record": {}},
    }


def fenced(code: str) -> str:
    return f"Here is a program that computes it:\n```python\n{code}\n```\nOutput: 42\nThe answer is 42."


def _assert_all_refused(attempts: dict[str, str]) -> None:
    for name, code in attempts.items():
        result = run_program(code, FAST)
        assert result.status == "refused", (name, result)

def test_case12_correct_program_passes_wrong_one_fails(tmp_path):
    rows = [
        arith_row(fenced("x = 6\nx = x * 7\nprint(x)")),
        arith_row(fenced("print('working...')\nprint(6 * 7 + 1)")),
        arith_row("No code here, just prose. The answer is 42."),
        arith_row("6 x 7 = 42. The answer is 42.", style="cot"),
        arith_row(fenced("print(6 * 7 + 1)"), answer="43") | {"correct": False},
    ]
    cfg = ExecuteProgramsConfig(enabled=True, time_limit_s=2.0, memory_mb=512)
    summary = execute_programs(rows, cfg, tmp_path / "executions.sqlite")
    verdicts = [r["execution"] and r["execution"]["verdict"] for r in rows]
    # Other styles and paths that failed step 1 are not run at all.
    assert verdicts == ["pass", "fail", "no_code", None, None]
    assert rows[0]["execution"]["stdout_tail"] == "42\n"
    assert "'43'" in rows[1]["execution"]["reason"] and "'42'" in rows[1]["execution"]["reason"]
    assert summary["run"] == 2 and summary["cached"] == 0
    assert summary["by_task_style"]["procedural_arith"]["program"] == {
        "pass": 1,
        "fail": 1,
        "error": 0,
        "timeout": 0,
        "memory": 0,
        "refused": 0,
        "no_code": 1,
    }

    again = execute_programs(rows, cfg, tmp_path / "executions.sqlite")
    assert again["run"] == 0 and again["cached"] == 2
    assert [r["execution"] and r["execution"]["verdict"] for r in rows] == verdicts
    longer = execute_programs(
        rows, cfg.model_copy(update={"time_limit_s": 3.0}), tmp_path / "executions.sqlite"
    )
    assert longer["run"] == 2, "other limits are another execution"


def test_case12_fork_bomb_is_refused_and_leaves_no_process(mode):
    code = (
        "import os, time\n"
        "for _ in range(6):\n"
        "    try:\n"
        "        os.fork()\n"
        "    except OSError:\n"
        "        pass\n"
        "time.sleep(60)\n"
    )
    before = set(sandbox_processes())
    start = time.monotonic()
    result = run_program(code, FAST)
    elapsed = time.monotonic() - start
    assert result.isolation == mode
    assert result.status == "refused" and "os.fork" in result.reason, result
    # Still sleeping at the wall-clock limit: the parent killed its process group (and namespace).
    assert elapsed < FAST.wall_s + 3
    assert result.returncode == -9
    time.sleep(0.2)
    assert set(sandbox_processes()) - before == set()


def test_case12_infinite_loop_hits_the_cpu_limit(mode):
    start = time.monotonic()
    result = run_program("while True:\n    pass\n", FAST)
    assert result.status == "timeout" and "CPU time limit" in result.reason, result
    assert time.monotonic() - start < FAST.wall_s + 1


def test_case12_sleeping_program_hits_the_wall_clock_limit():
    result = run_program("import time\ntime.sleep(60)\n", FAST)
    assert result.status == "timeout" and "wall-clock" in result.reason, result
    assert not result.cacheable, "a wall-clock timeout depends on the machine's load: a re-run tries again"


def test_case12_10gb_allocation_hits_the_memory_limit(mode):
    result = run_program("x = bytearray(10 * 1024 ** 3)\nprint(len(x))\n", FAST)
    assert result.status == "memory", result
    assert result.stdout == ""


def test_case12_socket_connect_to_localhost_gets_nowhere(mode):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        code = f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\ns.sendall(b'hi')\nprint('sent')\n"
        result = run_program(code, FAST)
        listener.settimeout(0.5)
        with pytest.raises(TimeoutError):
            listener.accept()
    assert result.isolation == mode
    assert result.status == "refused" and "socket" in result.reason, result
    assert "sent" not in result.stdout


def test_case12_namespace_leaves_only_a_loopback_interface():
    if isolation() != NAMESPACES:
        pytest.skip("this machine does not let an unprivileged process create namespaces")
    result = run_program("import os, socket\nprint(os.getpid(), socket.if_nameindex())\n", FAST)
    assert result.status == "ok", result
    assert result.stdout.strip() == "1 [(1, 'lo')]"


def test_case12_environment_keys_stay_out_of_reach(mode, monkeypatch):
    secret = "sk-case12-fake-secret-0123456789"
    monkeypatch.setenv("QRD_CASE12_FAKE_SECRET", secret)
    seen = run_program("import os\nfor k, v in sorted(os.environ.items()):\n    print(k, v)\n", FAST)
    assert seen.status == "ok", seen
    assert secret not in seen.stdout and "QRD_CASE12_FAKE_SECRET" not in seen.stdout
    assert {line.split()[0] for line in seen.stdout.splitlines()} <= {
        "LC_ALL",
        "HOME",
        "TMPDIR",
        "MPLBACKEND",
        "OMP_NUM_THREADS",
        "OPENBLAS_NUM_THREADS",
        "MKL_NUM_THREADS",
    }
    # The parent's environment is readable through /proc by a process of the same user; the hook refuses it.
    stolen = run_program(f"print(open('/proc/{os.getpid()}/environ').read())\n", FAST)
    assert stolen.status == "refused", stolen
    assert secret not in stolen.stdout + stolen.stderr_tail + stolen.reason


def test_case12_nothing_outside_the_sandbox_changes(mode, tmp_path):
    outside = tmp_path / "outside.txt"
    victim = tmp_path / "victim.txt"
    victim.write_text("untouched")
    attempts = {
        "write": f"open({str(outside)!r}, 'w').write('pwned')",
        "append": f"open({str(victim)!r}, 'a').write('pwned')",
        "remove": f"import os\nos.remove({str(victim)!r})",
        "symlink": f"import os\nos.symlink({str(victim)!r}, 'link')\nopen('link', 'w').write('pwned')",
        "escape": f"open('../' * 20 + {str(outside)[1:]!r}, 'w').write('pwned')",
        "chdir": f"import os\nos.chdir({str(tmp_path)!r})\nopen('outside.txt', 'w').write('pwned')",
    }
    _assert_all_refused(attempts)
    assert not outside.exists()
    assert victim.read_text() == "untouched"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["victim.txt"]

    # Inside its own directory a program writes freely, and the directory is gone afterwards.
    own = run_program(
        "import os\nopen('notes.txt', 'w').write('ok')\nprint(os.getcwd())\nprint(open('notes.txt').read())\n",
        FAST,
    )
    assert own.status == "ok", own
    box, content = own.stdout.split()
    assert content == "ok" and not Path(box).exists()


def test_case12_verdicts_reach_filtered_jsonl_and_the_report(tmp_path):
    run = tmp_path / "run"
    env = subprocess_env()
    # The demo's styles have no program; this test needs program paths.
    base = ["--run-dir", str(run), "--limit", "2", "--set", "generate.styles=[cot,program,backward]"]
    gen = subprocess.run(
        qrdistill_cmd("generate", *base), cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert gen.returncode == 0, gen.stderr
    # Doctor two correct program paths: one whose code prints a wrong number (its prose still states the
    # right answer, so step 1 passes), one with no code block at all.
    paths = run / "paths.jsonl"
    rows = [json.loads(line) for line in paths.read_text().splitlines()]
    program = [
        r for r in rows if r["style"] == "program" and r["correct"] and r["task"] == "procedural_arith"
    ]
    assert len(program) >= 2
    wrong, no_code = program[0], program[1]
    wrong["response"] = fenced("print(-1)").replace("42", wrong["answer"])
    no_code["response"] = f"I would write code, but the answer is {no_code['answer']}."
    paths.write_text("".join(json.dumps(r) + "\n" for r in rows))

    cmd = qrdistill_cmd(
        "filter",
        *base,
        "--set",
        "filter.execute_programs.enabled=true",
        "--set",
        "filter.execute_programs.time_limit_s=2",
    )
    first = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    filtered = {
        (r["qid"], r["style"]): r for r in map(json.loads, (run / "filtered.jsonl").read_text().splitlines())
    }
    assert filtered[(wrong["qid"], "program")]["execution"]["verdict"] == "fail"
    assert filtered[(no_code["qid"], "program")]["execution"]["verdict"] == "no_code"
    for r in filtered.values():
        ex = r["execution"]
        if r["style"] != "program" or not r["correct"]:
            assert ex is None
        else:
            assert set(ex) == {"verdict", "reason", "stdout_tail"}
            assert ex["verdict"] in ("pass", "fail", "no_code"), ex
            if ex["verdict"] != "pass":
                assert not r["kept"] and r["judge"] is None
    passed = [r for r in filtered.values() if (r["execution"] or {}).get("verdict") == "pass"]
    assert passed and all(r["execution"]["stdout_tail"].strip() for r in passed)

    report = json.loads((run / "filter_report.json").read_text())
    ex = report["execution"]
    assert ex["isolation"] == isolation() and ex["cached"] == 0 and ex["run"] == ex["distinct_programs"]
    assert ex["programs"] == ex["distinct_programs"] + 1, "the path without code is not run"
    arith = ex["by_task_style"]["procedural_arith"]["program"]
    assert arith["fail"] == 1 and arith["no_code"] == 1
    assert report["by_task_style"]["procedural_arith"]["program"]["execution_failed"] == 2
    o = report["overall"]
    assert o["total"] == sum(
        o[k] for k in ("wrong_answer", "execution_failed", "judged_invalid", "unparseable", "kept")
    )
    meta = json.loads((run / "meta" / "filter.json").read_text())
    assert meta["config"]["filter"]["execute_programs"] == {
        "enabled": True,
        "time_limit_s": 2.0,
        "memory_mb": 1024,
    }

    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    report2 = json.loads((run / "filter_report.json").read_text())
    assert report2["execution"]["run"] == 0 and report2["execution"]["cached"] == ex["run"]
    assert report2["by_task_style"] == report["by_task_style"]


def _world_writable(path: Path) -> Path:
    """A directory anyone may write to, like /tmp: a namespaced program (an unmapped uid) could write there."""
    path.mkdir()
    path.chmod(0o777)
    return path


# subprocess's own alias of the real fork_exec (bound when subprocess was imported), called with the
# 23 arguments of Python 3.11's fork_exec.
_FORK_EXEC_ARGS = (
    "[b'/bin/sh', b'-c', b'echo escaped > {marker}'], [b'/bin/sh'], True, (w,), None, None, "
    "-1, -1, -1, -1, -1, -1, r, w, True, False, -1, -1, None, -1, -1, None, False"
)


def test_case12_fork_exec_aliases_and_fresh_copies_are_refused(mode, tmp_path):
    pub = _world_writable(tmp_path / "pub")
    spawn = "import os, subprocess\nr, w = os.pipe()\n"
    attempts = {
        "subprocess._fork_exec": spawn + "pid = subprocess._fork_exec({args})\nos.waitpid(pid, 0)\n",
        "importlib fresh copy": spawn
        + "import importlib.util\nm = importlib.util.module_from_spec(importlib.util.find_spec('_posixsubprocess'))\n"
        "pid = m.fork_exec({args})\nos.waitpid(pid, 0)\n",
        "re-import": spawn + "import sys\ndel sys.modules['_posixsubprocess']\nimport _posixsubprocess\n"
        "pid = _posixsubprocess.fork_exec({args})\nos.waitpid(pid, 0)\n",
        "fresh _imp": "import sys\ndel sys.modules['_imp']\nimport _imp\n",
        "multiprocessing spawn": "import multiprocessing as mp\n"
        "p = mp.get_context('spawn').Process(target=print)\np.start()\np.join()\n",
        "os.posix_spawn": "import os\nos.posix_spawn('/bin/sh', ['sh', '-c', 'echo escaped > {marker}'], {{}})\n",
        "os.execv": "import os\nos.execv('/bin/sh', ['sh', '-c', 'echo escaped > {marker}'])\n",
    }
    for name, template in attempts.items():
        marker = pub / name.replace(" ", "_")
        code = template.format(args=_FORK_EXEC_ARGS.format(marker=marker), marker=marker)
        result = run_program(code + "import time\ntime.sleep(0.2)\n", FAST)
        assert result.status == "refused", (name, result)
        assert not marker.exists(), name
    assert list(pub.iterdir()) == []


def test_case12_writes_that_bypass_the_open_event_are_refused(mode, tmp_path):
    pub = _world_writable(tmp_path / "pub")
    db = pub / "x.db"
    attempts = {
        "sqlite3.connect": f"import sqlite3\nsqlite3.connect({str(db)!r}).execute('create table t(x)')",
        "sqlite3 uri": f"import sqlite3\nsqlite3.connect('file:{db}?mode=rwc', uri=True).execute('create table t(x)')",
        "shutil.copy": f"import shutil\nopen('a', 'w').write('x')\nshutil.copy('a', {str(pub)!r})",
        "io.FileIO": f"import _io\n_io.FileIO({str(db)!r}, 'w').write(b'x')",
        "os.open": f"import os\nos.write(os.open({str(db)!r}, os.O_WRONLY | os.O_CREAT), b'x')",
    }
    _assert_all_refused(attempts)
    assert list(pub.iterdir()) == []
    # In its own directory SQLite works as usual, in memory or on disk.
    own = run_program(
        "import sqlite3\nfor name in (':memory:', 'own.db'):\n"
        "    c = sqlite3.connect(name)\n    c.execute('create table t(x)')\n    c.execute('insert into t values (42)')\n"
        "    print(c.execute('select x from t').fetchone()[0])\n",
        FAST,
    )
    assert own.status == "ok" and own.stdout.split() == ["42", "42"], own


def test_case12_landlock_stops_writes_and_exec_without_the_audit_hook(tmp_path, monkeypatch):
    """The kernel layer on its own: with the audit hook turned off, Landlock still refuses every write
    outside the sandbox directory (including those no audit event sees, like mkfifo) and every exec."""
    if sandbox.landlock_abi() == 0:
        pytest.skip("this kernel does not offer Landlock")
    monkeypatch.setattr(sandbox, "_AUDIT_HOOK", False)
    pub = _world_writable(tmp_path / "pub")
    code = (
        "import os, sqlite3, subprocess\n"
        "def attempt(name, f):\n"
        "    try:\n"
        "        f()\n"
        "        print(name, 'done')\n"
        "    except (OSError, sqlite3.Error) as e:\n"
        "        print(name, 'failed', type(e).__name__)\n"
        f"attempt('open', lambda: open({str(pub / 'a')!r}, 'w'))\n"
        f"attempt('mkfifo', lambda: os.mkfifo({str(pub / 'fifo')!r}))\n"
        f"attempt('sqlite', lambda: sqlite3.connect({str(pub / 'x.db')!r}).execute('create table t(x)'))\n"
        "c = sqlite3.connect(':memory:')\n"
        f"attempt('attach', lambda: c.execute(\"ATTACH DATABASE '{pub / 'y.db'}' AS y\").execute('create table y.t(x)'))\n"
        f"attempt('exec', lambda: subprocess.run(['/bin/sh', '-c', 'echo x > {pub / 'sh'}']))\n"
        "attempt('own', lambda: open('own.txt', 'w').write('ok'))\n"
        "attempt('devnull', lambda: open('/dev/null', 'w').write('ok'))\n"
    )
    result = run_program(code, FAST)
    assert result.status == "ok", result
    outcomes = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    assert outcomes == {
        "open": "failed PermissionError",
        "mkfifo": "failed PermissionError",
        "sqlite": "failed OperationalError",
        "attach": "failed OperationalError",
        "exec": "failed PermissionError",
        "own": "done",
        "devnull": "done",
    }, result
    assert list(pub.iterdir()) == []


def test_case12_full_disk_in_the_execution_cache_is_a_user_error(tmp_path):
    from qrdistill.errors import QRDistillError

    cache = sandbox.ExecutionCache(tmp_path / "executions.sqlite")
    try:
        cache._db.execute("PRAGMA max_page_count = 3")  # SQLite then answers "database or disk is full"
        big = sandbox.ExecutionResult("ok", "exited normally", "x" * 100_000, "", 0, 0.1, HOOKS)
        with pytest.raises(QRDistillError, match=r"executions\.sqlite: cannot store an execution result"):
            cache.put("k", big)
    finally:
        cache.close()


def test_case12_garbage_execution_cache_is_one_line_through_the_cli(tmp_path):
    run = tmp_path / "run"
    env = subprocess_env()
    base = ["--run-dir", str(run), "--limit", "1"]
    gen = subprocess.run(
        qrdistill_cmd("generate", *base), cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert gen.returncode == 0, gen.stderr
    (run / "executions.sqlite").write_bytes(b"this is not an SQLite file " * 200)
    cmd = qrdistill_cmd("filter", *base, "--set", "filter.execute_programs.enabled=true")
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode != 0
    assert "Traceback" not in res.stderr, res.stderr
    lines = [line for line in res.stderr.splitlines() if "executions.sqlite" in line]
    assert len(lines) == 1 and "not a usable execution cache" in lines[0], res.stderr


# The reviewer's route to the guard state: the globals of a replacement function (or of the bootstrap's
# frame), where the guard set and `os` lived; a fake `os` whose realpath says every path is inside.
_REACH_GUARD_STATE = """
import os, subprocess, sys, types, posixpath
fake_path = types.SimpleNamespace(**vars(posixpath))
fake_path.realpath = lambda p, **kw: os.getcwd() + "/inside"
fake_os = types.SimpleNamespace(**vars(os))
fake_os.path = fake_path
spaces = [getattr(subprocess._fork_exec, "__globals__", None)]
frame = sys._getframe()
while frame is not None:
    spaces.append(frame.f_globals)
    frame = frame.f_back
for g in spaces:
    if g is not None and "_GUARDED_MODULES" in g:
        g["_GUARDED_MODULES"] = frozenset()
        g["os"] = fake_os
"""


def test_case12_guard_state_is_out_of_reach_of_program_code(mode):
    attempts = {
        "re-import": "del sys.modules['_posixsubprocess']\nimport _posixsubprocess\n",
        "importlib": "import importlib.util\n"
        "importlib.util.module_from_spec(importlib.util.find_spec('_posixsubprocess'))\n",
        "memfd_create": "os.memfd_create('x')\n",
    }
    for name, tail in attempts.items():
        result = run_program(_REACH_GUARD_STATE + tail, FAST)
        assert result.status == "refused", (name, result)


def test_case12_chmod_and_utime_outside_leave_the_file_unchanged(mode, tmp_path):
    target = tmp_path / "outside.txt"
    target.write_text("x")
    os.chmod(target, 0o644)
    os.utime(target, (1_000_000, 1_000_000))
    before = os.stat(target)
    for call in ("os.chmod(path, 0o777)", "os.utime(path, (5, 5))", "os.chown(path, 1, 1)"):
        code = _REACH_GUARD_STATE + f"path = {str(target)!r}\n{call}\n"
        result = run_program(code, FAST)
        assert result.status == "refused", (call, result)
    after = os.stat(target)
    assert (after.st_mode, after.st_mtime, after.st_uid) == (before.st_mode, before.st_mtime, before.st_uid)


def test_case12_seccomp_stops_memfd_fork_and_metadata_changes_without_the_audit_hook(tmp_path, monkeypatch):
    """The kernel layer on its own: with the audit hook off, the seccomp filter fails memfd_create, fork,
    exec and chmod/chown/utime/xattr calls (which Landlock does not cover), while threads still run."""
    if not sandbox._seccomp_supported():
        pytest.skip("the seccomp filter is written for Linux on x86_64")
    monkeypatch.setattr(sandbox, "_AUDIT_HOOK", False)
    target = tmp_path / "outside.txt"
    target.write_text("x")
    os.chmod(target, 0o644)
    os.utime(target, (1_000_000, 1_000_000))
    before = os.stat(target)
    p = str(target)
    code = (
        "import os, threading\n"
        "def attempt(name, f):\n"
        "    try:\n"
        "        f()\n"
        "        print(name, 'done')\n"
        "    except OSError as e:\n"
        "        print(name, 'failed', type(e).__name__)\n"
        "attempt('memfd', lambda: os.memfd_create('x'))\n"
        "attempt('fork', os.fork)\n"
        "attempt('exec', lambda: os.execv('/bin/true', ['true']))\n"
        f"attempt('chmod', lambda: os.chmod({p!r}, 0o777))\n"
        f"attempt('fchmod', lambda: os.fchmod(os.open({p!r}, os.O_RDONLY), 0o777))\n"
        f"attempt('utime', lambda: os.utime({p!r}, (5, 5)))\n"
        f"attempt('chown', lambda: os.chown({p!r}, 1, 1))\n"
        f"attempt('setxattr', lambda: os.setxattr({p!r}, 'user.x', b'1'))\n"
        "t = threading.Thread(target=print, args=('thread done',))\n"
        "t.start()\n"
        "t.join()\n"
    )
    result = run_program(code, FAST)
    assert result.status == "ok", result
    outcomes = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    refused = "failed PermissionError"
    assert outcomes == {
        **dict.fromkeys(("memfd", "fork", "exec", "chmod", "fchmod", "utime", "chown", "setxattr"), refused),
        "thread": "done",
    }, result
    after = os.stat(target)
    assert (after.st_mode, after.st_mtime, after.st_uid) == (before.st_mode, before.st_mtime, before.st_uid)


@pytest.mark.parametrize(
    "row",
    [
        {"stdout": 5},
        {"status": "passed"},
        {"returncode": "0"},
        {"cacheable": "yes"},
        {"extra": 1},
    ],
)
def test_case12_malformed_cache_row_is_a_one_line_data_error(tmp_path, row):
    from qrdistill.errors import DataError

    good = sandbox.ExecutionResult("ok", "exited normally", "42\n", "", 0, 0.1, HOOKS)
    cache = sandbox.ExecutionCache(tmp_path / "executions.sqlite")
    try:
        cache.put("k", good)
        assert cache.get(["k"]) == {"k": good}
        cache._db.execute("UPDATE executions SET result = ?", (json.dumps({**good.to_dict(), **row}),))
        with pytest.raises(DataError, match=r"executions\.sqlite: not a usable execution cache") as e:
            cache.get(["k"])
        assert "\n" not in str(e.value)
    finally:
        cache.close()
