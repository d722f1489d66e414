"""A minimal OpenAI-compatible server on 127.0.0.1 for tests that need to see
what the `openai` backend sends (headers, bodies) or to make it fail on cue.

It answers `/v1/chat/completions` and `/v1/completions` with `reply(body)` and
records every request's headers and JSON body. `status(body)` may return an
HTTP error code to send instead. The real llama.cpp server is tested
separately (tests of the backends); this stub exists to look at the wire.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def _prompt_of(body: dict[str, Any]) -> str:
    if "messages" in body:
        return "\n".join(str(m.get("content", "")) for m in body["messages"])
    return str(body.get("prompt", ""))


class LocalServer:
    """A ThreadingHTTPServer on 127.0.0.1 (a free port) served from a daemon thread; a context manager."""

    def _serve(self, handler: type[BaseHTTPRequestHandler], daemon_threads: bool = False) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = daemon_threads
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


class OpenAIStub(LocalServer):
    def __init__(
        self,
        reply: Callable[[str], str] = lambda prompt: "Step one. The answer is 42.",
        status: Callable[[str], int] = lambda prompt: 200,
        echo_auth_in_errors: bool = False,
        usage: bool = True,
    ) -> None:
        self.reply = reply
        self.usage = usage
        self.status = status
        self.echo_auth_in_errors = echo_auth_in_errors
        self.echoed = 0
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:  # noqa: N802  (http.server API)
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                prompt = _prompt_of(body)
                with stub._lock:
                    stub.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                code = stub.status(prompt)
                if code != 200:
                    msg = f"stub error {code}"
                    if stub.echo_auth_in_errors:
                        msg += f": bad credentials {self.headers.get('Authorization', '')}"
                        with stub._lock:
                            stub.echoed += 1
                    payload = {"error": {"message": msg, "type": "invalid_request_error"}}
                else:
                    text = stub.reply(prompt)
                    usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": len(text.split())}
                    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
                    if self.path.endswith("/chat/completions"):
                        choice = {"index": 0, "message": {"role": "assistant", "content": text},
                                  "finish_reason": "stop"}
                        obj = "chat.completion"
                    else:
                        choice = {"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}
                        obj = "text_completion"
                    payload = {"id": "stub-1", "object": obj, "created": 0, "model": body.get("model", "stub"),
                               "choices": [choice]}
                    if stub.usage:  # some servers and proxies report none
                        payload["usage"] = usage
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._serve(Handler)
