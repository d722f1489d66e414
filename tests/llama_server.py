"""Start and stop a real llama.cpp OpenAI-compatible server (llama-cpp-python) for tests and benchmarks.

    with llama_server(gguf_path) as server:
        server.base_url  # "http://127.0.0.1:<port>/v1"

The server runs as a subprocess on 127.0.0.1 and a free port; readiness is
polled on ``GET /v1/models``. Its output goes to a log file whose tail is put
into the error if it fails to come up. llama-cpp-python's server handles one
request at a time (it has no parallel slots); concurrent requests queue.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

#: The name the server answers to; requests must send it as `model`.
MODEL_ALIAS = "gemma-3-270m"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def llama_cpp_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


@dataclass
class LlamaServer:
    process: subprocess.Popen
    port: int
    log_path: Path
    model_alias: str

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


@contextlib.contextmanager
def llama_server(
    model: str | Path,
    *,
    n_ctx: int = 2048,
    n_threads: int = 2,
    model_alias: str = MODEL_ALIAS,
    extra_args: Sequence[str] = (),
    ready_timeout: float = 120.0,
) -> Iterator[LlamaServer]:
    port = free_port()
    log_file = tempfile.NamedTemporaryFile(prefix="llama-server-", suffix=".log", delete=False)
    cmd = [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(model),
        "--model_alias", model_alias,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--n_ctx", str(n_ctx),
        "--n_threads", str(n_threads),
        "--n_threads_batch", str(n_threads),
        "--verbose", "False",
        *extra_args,
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env)
    server = LlamaServer(proc, port, Path(log_file.name), model_alias)
    try:
        _wait_ready(server, ready_timeout)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
        log_file.close()
        with contextlib.suppress(OSError):
            os.unlink(log_file.name)


def _wait_ready(server: LlamaServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    url = server.base_url + "/models"
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"llama.cpp server exited with code {server.process.returncode}:\n{server.log_tail()}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(0.3)
    raise RuntimeError(f"llama.cpp server not ready after {timeout:.0f}s:\n{server.log_tail()}")
