"""A minimal HTTPS client for the API server (stdlib only): health checks and bulk node creation."""

from __future__ import annotations

import http.client
import json
import ssl
import threading
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class ApiError(RuntimeError):
    """A response the caller did not expect, with the server's own message."""

    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        super().__init__(f"{method} {path} -> {status}: {body[:500]}")
        self.status = status


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class ApiClient:
    """Talks to one API server with a client certificate; one keep-alive connection per thread."""

    def __init__(self, server: str, ca_cert: Path, client_cert: Path, client_key: Path) -> None:
        parsed = urllib.parse.urlsplit(server)
        self.host = parsed.hostname or "127.0.0.1"
        self.port = parsed.port or 443
        self._tls = ssl.create_default_context(cafile=str(ca_cert))
        self._tls.load_cert_chain(str(client_cert), str(client_key))
        self._local = threading.local()

    def _connection(self, timeout: float) -> http.client.HTTPSConnection:
        connection: http.client.HTTPSConnection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = http.client.HTTPSConnection(self.host, self.port, context=self._tls, timeout=timeout)
            self._local.connection = connection
        connection.timeout = timeout
        return connection

    def _forget_connection(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
        self._local.connection = None

    def request(self, method: str, path: str, body: Any = None, timeout: float = 10.0) -> Response:
        """Sends one request; a dropped keep-alive connection is reopened once."""
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json"}
        if payload is not None:
            headers["Content-Type"] = "application/json"
        for attempt in range(2):
            connection = self._connection(timeout)
            try:
                connection.request(method, path, body=payload, headers=headers)
                reply = connection.getresponse()
                return Response(reply.status, reply.read())
            except (http.client.HTTPException, ConnectionError, OSError):
                self._forget_connection()
                if attempt == 1:
                    raise
        raise AssertionError("unreachable")

    def is_ready(self) -> bool:
        """True when /readyz answers ok; any connection error counts as not ready yet."""
        try:
            return self.request("GET", "/readyz", timeout=3.0).status == 200
        except OSError:
            return False

    def get_json(self, path: str) -> Any:
        response = self.request("GET", path)
        if response.status != 200:
            raise ApiError("GET", path, response.status, response.body.decode(errors="replace"))
        return response.json()

    def create(self, path: str, manifest: dict[str, Any], exist_ok: bool = True) -> bool:
        """POSTs a manifest; True when created, False when it already existed and exist_ok."""
        response = self.request("POST", path, manifest)
        if response.status == 201:
            return True
        if response.status == 409 and exist_ok:
            return False
        raise ApiError("POST", path, response.status, response.body.decode(errors="replace"))

    def close(self) -> None:
        self._forget_connection()
