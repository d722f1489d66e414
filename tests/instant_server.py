"""An OpenAI-compatible HTTP server on 127.0.0.1 that answers at once, for measuring client overhead.

A real server over TCP (HTTP/1.1 with keep-alive, stdlib asyncio only), run in
its own process so its CPU time does not share the client's GIL. It answers
`POST .../chat/completions` and `POST .../completions` with a valid OpenAI body
(id, choices, finish_reason, usage), `GET .../models` with one model, and
`GET /stats` with how many completions it has served, how many connections it
accepted and the most requests it held at once. Every reply starts with
`[ref <crc32 of the prompt>]`, so a test can tell that each answer reached the
request it belongs to. It parses only what the clients send (a Content-Length
body; chunked bodies get 411), which keeps it an order of magnitude faster than
the client it is measured against: with the server the bottleneck, client
overhead could not show. `--hold-s` delays every answer (for tests that need
requests in flight, or a run that lasts long enough to be killed).

    python tests/instant_server.py [--port 0] [--reply-words 60] [--hold-s 0]

prints `PORT <n>` on stdout once it listens. `InstantServer` does that from Python.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 411: "Length Required"}


def _reply_text(words: int) -> str:
    steps = " ".join(f"step{i}" for i in range(max(0, words - 4)))
    return f"{steps} The answer is 42."


class _Http(asyncio.Protocol):
    served = 0  # completions answered, all connections together
    connections = 0  # connections accepted (a client that pools well opens about `concurrency`)
    in_flight = 0  # completions received and not yet answered
    peak = 0  # the most in flight at once

    def __init__(self, text: str, hold_s: float) -> None:
        self.text = text
        self.hold_s = hold_s
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        _Http.connections += 1

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].decode("latin-1").split("\r\n")
            method, path, _ = (head[0].split(" ") + ["", ""])[:3]
            headers = {}
            for line in head[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            if "chunked" in headers.get("transfer-encoding", "").lower():
                self._send(411, {"error": {"message": "send a Content-Length body"}}, close=True)
                return
            length = int(headers.get("content-length") or 0)
            if len(self.buf) < end + 4 + length:
                return
            body = self.buf[end + 4 : end + 4 + length]
            self.buf = self.buf[end + 4 + length :]
            close = headers.get("connection", "").lower() == "close"
            self._route(method, path, body, close)
            if close:
                return

    def _route(self, method: str, path: str, body: bytes, close: bool) -> None:
        if method == "GET" and path.endswith("/models"):
            self._send(200, {"object": "list", "data": [{"id": "instant", "object": "model", "owned_by": "me"}]},
                       close)
        elif method == "GET" and path == "/stats":
            self._send(200, {"served": _Http.served, "connections": _Http.connections, "peak": _Http.peak}, close)
        elif method == "POST" and path.endswith("completions"):
            try:
                req = json.loads(body or b"{}")
            except ValueError:
                self._send(400, {"error": {"message": "body is not JSON"}}, close)
                return
            chat = path.endswith("/chat/completions")
            if chat:
                prompt = "\n".join(str(m.get("content", "")) for m in req.get("messages") or [])
            else:
                prompt = str(req.get("prompt", ""))
            text = f"[ref {reply_ref(prompt)}] {self.text}"
            if chat:
                choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text},
                                          "finish_reason": "stop", "logprobs": None}
            else:
                choice = {"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}
            p, c = len(prompt.split()), len(text.split())
            payload = {"object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
                       "model": req.get("model", "instant"), "choices": [choice],
                       "usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}}
            _Http.in_flight += 1
            _Http.peak = max(_Http.peak, _Http.in_flight)
            if self.hold_s > 0:
                asyncio.get_running_loop().call_later(self.hold_s, self._answer, payload, close)
            else:
                self._answer(payload, close)
        else:
            self._send(404, {"error": {"message": f"no route {method} {path}"}}, close)

    def _answer(self, payload: dict[str, Any], close: bool) -> None:
        _Http.in_flight -= 1
        if self.transport is None or self.transport.is_closing():
            return  # the client gave up on it (or was killed): not served
        _Http.served += 1
        self._send(200, {"id": f"inst-{_Http.served}", **payload}, close)

    def _send(self, code: int, payload: dict[str, Any], close: bool) -> None:
        data = json.dumps(payload).encode()
        head = (f"HTTP/1.1 {code} {_REASONS.get(code, 'Error')}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(data)}\r\n" + ("Connection: close\r\n" if close else "") + "\r\n")
        assert self.transport is not None
        self.transport.write(head.encode("latin-1") + data)
        if close:
            self.transport.close()


def reply_ref(prompt: str) -> str:
    """The tag every reply starts with: the CRC-32 of the prompt as the server read it (chat: contents joined by \\n)."""
    return f"{zlib.crc32(prompt.encode('utf-8')):08x}"


async def _serve(port: int, words: int, hold_s: float) -> None:
    text = _reply_text(words)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Http(text, hold_s), "127.0.0.1", port, backlog=1024)
    print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--reply-words", type=int, default=60, help="words in every completion")
    ap.add_argument("--hold-s", type=float, default=0.0, help="seconds to wait before each answer")
    args = ap.parse_args()
    try:
        asyncio.run(_serve(args.port, args.reply_words, args.hold_s))
    except KeyboardInterrupt:
        pass


class InstantServer:
    """Start the server in a child process; `base_url` once entered. `cpu_seconds()` reads its CPU time."""

    def __init__(self, reply_words: int = 60, hold_s: float = 0.0) -> None:
        self.reply_words = reply_words
        self.hold_s = hold_s
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> InstantServer:
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--reply-words", str(self.reply_words),
             "--hold-s", str(self.hold_s)],
            stdout=subprocess.PIPE, text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("PORT "):
            self.proc.kill()
            raise RuntimeError(f"instant server did not start (said {line!r})")
        self.port = int(line.split()[1])
        return self

    def stats(self) -> dict[str, int]:
        """Since the start: completions answered, connections accepted, the most requests held at once."""
        import httpx

        return httpx.get(f"http://127.0.0.1:{self.port}/stats", timeout=10).json()

    def served(self) -> int:
        return int(self.stats()["served"])

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process so far (Linux /proc)."""
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def __exit__(self, *exc: Any) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


if __name__ == "__main__":
    main()
