"""A loopback OpenAI-compatible chat-completions server for tests (stdlib only).

It answers ``POST /v1/chat/completions`` the way an OpenAI-compatible endpoint does, and lets a
test script the faults the judge must survive or report:

* ``server.faults``: statuses answered (in order) to the next requests instead of a completion,
  e.g. ``[429, 500]``; 429s carry ``retry-after-ms: 1`` so the client's backoff stays short;
* ``server.key``: the bearer token it accepts; any other answers 401 with OpenAI's wording, which
  *echoes the key it was sent* (as the real API does, partly masked): the client must not show it;
* ``server.reply``: ``f(user_message) -> str``, the judge's reply (the verdict, or garbage).

It records every request (``server.requests``: model, messages, temperature, max_tokens) and the
most requests it ever had in flight at once (``server.max_in_flight``).

Usage::

    with FakeOpenAI(key="sk-test", reply=lambda text: "[[A]]") as server:
        client = openai.OpenAI(base_url=server.url, api_key="sk-test")
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable


class FakeOpenAI:
    def __init__(self, key: str | None = "sk-test", reply: Callable[[str], str] = lambda text: "[[A]]", delay: float = 0.0):
        self.key, self.reply, self.delay = key, reply, delay
        self.faults: list[int] = []
        self.requests: list[dict] = []
        self.statuses: list[int] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def __enter__(self) -> "FakeOpenAI":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def _send(self, status: int, body: dict, headers: dict | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)
                with server._lock:
                    server.statuses.append(status)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                if self.path.rstrip("/") != "/v1/chat/completions":
                    return self._send(404, {"error": {"message": f"no route {self.path}", "type": "invalid_request_error"}})
                sent = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
                if server.key is not None and sent != server.key:
                    return self._send(401, {"error": {"message": f"Incorrect API key provided: {sent}. You can find your API "
                                                      "key at https://platform.openai.com/account/api-keys.",
                                                      "type": "invalid_request_error", "code": "invalid_api_key"}})
                with server._lock:
                    fault = server.faults.pop(0) if server.faults else None
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    if server.delay:
                        time.sleep(server.delay)
                    if fault is not None:
                        message = {429: "Rate limit reached", 500: "The server had an error"}.get(fault, "fault")
                        return self._send(fault, {"error": {"message": f"{message} (key {sent})", "type": "server_error"}},
                                          {"retry-after-ms": "1"})
                    with server._lock:
                        server.requests.append({k: body.get(k) for k in ("model", "messages", "temperature", "max_tokens")})
                    text = server.reply(body["messages"][-1]["content"])
                    self._send(200, {
                        "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()), "model": body.get("model"),
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                    })
                finally:
                    with server._lock:
                        server.in_flight -= 1

        return Handler


def prefers(marker: str) -> Callable[[str], str]:
    """A consistent judge: the response containing ``marker`` wins, in either position."""

    def reply(text: str) -> str:
        a, b = _responses(text)
        if (marker in a) == (marker in b):
            return "[[tie]]"
        return "[[A]]" if marker in a else "[[B]]"

    return reply


def _responses(text: str) -> tuple[str, str]:
    """Response A and B out of one of our judge prompts."""
    a = text.split("[Response A]", 1)[1].split("[End of Response A]", 1)[0]
    b = text.split("[Response B]", 1)[1].split("[End of Response B]", 1)[0]
    return a, b
