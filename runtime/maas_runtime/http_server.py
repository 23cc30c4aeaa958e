"""A tiny threaded HTTP server (stdlib) for the progress, metrics and serving endpoints.

It faces clients it cannot trust: a request it cannot take whole (no or bad `Content-Length`, a body over
`max_body_bytes`, a body shorter than announced, a client that stops sending) is answered with a 4xx and its
connection closed, before the body is read; a handler's error is a 500 without taking the worker down.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

DEFAULT_MAX_BODY_BYTES = 64 * 1024
READ_TIMEOUT_SECONDS = 30.0
"""How long a connection may stay silent while its request is read (a stalled client frees its thread)."""
LISTEN_BACKLOG = 1024
"""Connections the kernel holds for the accept loop. The stdlib's default of 5 drops the SYNs of a burst of new
connections (64 clients on a busy machine) and their clients wait for the SYN retransmit: p99 latencies of 1-2 s
on the real node (benchmarks/serving.py). Linux caps it at net.core.somaxconn."""


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"

    @classmethod
    def json(cls, status: int, payload: Any) -> Response:
        # allow_nan=False: NaN and Infinity are not JSON; a payload holding them is a bug to surface.
        return cls(status, (json.dumps(payload, allow_nan=False) + "\n").encode())

    @classmethod
    def text(cls, status: int, text: str, content_type: str = "text/plain; version=0.0.4") -> Response:
        return cls(status, text.encode(), content_type)


Handler = Callable[[bytes], Response]
"""Gets the request body, returns the response."""


class _RequestError(Exception):
    """A request whose body cannot or must not be read; answered with `status`, connection closed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = LISTEN_BACKLOG

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that vanished mid-request is the client's problem, not a traceback on stderr."""


class HttpServer:
    """Serves `routes[(method, path)]` from a daemon thread until `close()`."""

    def __init__(
        self,
        port: int,
        routes: dict[tuple[str, str], Handler],
        host: str = "0.0.0.0",
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        self.routes = routes
        self.max_body_bytes = max_body_bytes
        server = self

        class RequestHandler(BaseHTTPRequestHandler):
            timeout = READ_TIMEOUT_SECONDS
            # A garbled request line would otherwise count as HTTP/0.9, answered without a status line.
            default_request_version = "HTTP/1.0"

            def __getattr__(self, name: str) -> Any:
                # BaseHTTPRequestHandler answers an unknown method with 501; every method goes through
                # _answer instead, which says 405 (or 404) like for a known one.
                if name.startswith("do_"):
                    return lambda: self._answer(name[3:])
                raise AttributeError(name)

            def _read_body(self) -> bytes:
                if self.headers.get("Transfer-Encoding"):
                    raise _RequestError(HTTPStatus.LENGTH_REQUIRED, "send the body with a Content-Length")
                values = self.headers.get_all("Content-Length") or ["0"]
                raw = values[0].strip()
                if len(set(values)) > 1 or not raw.isdigit() or not raw.isascii():
                    raise _RequestError(HTTPStatus.BAD_REQUEST, f"bad Content-Length {values}")
                length = int(raw)
                if length > server.max_body_bytes:
                    raise _RequestError(
                        HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                        f"the body has {length} bytes, at most {server.max_body_bytes} are accepted",
                    )
                try:
                    body = self.rfile.read(length) if length else b""
                except TimeoutError as error:
                    raise _RequestError(
                        HTTPStatus.REQUEST_TIMEOUT, "the body did not arrive in time"
                    ) from error
                if len(body) != length:
                    raise _RequestError(
                        HTTPStatus.BAD_REQUEST, f"the body ended after {len(body)} of {length} bytes"
                    )
                return body

            def _answer(self, method: str) -> None:
                path = self.path.split("?", 1)[0]
                handler = server.routes.get((method, path))
                try:
                    body = self._read_body()
                    if handler is None:
                        allowed = sorted(m for m, p in server.routes if p == path)
                        if allowed:
                            raise _RequestError(
                                HTTPStatus.METHOD_NOT_ALLOWED, f"{path} takes {', '.join(allowed)}"
                            )
                        raise _RequestError(HTTPStatus.NOT_FOUND, f"no {method} {path}")
                except _RequestError as problem:
                    # The unread body (or whatever follows) cannot be told from the next request: hang up.
                    self.close_connection = True
                    response = Response.json(problem.status, {"error": str(problem)})
                else:
                    try:
                        response = handler(body)
                    except Exception as error:  # a broken request must not kill the worker
                        response = Response.json(500, {"error": f"{type(error).__name__}: {error}"})
                self._send(response)

            def _send(self, response: Response) -> None:
                self.send_response(response.status)
                self.send_header("Content-Type", response.content_type)
                self.send_header("Content-Length", str(len(response.body)))
                if self.close_connection:
                    self.send_header("Connection", "close")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(response.body)

            def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
                """Errors found by the stdlib's request parsing (request line, headers), as JSON too."""
                self.close_connection = True
                self._send(Response.json(code, {"error": message or HTTPStatus(code).phrase}))

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = _QuietServer((host, port), RequestHandler)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, name=f"http-{self.port}", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
