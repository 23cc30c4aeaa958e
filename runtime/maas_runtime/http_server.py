"""A tiny threaded HTTP server (stdlib) for the progress, metrics and serving endpoints."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"

    @classmethod
    def json(cls, status: int, payload: Any) -> Response:
        return cls(status, (json.dumps(payload) + "\n").encode())

    @classmethod
    def text(cls, status: int, text: str, content_type: str = "text/plain; version=0.0.4") -> Response:
        return cls(status, text.encode(), content_type)


Handler = Callable[[bytes], Response]
"""Gets the request body, returns the response."""


class HttpServer:
    """Serves `routes[(method, path)]` from a daemon thread until `close()`."""

    def __init__(self, port: int, routes: dict[tuple[str, str], Handler], host: str = "0.0.0.0") -> None:
        self.routes = routes
        server = self

        class RequestHandler(BaseHTTPRequestHandler):
            def _answer(self, method: str) -> None:
                path = self.path.split("?", 1)[0]
                handler = server.routes.get((method, path))
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if handler is None:
                    response = Response.json(404, {"error": f"no {method} {path}"})
                else:
                    try:
                        response = handler(body)
                    except Exception as error:  # a broken request must not kill the worker
                        response = Response.json(500, {"error": f"{type(error).__name__}: {error}"})
                self.send_response(response.status)
                self.send_header("Content-Type", response.content_type)
                self.send_header("Content-Length", str(len(response.body)))
                self.end_headers()
                self.wfile.write(response.body)

            def do_GET(self) -> None:
                self._answer("GET")

            def do_POST(self) -> None:
                self._answer("POST")

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer((host, port), RequestHandler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, name=f"http-{self.port}", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
