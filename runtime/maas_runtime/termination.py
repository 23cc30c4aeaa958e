"""SIGTERM as a flag: the loops finish the current step or batch, then checkpoint or drain and exit."""

from __future__ import annotations

import signal
import threading
from types import FrameType


def install_termination_flag() -> threading.Event:
    """An event set by SIGTERM (and SIGINT) instead of dying mid-step."""
    flag = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        flag.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return flag
