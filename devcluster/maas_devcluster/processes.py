"""Starts control-plane components as detached processes, and finds, measures and stops them by pid."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path

# Popen objects of components this Python process started; kept so it can reap them (no zombies while a
# long-lived caller such as a pytest session runs) and so they are never garbage-collected while running.
_STARTED_HERE: dict[int, subprocess.Popen[bytes]] = {}


def start_detached(command: list[str], log_path: Path, env: dict[str, str] | None = None) -> int:
    """Starts a component in its own session (so it outlives `up`), stdout and stderr to its log."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
            close_fds=True,
        )
    _STARTED_HERE[process.pid] = process
    return process.pid


def _reap_if_ours(pid: int) -> None:
    process = _STARTED_HERE.get(pid)
    if process is not None and process.poll() is not None:
        del _STARTED_HERE[pid]


def _process_state(pid: int) -> str | None:
    """The one-letter state from /proc (R, S, Z, ...), or None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name in parentheses may contain spaces; the state follows the last ')'.
    return stat.rsplit(")", 1)[1].split()[0]


def is_running(pid: int) -> bool:
    """Alive and not a zombie (an unreaped dead child still has a pid, and PID 1 here may never reap)."""
    _reap_if_ours(pid)
    state = _process_state(pid)
    return state is not None and state not in ("Z", "X")


def command_line(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def runs_binary(pid: int, binary: Path) -> bool:
    """Guards against pid reuse: the pid must still run the binary we started."""
    arguments = command_line(pid)
    return is_running(pid) and bool(arguments) and Path(arguments[0]) == binary


def resident_memory_bytes(pid: int) -> int:
    """VmRSS from /proc, 0 when the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def _signal_group(pid: int, signal_number: int) -> None:
    # Each component leads its own session and process group, so this reaches anything it forked too.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal_number)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal_number)


def stop_processes(pids: list[int], timeout_seconds: float = 15.0) -> list[int]:
    """SIGTERM to all, SIGKILL to whatever still runs after the timeout; returns the pids that needed SIGKILL."""
    running = [pid for pid in pids if is_running(pid)]
    for pid in running:
        _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline and any(is_running(pid) for pid in running):
        time.sleep(0.1)
    killed = [pid for pid in running if is_running(pid)]
    for pid in killed:
        _signal_group(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and any(is_running(pid) for pid in killed):
        time.sleep(0.05)
    for pid in running:
        process = _STARTED_HERE.pop(pid, None)
        if process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=1.0)
    return killed


def recorded_pids(root: Path, pid_file: Callable[[str], Path], components: Iterable[str]) -> dict[str, int]:
    """Pids from the components' pid files whose process still runs that component from the state folder
    `root`: every component's command line names a file there, so a reused pid does not count."""
    pids: dict[str, int] = {}
    for component in components:
        try:
            pid = int(pid_file(component).read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            continue
        arguments = command_line(pid)
        if (
            is_running(pid)
            and arguments
            and Path(arguments[0]).name == component
            and any(str(root) in argument for argument in arguments[1:])
        ):
            pids[component] = pid
    return pids
