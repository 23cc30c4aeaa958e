"""Error types of the runtime and their mapping to the exit codes of `maas_api.contract.ExitCode`."""

from __future__ import annotations

from maas_api.contract import ExitCode


class PermanentError(Exception):
    """Bad input that a restart cannot fix; `field` is the plan field (or env var) to correct."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class RetryableError(Exception):
    """A transient failure (peer lost, rendezvous or communication timeout): restarting the gang may fix it."""


# Words in the messages of gloo / NCCL / c10d errors that PyTorch raises as plain RuntimeError.
_COMMUNICATION_WORDS = (
    "gloo",
    "nccl",
    "connection",
    "connect",
    "timed out",
    "timeout",
    "peer",
    "socket",
    "broken pipe",
    "rendezvous",
    "store",
)


def _causes(error: BaseException) -> list[BaseException]:
    """The error and everything it was raised from (pipelining wraps communication errors)."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _is_communication_error(error: BaseException) -> bool:
    import torch.distributed as dist

    if isinstance(error, dist.DistError | ConnectionError | TimeoutError):
        return True
    return isinstance(error, RuntimeError) and any(w in str(error).lower() for w in _COMMUNICATION_WORDS)


def classify(error: BaseException) -> tuple[ExitCode, str]:
    """The exit code for an error that ended the worker, and a one-line reason for stderr."""
    chain = _causes(error)
    for cause in chain:
        if isinstance(cause, PermanentError):
            return ExitCode.PERMANENT, str(cause)
    for cause in chain:
        if isinstance(cause, RetryableError):
            return ExitCode.RETRYABLE, str(cause)
    for cause in chain:
        if _is_communication_error(cause):
            return ExitCode.RETRYABLE, f"communication error ({type(cause).__name__}: {_first_line(cause)})"
    return ExitCode.UNCAUGHT_ERROR, f"uncaught {type(error).__name__}: {_first_line(error)}"


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else "(no message)"
