"""healing: exit codes to Retry or Fail, the order of failure causes, the backoff, and maxRestarts."""

from __future__ import annotations

import pytest
from maas_api.contract import PERMANENT_EXIT_CODES, ExitCode
from maas_api.spec import ExitAction
from maas_operator.healing import (
    Failure,
    Verdict,
    backoff_seconds,
    exit_action,
    find_failure,
    restart_or_fail,
)
from maas_operator.world import WorkerPod

from .helpers import exited, pod, policy

GANG = ("w0", "w1", "w2")


# -- exit codes -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("code", sorted(PERMANENT_EXIT_CODES))
def test_the_contracts_permanent_codes_fail_by_default(code: int) -> None:
    assert exit_action(code, policy()) == ExitAction.FAIL


@pytest.mark.parametrize("code", [ExitCode.RETRYABLE, 137, 143, 42, 255])
def test_other_codes_are_retried_by_default(code: int) -> None:
    assert exit_action(code, policy()) == ExitAction.RETRY


def test_the_jobs_rules_come_before_the_permanent_codes() -> None:
    rules = policy(exitCodes=[{"codes": [1, 78], "action": "Retry"}, {"codes": [42], "action": "Fail"}])
    assert exit_action(1, rules) == ExitAction.RETRY
    assert exit_action(ExitCode.PERMANENT, rules) == ExitAction.RETRY
    assert exit_action(42, rules) == ExitAction.FAIL
    # Codes no rule names keep their default.
    assert exit_action(2, rules) == ExitAction.FAIL
    assert exit_action(75, rules) == ExitAction.RETRY


def test_the_first_matching_rule_wins() -> None:
    rules = policy(exitCodes=[{"codes": [42], "action": "Fail"}, {"codes": [42], "action": "Retry"}])
    assert exit_action(42, rules) == ExitAction.FAIL


# -- backoff ----------------------------------------------------------------------------------------------


def test_backoff_starts_at_initial_and_doubles_up_to_max() -> None:
    backoff = policy(backoff={"initialSeconds": 10, "maxSeconds": 300})
    assert [backoff_seconds(n, backoff) for n in range(1, 8)] == [10, 20, 40, 80, 160, 300, 300]


def test_no_backoff_before_the_first_restart() -> None:
    assert backoff_seconds(0, policy(backoff={"initialSeconds": 10})) == 0


def test_a_huge_restart_count_is_capped_not_computed() -> None:
    assert backoff_seconds(10**9, policy(backoff={"initialSeconds": 1, "maxSeconds": 60})) == 60


def test_zero_initial_backoff_restarts_at_once() -> None:
    assert backoff_seconds(5, policy(backoff={"initialSeconds": 0, "maxSeconds": 60})) == 0


def test_the_default_backoff_is_the_specs() -> None:
    default = policy()
    assert backoff_seconds(1, default) == default.backoff.initial_seconds
    assert backoff_seconds(100, default) == default.backoff.max_seconds


# -- what failed ------------------------------------------------------------------------------------------


def find(
    pods: list[WorkerPod], started: bool = True, lost: tuple[str, ...] = (), **rules: object
) -> Failure | None:
    return find_failure(pods, GANG, started, lost, policy(**rules))


def test_a_healthy_gang_has_no_failure() -> None:
    assert find([pod(name) for name in GANG]) is None


def test_a_retryable_exit_is_a_retry_naming_the_worker_and_code() -> None:
    failure = find([pod("w0"), exited("w1", 75), pod("w2")])
    assert failure is not None
    assert (failure.verdict, failure.reason) == (Verdict.RETRY, "WorkerFailed")
    assert "w1 exited 75" in failure.message


def test_a_permanent_exit_fails_even_when_another_worker_only_needs_a_retry() -> None:
    failure = find([exited("w0", 75), exited("w1", 78), pod("w2")])
    assert failure is not None
    assert (failure.verdict, failure.reason) == (Verdict.FAIL, "PermanentExitCode")
    assert "w1 exited 78" in failure.message


