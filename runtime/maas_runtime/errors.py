"""Error types of the runtime and their mapping to the exit codes of `maas_api.contract.ExitCode`.

An error is classified by where it happened and by its type, never by the words of its message:
- `PermanentError` (a plan field or variable to fix) -> 78;
- anything raised by the user's code (factory, `init_weights`, a unit's forward), whatever its type, is
  wrapped in `UserCodeError` -> 1: a restart reruns the same code;
- anything raised while the processes find each other (`communication("rendezvous")`) or while waiting on a
  collective, and the communication library's own errors (`torch.distributed.DistError`; gloo raises plain
  RuntimeErrors that carry the source location of its transport) -> 75: a restart of the gang may fix it;
- anything else -> 1.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

from maas_api.contract import ExitCode


class PermanentError(Exception):
    """Bad input that a restart cannot fix; `field` is the plan field (or env var) to correct."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class RetryableError(Exception):
    """A transient failure (peer lost, rendezvous or communication timeout): restarting the gang may fix it."""


class UserCodeError(Exception):
    """The user's model code raised; `where` says which code (restarting runs the same code again)."""

    def __init__(self, where: str, error: BaseException) -> None:
        super().__init__(f"{where} raised {type(error).__name__}: {first_line(error)}")
        self.where = where


# gloo raises RuntimeError("[<path>/gloo/transport/tcp/pair.cc:561] Connection closed by peer ...") for a lost
# peer and a timeout alike: the bracketed source location says the error comes from gloo, whatever its words.
_GLOO_SOURCE = re.compile(r"^\[(?:[^\]\s]*/)?gloo/[^\]\s]+:\d+\]")


def causes(error: BaseException) -> list[BaseException]:
    """The error and everything it was raised from (pipelining wraps the errors of stage modules)."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def is_communication_error(error: BaseException) -> bool:
    """Raised by torch.distributed's communication itself (a lost peer, a timeout), judged by type and origin."""
    import torch.distributed as dist

    if isinstance(error, dist.DistError):
        return True
    return isinstance(error, RuntimeError) and _GLOO_SOURCE.match(str(error)) is not None


def as_user_error(where: str, error: Exception) -> Exception:
    """An error raised inside the user's code, as UserCodeError; the runtime's own errors and communication
    errors stay as they are (FSDP gathers parameters in hooks that run inside a unit's forward)."""
    if isinstance(error, PermanentError | RetryableError | UserCodeError) or is_communication_error(error):
        return error
    return UserCodeError(where, error)


@contextmanager
def user_code(where: str) -> Iterator[None]:
    """Errors raised inside are the user's (exit 1), see `as_user_error`."""
    try:
        yield
    except Exception as error:
        wrapped = as_user_error(where, error)
        if wrapped is error:
            raise
        raise wrapped from error


@contextmanager
def communication(where: str) -> Iterator[None]:
    """Errors raised inside are retryable (exit 75): the processes are finding or waiting for each other."""
    try:
        yield
    except (PermanentError, UserCodeError):
        raise
    except Exception as error:
        raise RetryableError(f"{where} failed ({type(error).__name__}: {first_line(error)})") from error


def classify(error: BaseException) -> tuple[ExitCode, str]:
    """The exit code for an error that ended the worker, and a one-line reason for stderr."""
    chain = causes(error)
    for kind, code in (
        (PermanentError, ExitCode.PERMANENT),
        (UserCodeError, ExitCode.UNCAUGHT_ERROR),
        (RetryableError, ExitCode.RETRYABLE),
    ):
        for cause in chain:
            if isinstance(cause, kind):
                return code, str(cause)
    for cause in chain:
        if is_communication_error(cause):
            return ExitCode.RETRYABLE, f"communication error ({type(cause).__name__}: {first_line(cause)})"
    return ExitCode.UNCAUGHT_ERROR, f"uncaught {type(error).__name__}: {first_line(error)}"


def first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else "(no message)"
