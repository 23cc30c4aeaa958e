"""What to do after a worker fails or disappears: restart the gang, fail the job, or wait.

Pure: decisions come from exit codes (the job's `failurePolicy.exitCodes` rules first, then
`maas_api.contract.PERMANENT_EXIT_CODES`), pod status reasons and node health — never from message text.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from enum import StrEnum

from maas_api.contract import PERMANENT_EXIT_CODES
from maas_api.spec import ExitAction, FailurePolicySpec

from maas_operator.world import WorkerPod


class Verdict(StrEnum):
    RETRY = "Retry"
    """The job's own failure, retryable: restart the gang, counted against maxRestarts."""
    FAIL = "Fail"
    """A permanent failure: the job fails now."""
    DISRUPTION = "Disruption"
    """Not the job's fault (node lost, eviction, preemption): restart without counting."""


@dataclass(frozen=True)
class Failure:
    """Why the current gang cannot go on."""

    verdict: Verdict
    reason: str
    """CamelCase reason for conditions and events."""
    message: str


def exit_action(code: int, policy: FailurePolicySpec) -> ExitAction:
    """The job's rules first (in order), then the contract's permanent codes; anything else is retried."""
    for rule in policy.exit_codes:
        if code in rule.codes:
            return rule.action
    return ExitAction.FAIL if code in PERMANENT_EXIT_CODES else ExitAction.RETRY


def backoff_seconds(restarts: int, policy: FailurePolicySpec) -> float:
    """Delay before restart number `restarts` (1-based): initial, doubling, at most max."""
    if restarts <= 0:
        return 0.0
    initial, longest = policy.backoff.initial_seconds, policy.backoff.max_seconds
    # Cap the exponent: 2**restarts of a large count would be a huge int for nothing.
    return float(min(longest, initial * 2 ** min(restarts - 1, 32)))


def find_failure(
    pods: Sequence[WorkerPod],
    expected: Collection[str],
    started: bool,
    lost_nodes: Collection[str],
    policy: FailurePolicySpec,
) -> Failure | None:
    """The failure of a gang, if any. `pods` are the gang's current pods, `expected` its worker names,
    `started` whether its scheduling gates were lifted, `lost_nodes` the nodes gone or NotReady.

    A permanent exit code wins over everything (a restart cannot fix it), then disruptions (not the job's
    fault), then retryable failures. A pod of a started gang that is missing was deleted by someone: the
    gang cannot continue with a hole, and it was not the job's code, so it counts as a disruption.
    """
    failed = sorted((p for p in pods if p.phase == "Failed" and not p.disrupted), key=lambda p: p.name)
    permanent = [
        p for p in failed if p.exit_code is not None and exit_action(p.exit_code, policy) == ExitAction.FAIL
    ]
    if permanent:
        pod = permanent[0]
        return Failure(
            Verdict.FAIL,
            "PermanentExitCode",
            f"worker {pod.name} exited {pod.exit_code} ({pod.reason or 'Error'}), which a restart cannot fix"
            + _quoted(pod),
        )
    disrupted = [p for p in pods if p.disrupted]
    if disrupted:
        pod = disrupted[0]
        return Failure(
            Verdict.DISRUPTION, "WorkerDisrupted", f"worker {pod.name} was {pod.reason or 'disrupted'}"
        )
    on_lost = sorted(p.name for p in pods if p.node in lost_nodes and p.active and p.bound)
    if on_lost:
        lost = sorted({p.node or "" for p in pods if p.name in on_lost})
        return Failure(
            Verdict.DISRUPTION,
            "NodeLost",
            f"node {', '.join(lost)} is gone or NotReady (workers {', '.join(on_lost)})",
        )
    if failed:
        pod = failed[0]
        code = "unknown" if pod.exit_code is None else str(pod.exit_code)
        return Failure(
            Verdict.RETRY,
            "WorkerFailed",
            f"worker {pod.name} exited {code} ({pod.reason or 'Error'})" + _quoted(pod),
        )
    if started:
        present = {p.name for p in pods if not p.terminating}
        missing = sorted(set(expected) - present)
        if missing:
            return Failure(
                Verdict.DISRUPTION,
                "WorkerDeleted",
                f"worker {', '.join(missing)} was deleted while the gang ran",
            )
    return None


def _quoted(pod: WorkerPod) -> str:
    return f": {pod.message}" if pod.message else ""


def restart_or_fail(failure: Failure, restarts: int, policy: FailurePolicySpec) -> Failure:
    """A retryable failure past maxRestarts fails the job; others pass through unchanged."""
    if failure.verdict == Verdict.RETRY and restarts >= policy.max_restarts:
        return Failure(
            Verdict.FAIL,
            "RestartLimitExceeded",
            f"{failure.message}; {restarts} restart(s) used of failurePolicy.maxRestarts {policy.max_restarts}",
        )
    return failure