def test_the_workers_own_reason_is_quoted_in_the_failure() -> None:
    """The runtime writes one line as the pod's termination message; the condition carries it to the user."""
    reason = "exit 78: plan.model.factory: cannot import 'nope:make'"
    failure = find([exited("w0", 78, message=reason), pod("w1"), pod("w2")])
    assert failure is not None and failure.message.endswith(f"which a restart cannot fix: {reason}")
    retry = find([exited("w0", 75, message="exit 75: peer lost"), pod("w1"), pod("w2")])
    assert retry is not None and retry.message == "worker w0 exited 75 (Error): exit 75: peer lost"


def test_a_permanent_exit_wins_over_a_disruption() -> None:
    failure = find([pod("w0", "Failed", disrupted=True, reason="Evicted"), exited("w1", 78), pod("w2")])
    assert failure is not None and failure.verdict == Verdict.FAIL


def test_a_disruption_wins_over_a_retryable_exit() -> None:
    """The eviction caused the others' failure (a collective lost a peer): it must not count."""
    failure = find([pod("w0", "Failed", disrupted=True, reason="Evicted"), exited("w1", 75), pod("w2")])
    assert failure is not None
    assert (failure.verdict, failure.reason) == (Verdict.DISRUPTION, "WorkerDisrupted")
    assert "w0 was Evicted" in failure.message


def test_a_worker_on_a_lost_node_is_a_disruption_over_a_retryable_exit() -> None:
    failure = find([pod("w0", node="gone"), exited("w1", 75), pod("w2")], lost=("gone",))
    assert failure is not None
    assert (failure.verdict, failure.reason) == (Verdict.DISRUPTION, "NodeLost")
    assert "gone" in failure.message and "w0" in failure.message


def test_an_unbound_pod_pinned_to_a_lost_node_is_not_yet_a_loss() -> None:
    """Only workers that ran there were lost; a pod still waiting for its node is re-placed by the plan."""
    assert (
        find([pod("w0", "Pending", node="gone", bound=False), pod("w1"), pod("w2")], lost=("gone",)) is None
    )


def test_a_rule_makes_a_permanent_code_a_retry() -> None:
    failure = find([exited("w0", 1), pod("w1"), pod("w2")], exitCodes=[{"codes": [1], "action": "Retry"}])
    assert failure is not None and failure.verdict == Verdict.RETRY


def test_a_rule_makes_a_retryable_code_a_failure() -> None:
    failure = find([exited("w0", 42), pod("w1"), pod("w2")], exitCodes=[{"codes": [42], "action": "Fail"}])
    assert failure is not None and failure.verdict == Verdict.FAIL


def test_a_worker_deleted_from_a_started_gang_is_a_disruption() -> None:
    failure = find([pod("w0"), pod("w2")])
    assert failure is not None
    assert (failure.verdict, failure.reason) == (Verdict.DISRUPTION, "WorkerDeleted")
    assert "w1" in failure.message


def test_missing_workers_of_a_gang_not_yet_started_are_still_being_created() -> None:
    assert find([pod("w0", "Pending", gated=True)], started=False) is None


def test_a_terminating_worker_of_a_started_gang_counts_as_missing() -> None:
    failure = find([pod("w0"), pod("w1", terminating=True), pod("w2")])
    assert failure is not None and failure.reason == "WorkerDeleted"


# -- maxRestarts ------------------------------------------------------------------------------------------

RETRY = Failure(Verdict.RETRY, "WorkerFailed", "worker w1 exited 75 (Error)")


def test_retries_pass_while_restarts_remain() -> None:
    assert restart_or_fail(RETRY, 2, policy(maxRestarts=3)) is RETRY


def test_a_retry_past_max_restarts_fails_the_job_and_says_why() -> None:
    failure = restart_or_fail(RETRY, 3, policy(maxRestarts=3))
    assert (failure.verdict, failure.reason) == (Verdict.FAIL, "RestartLimitExceeded")
    assert failure.message.startswith(RETRY.message)
    assert "failurePolicy.maxRestarts 3" in failure.message


def test_max_restarts_zero_fails_at_the_first_failure() -> None:
    assert restart_or_fail(RETRY, 0, policy(maxRestarts=0)).verdict == Verdict.FAIL


@pytest.mark.parametrize("verdict", [Verdict.DISRUPTION, Verdict.FAIL])
def test_disruptions_and_failures_ignore_the_restart_count(verdict: Verdict) -> None:
    failure = Failure(verdict, "Reason", "message")
    assert restart_or_fail(failure, 100, policy(maxRestarts=1)) is failure
