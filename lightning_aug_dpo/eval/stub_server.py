"""A loopback OpenAI-compatible chat-completions server, for tests and offline smoke runs.

``StubChatServer`` speaks just enough of ``POST /v1/chat/completions`` for the HTTP judge, and can
misbehave on request: a test queues faults (``"401"``, ``"425"``, ``"429"``, ``"500"``, ``"503"``,
``"slow"``, ``"garbage"``, ``"drop"``, ``"not_chat"``: a 200 whose JSON is an error, not a chat
completion) that the next requests get, in order, before normal replies resume. Normal replies
come from ``responder(body) -> text``. Every request body and its ``Authorization`` header are
recorded (the secrets test checks that keys reach the header and nothing else). An error fault's
body is ``{"error": {"message": error_detail}}``, where ``{auth}`` in ``error_detail`` becomes the
request's ``Authorization`` header: a careless server that echoes the key, as the secrets tests
need (the judge must scrub it from its error messages). A ``"429"`` carries ``Retry-After:
retry_after`` (default ``0``: retry at once).

    with StubChatServer(lambda body: "0.5") as server:
        judge = OpenAIJudge(base_url=server.base_url, model="stub")
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

FAULTS = ("429", "500", "503", "slow", "garbage", "drop", "401", "not_chat", "425")


class StubChatServer:
    """Threaded HTTP server on ``127.0.0.1`` (a free port); use as a context manager."""

    def __init__(
        self,
        responder: Callable[[dict[str, Any]], str] | None = None,
        model: str = "stub-judge",
        slow_seconds: float = 2.0,
        error_detail: str = "stub fault",
        retry_after: str = "0",
    ) -> None:
        self.responder = responder or (lambda body: "1.0")
        self.model = model
        self.slow_seconds = slow_seconds
        self.error_detail = error_detail
        self.retry_after = retry_after  # the Retry-After header of a "429" fault
        self.faults: deque[str] = deque()
        self.requests: list[dict[str, Any]] = []
        self.auth_headers: list[str | None] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def fail_next(self, *faults: str) -> None:
        """Queue faults for the next requests (one each), e.g. ``fail_next("429", "500")``."""
        unknown = [f for f in faults if f not in FAULTS]
        if unknown:
            raise ValueError(f"unknown fault {unknown[0]!r}; use one of {FAULTS}")
        with self._lock:
            self.faults.extend(faults)

    def __enter__(self) -> StubChatServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _next_fault(self) -> str | None:
        with self._lock:
            return self.faults.popleft() if self.faults else None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # quiet test output
                return None

            def _send(self, code: int, payload: bytes, headers: dict[str, str] | None = None):
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(payload)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                auth = self.headers.get("Authorization")
                with stub._lock:
                    stub.requests.append(body)
                    stub.auth_headers.append(auth)
                if not self.path.endswith("/chat/completions"):
                    self._send(404, b'{"error": "not found"}')
                    return
                fault = stub._next_fault()
                if fault == "drop":
                    self.close_connection = True
                    self.connection.close()
                    return
                if fault == "slow":
                    time.sleep(stub.slow_seconds)
                detail = stub.error_detail.replace("{auth}", str(auth))
                error = json.dumps({"error": {"message": detail}}).encode("utf-8")
                if fault in ("429", "500", "503", "401", "425"):
                    retry = {"Retry-After": stub.retry_after} if fault == "429" else None
                    self._send(int(fault), error, retry)
                    return
                if fault == "not_chat":
                    self._send(200, error)
                    return
                if fault == "garbage":
                    self._send(200, b"<html>definitely not json")
                    return
                text = stub.responder(body)
                reply = {
                    "id": f"stub-{len(stub.requests)}",
                    "object": "chat.completion",
                    "model": stub.model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": "stop",
                        }
                    ],
                }
                self._send(200, json.dumps(reply).encode("utf-8"))

        return Handler
