"""A fuzzer of malformed HTTP requests for the serving endpoint: raw bytes over a socket, one per connection.

`malformed_requests()` returns hand-picked bad requests (headers, bodies, methods, numbers that are not
JSON) and seeded random mutations of a valid body. The property the server must keep for every one of
them: an answer within the timeout, never a 5xx, and a strict JSON body (no NaN) whenever it says JSON.
"""

from __future__ import annotations

import json
import random
import socket
from dataclasses import dataclass


@dataclass(frozen=True)
class RawAnswer:
    status: int | None
    """None: the server closed the connection without a status line."""
    headers: dict[str, str]
    body: bytes


def request(method: str, path: str, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    """A raw HTTP/1.1 request; `headers` replaces the default Content-Length when it names one."""
    fields = {"Host": "fuzz", "Content-Length": str(len(body)), **(headers or {})}
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in fields.items() if v is not None
    )
    return head.encode() + b"\r\n" + body


def send(port: int, raw: bytes, timeout: float = 10.0) -> RawAnswer:
    """Send `raw`, close our side (a short body then ends), read the answer until the server hangs up."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as connection:
        try:
            connection.sendall(raw)
            connection.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server may answer and hang up before reading everything
        chunks = []
        while True:
            try:
                chunk = connection.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    data = b"".join(chunks)
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        return RawAnswer(None, {}, data)
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return RawAnswer(int(parts[1]), headers, body)


def _strict_json(body: bytes) -> object:
    def refuse(constant: str) -> object:
        raise ValueError(f"{constant} in a response")

    return json.loads(body, parse_constant=refuse)


def check_answer(what: str, answer: RawAnswer) -> None:
    """The fuzzing property: a status below 500, and strict JSON when the server says JSON."""
    assert answer.status is not None, f"{what}: no status line ({answer.body[:200]!r})"
    assert answer.status < 500, f"{what}: {answer.status} {answer.body[:300]!r}"
    # An answer to HEAD has no body.
    if answer.headers.get("content-type") == "application/json" and (answer.body or answer.status == 200):
        _strict_json(answer.body)


def malformed_requests(
    path: str, valid: bytes, max_body: int, seed: int, mutations: int
) -> list[tuple[str, bytes]]:
    """(what, raw request) pairs; `valid` is a body the endpoint accepts, `max_body` its size limit."""
    cases: list[tuple[str, bytes]] = []
    for length in ("abc", "-1", "1e3", "", " 12x", "99999999999999999999", str(max_body + 1), "٣"):
        cases.append(
            (f"Content-Length: {length!r}", request("POST", path, valid, {"Content-Length": length}))
        )
    cases += [
        ("200 MB announced", request("POST", path, valid[:10], {"Content-Length": str(200 * 2**20)})),
        (
            "body shorter than announced",
            request("POST", path, valid, {"Content-Length": str(len(valid) + 10)}),
        ),
        ("chunked", request("POST", path, b"5\r\nhello\r\n0\r\n\r\n", {"Transfer-Encoding": "chunked"})),
        ("PUT", request("PUT", path, valid)),
        ("DELETE", request("DELETE", path, b"")),
        ("FOO method", request("FOO", path, b"")),
        ("GET on a POST path", request("GET", path, b"")),
        ("HEAD", request("HEAD", path, b"")),
        ("unknown path", request("POST", "/nothing", valid)),
        ("garbage request line", b"\x00\x01\x02 garbage\r\n\r\n"),
        ("no version", b"POST " + path.encode() + b"\r\n\r\n"),
        ("header line too long", request("POST", path, valid, {"X-Long": "a" * 70_000})),
        ("too many headers", request("POST", path, valid, {f"X-{i}": "1" for i in range(150)})),
    ]
    # Built by hand: a dict cannot hold the header twice.
    twice = f"POST {path} HTTP/1.1\r\nContent-Length: {len(valid)}\r\nContent-Length: 3\r\n\r\n"
    cases.append(("two different Content-Lengths", twice.encode() + valid))
    bodies: dict[str, bytes] = {
        "empty body": b"",
        "not JSON": b"hello",
        "invalid UTF-8": b'{"inputs": "\xff\xfe"}',
        "a JSON list": b"[]",
        "no inputs": b'{"wrong": 1}',
        "inputs null": b'{"inputs": null}',
        "inputs a number": b'{"inputs": 1}',
        "inputs a string": b'{"inputs": "abc"}',
        "inputs empty": b'{"inputs": []}',
        "ragged inputs": b'{"inputs": [[1, 2], [3]]}',
        "strings inside": b'{"inputs": [["a", "b", "c", "d"]]}',
        "objects inside": b'{"inputs": [[{}, {}, {}, {}]]}',
        "booleans": b'{"inputs": [[true, false, true, false]]}',
        "NaN": b'{"inputs": [[NaN, 0, 0, 0]]}',
        "Infinity": b'{"inputs": [[Infinity, 0, 0, 0]]}',
        "-Infinity": b'{"inputs": [[-Infinity, 0, 0, 0]]}',
        "1e400 (infinite as a float)": b'{"inputs": [[1e400, 0, 0, 0]]}',
        "huge integer": b'{"inputs": [[100000000000000000000000000000, 0, 0, 0]]}',
        "integer with 5000 digits": b'{"inputs": [[' + b"9" * 5000 + b", 0, 0, 0]]}",
        "deep nesting": b'{"inputs": ' + b"[" * 30_000 + b"]" * 30_000 + b"}",
        "too many inputs": json.dumps({"inputs": [[0] * 4] * 10_000}).encode()[: max_body - 100],
    }
    cases += [(what, request("POST", path, body)) for what, body in bodies.items()]
    generator = random.Random(seed)
    alphabet = b'[]{},:"-+.eE0123456789 nullNaNInfinitytruefalse\x00\xff\\'
    for i in range(mutations):
        body = bytearray(valid)
        for _ in range(generator.randint(1, 4)):
            at = generator.randrange(len(body) + 1)
            action = generator.choice(("delete", "insert", "replace", "truncate", "repeat"))
            if action == "delete" and body:
                del body[min(at, len(body) - 1)]
            elif action == "insert":
                body[at:at] = bytes([generator.choice(alphabet)])
            elif action == "replace" and body:
                body[min(at, len(body) - 1)] = generator.choice(alphabet)
            elif action == "truncate":
                del body[at:]
            elif action == "repeat":
                body[at:at] = body[at : at + generator.randint(1, 20)] * generator.randint(2, 50)
        cases.append((f"mutation {i}: {bytes(body[:80])!r}", request("POST", path, bytes(body))))
    return cases
