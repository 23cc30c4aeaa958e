"""How a worker ends: SIGTERM as a flag (the loops finish the current step or batch, then checkpoint or drain
and exit), and the one-line reason of a failure written where Kubernetes shows it."""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType

from maas_api.contract import TERMINATION_MESSAGE_ENV, TERMINATION_MESSAGE_LIMIT


def install_termination_flag() -> threading.Event:
    """An event set by SIGTERM (and SIGINT) instead of dying mid-step."""
    flag = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        flag.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return flag


def record_termination_message(line: str) -> None:
    """Appends `line` to the pod's termination message (several processes of one pod may fail; the kubelet
    keeps the first TERMINATION_MESSAGE_LIMIT bytes, so the first failures are what the operator quotes).
    Never raises: reporting a failure must not hide it."""
    path = os.environ.get(TERMINATION_MESSAGE_ENV)
    if not path:
        return
    data = (line.strip().replace("\n", " ")[: TERMINATION_MESSAGE_LIMIT - 1] + "\n").encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            if os.fstat(fd).st_size < TERMINATION_MESSAGE_LIMIT:
                os.write(fd, data)
        finally:
            os.close(fd)
    except OSError:
        pass
