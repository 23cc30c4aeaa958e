"""Helpers shared by the runtime tests: plans for tiny models, ports, HTTP."""

from __future__ import annotations

import json
import os
import socket
import time
import urllib.error
import urllib.request
from typing import Any

from maas_api.spec import ModelSpec, UnitProfile

from tests.manifests import REPO

# Worker processes import test factories as `tests.runtime.factories`, and this checkout's packages (the
# PYTHONPATH the tests run with) rather than whichever checkout a shared virtual environment was installed from.
WORKER_ENV = {"PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}

TINY_MLP = ModelSpec(catalog="MLP", args={"input": 8, "hidden": 16, "layers": 4, "output": 4})
TINY_TRANSFORMER = ModelSpec(
    catalog="Transformer", args={"vocab": 32, "dim": 16, "layers": 2, "heads": 2, "seqLen": 8, "ffnMult": 2}
)
TINY_MULTITASK = ModelSpec(
    catalog="MultiTaskMLP",
    args={"input": 6, "hidden": 12, "trunkLayers": 3, "heads": {"classify": 5, "regress": 2}},
)
TOLERANCE = 1e-5
"""Largest absolute difference allowed between a distributed run and its single-process reference (float32)."""


def factory_model(reference: str, units: list[str], **args: object) -> ModelSpec:
    """A factory model with a placeholder profile (every unit costs the same)."""
    profile = [
        UnitProfile(name=u, params=1, flops_per_sample=1, activation_bytes_per_sample=1) for u in units
    ]
    return ModelSpec(factory=reference, args=args, profile=profile)


def free_port(consecutive: int = 1) -> int:
    """A port free now, with the `consecutive - 1` ports after it."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        try:
            for following in range(port + 1, port + consecutive):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", following))
        except OSError:
            continue
        return port


def http(method: str, url: str, body: Any = None, timeout: float = 30) -> tuple[int, Any]:
    """(status, parsed JSON or text) of one request; HTTP errors are returned, not raised."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    text = raw.decode()
    try:
        return status, json.loads(text)
    except json.JSONDecodeError:
        return status, text


def wait_until(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
