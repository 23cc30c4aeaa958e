"""A MaaSJob's life on the real control plane, with the operator as a real process: success and clean-up,
restarts and failures by exit code, suspend and resume, deadline, TTL, deletion, specs the planner refuses,
and what the operator shows about it (conditions, events, metrics, liveness)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from maas_devcluster.simulation import exit_annotations

from tests.cluster.operator.support import Jobs, OperatorProcess, train_job

pytestmark = pytest.mark.cluster

WORKERS = 3
"""train_job's workers: 3 stages x 1 replica."""


def fate(exit_code: int, after_seconds: int = 1) -> dict[str, Any]:
    """`spec.template` that makes every worker exit with `exit_code` `after_seconds` after it started."""
    return {"annotations": exit_annotations(exit_code, after_seconds)}


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    found: dict[str, Any] | None = next((c for c in status.get("conditions", []) if c["type"] == type_), None)
    assert found is not None, f"no {type_} condition in {status}"
    return found


def metric_samples(text: str) -> dict[str, float]:
    """Prometheus text format: `name{labels}` -> value."""
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def event_reasons(jobs: Jobs, job: str) -> list[str]:
    """Reasons of the job's events (in no particular order: their timestamps have whole seconds)."""
    return [e["reason"] for e in jobs.events(job)]


def wait_running(jobs: Jobs, job: str, workers: int = WORKERS) -> dict[str, Any]:
    status = jobs.wait_phase(job, "Running", timeout=60)
    assert status["readyWorkers"] == f"{workers}/{workers}"
    return status


# -- success and cleanPodPolicy ---------------------------------------------------------------------------


def test_all_workers_exit_0_so_the_job_succeeds_and_keeps_its_finished_pods(jobs: Jobs, pool: str) -> None:
    jobs.apply(train_job("ok", pool, template=fate(0)))
    status = jobs.wait_phase("ok", "Succeeded")
    succeeded = condition(status, "Succeeded")
    assert (succeeded["status"], succeeded["reason"]) == ("True", "AllWorkersSucceeded")
    ready = condition(status, "Ready")
    assert (ready["status"], ready["reason"]) == ("True", "Succeeded")  # where its spec wants it: done
    assert condition(status, "Failed")["status"] == "False"
    assert status["completionTime"] >= status["startTime"]
    assert status["restarts"] == 0
    # cleanPodPolicy Running (the default) deletes only running pods: the finished ones stay for their logs.
    pods = jobs.pods("ok")
    assert len(pods) == WORKERS
    assert {p["status"]["phase"] for p in pods} == {"Succeeded"}
    assert "AllWorkersSucceeded" in event_reasons(jobs, "ok")


def test_clean_pod_policy_all_deletes_every_pod_when_the_job_finishes(jobs: Jobs, pool: str) -> None:
    jobs.apply(train_job("clean-all", pool, template=fate(0), runPolicy={"cleanPodPolicy": "All"}))
    jobs.wait_phase("clean-all", "Succeeded")
    jobs.wait("clean-all's pods deleted", lambda: not jobs.pods("clean-all"))


@pytest.mark.parametrize(
    ("policy", "kept_phases"), [("Running", {"Failed"}), ("None", {"Failed", "Running"})]
)
def test_clean_pod_policy_decides_which_pods_of_a_failed_job_stay(
    jobs: Jobs, pool: str, policy: str, kept_phases: set[str]
) -> None:
    """One worker fails for good while the others run: Running deletes the running ones, None keeps all."""
    name = f"clean-{policy.lower()}"
    jobs.apply(train_job(name, pool, runPolicy={"cleanPodPolicy": policy}))
    wait_running(jobs, name)
    jobs.kubectl("annotate", "pod", f"{name}-r0-s1", *(f"{k}={v}" for k, v in exit_annotations(78).items()))
    jobs.wait_phase(name, "Failed")

    def settled() -> set[str] | None:
        pods = [p for p in jobs.pods(name) if not p["metadata"].get("deletionTimestamp")]
        phases = {p["status"]["phase"] for p in pods}
        return phases if phases == kept_phases else None

    jobs.wait(f"{name}'s pods of phases {kept_phases}", settled)
    failed = [p["metadata"]["name"] for p in jobs.pods(name) if p["status"]["phase"] == "Failed"]
    assert failed == [f"{name}-r0-s1"]
    if policy == "None":
        # Nothing is to go: the deletions would come with the Failed status, so a short while proves it.
        time.sleep(2)
        assert len([p for p in jobs.pods(name) if not p["metadata"].get("deletionTimestamp")]) == WORKERS


# -- restarts and failures by exit code -------------------------------------------------------------------


def test_a_retryable_failure_restarts_the_gang_with_backoff_until_max_restarts(jobs: Jobs, pool: str) -> None:
    policy = {"maxRestarts": 2, "backoff": {"initialSeconds": 1, "maxSeconds": 2}}
    jobs.apply(train_job("retry", pool, template=fate(75), failurePolicy=policy))
    status = jobs.wait_phase("retry", "Failed", timeout=90)
    failed = condition(status, "Failed")
    assert (failed["status"], failed["reason"]) == ("True", "RestartLimitExceeded")
    assert "failurePolicy.maxRestarts 2" in failed["message"]
    assert status["restarts"] == 2
    assert status["disruptions"] == 0
    assert status["attempts"] == {"all": 2}
    assert status["completionTime"]
    # The last gang is a new set of pods, labelled with its attempt. Its failed pods stay, those still running
    # when the first one failed go (cleanPodPolicy Running).
    pods = [p for p in jobs.pods("retry") if not p["metadata"].get("deletionTimestamp")]
    assert 1 <= len(pods) <= WORKERS
    assert {p["metadata"]["labels"]["maas.dev/attempt"] for p in pods} == {"2"}
    assert {p["status"]["phase"] for p in pods} == {"Failed"}
    warnings = [e for e in jobs.events("retry") if e["type"] == "Warning" and e["reason"] == "WorkerFailed"]
    # The backoff doubles from initialSeconds (1 s) and stops at maxSeconds (2 s).
    assert sorted(e["message"].split(": ", 1)[1] for e in warnings) == [
        "restarting the gang in 1 s (restart 1 of 2)",
        "restarting the gang in 2 s (restart 2 of 2)",
    ]
    assert "RestartLimitExceeded" in event_reasons(jobs, "retry")


def test_new_pods_of_a_restart_carry_the_next_attempt(jobs: Jobs, pool: str) -> None:
    """While restarting, the old gang is replaced by pods of attempt 1, which then run."""
    policy = {"maxRestarts": 3, "backoff": {"initialSeconds": 1, "maxSeconds": 1}}
    jobs.apply(train_job("attempt", pool, failurePolicy=policy))
    first = wait_running(jobs, "attempt")
    assert first["attempts"] == {}
    uids = {p["metadata"]["uid"] for p in jobs.pods("attempt")}
    jobs.kubectl("annotate", "pod", "attempt-r0-s2", *(f"{k}={v}" for k, v in exit_annotations(75).items()))

    def next_gang_running() -> dict[str, Any] | None:
        status = jobs.status("attempt")
        pods = jobs.pods("attempt")
        fresh = [p for p in pods if p["metadata"]["uid"] not in uids]
        running = status.get("phase") == "Running" and len(fresh) == WORKERS == len(pods)
        return status if running else None

    status = jobs.wait("the gang of attempt 1 running", next_gang_running)
    assert status["restarts"] == 1 and status["attempts"] == {"all": 1}
    assert {p["metadata"]["labels"]["maas.dev/attempt"] for p in jobs.pods("attempt")} == {"1"}
    assert condition(status, "Restarting")["status"] == "False"
    restarting = [e for e in jobs.events("attempt") if e["reason"] == "WorkerFailed"]
    assert len(restarting) == 1 and restarting[0]["type"] == "Warning"
    assert "attempt-r0-s2 exited 75" in restarting[0]["message"]


def test_a_permanent_exit_code_fails_the_job_at_once(jobs: Jobs, pool: str) -> None:
    jobs.apply(train_job("permanent", pool, template=fate(78), failurePolicy={"maxRestarts": 5}))
    status = jobs.wait_phase("permanent", "Failed")
    failed = condition(status, "Failed")
    assert (failed["status"], failed["reason"]) == ("True", "PermanentExitCode")
    assert "exited 78" in failed["message"]
    assert status["restarts"] == 0 and status["attempts"] == {}


def test_an_exit_code_rule_turns_a_retryable_code_into_a_failure(jobs: Jobs, pool: str) -> None:
    rules = {"exitCodes": [{"codes": [42], "action": "Fail"}], "maxRestarts": 5}
    jobs.apply(train_job("rule-fail", pool, template=fate(42), failurePolicy=rules))
    status = jobs.wait_phase("rule-fail", "Failed")
    failed = condition(status, "Failed")
    assert failed["reason"] == "PermanentExitCode" and "exited 42" in failed["message"]
    assert status["restarts"] == 0


def test_an_exit_code_rule_turns_a_permanent_code_into_a_retry(jobs: Jobs, pool: str) -> None:
    """Exit 1 is permanent by default (as in Kubeflow); a Retry rule makes it restart the gang."""
    rules = {
        "exitCodes": [{"codes": [1], "action": "Retry"}],
        "maxRestarts": 1,
        "backoff": {"initialSeconds": 0, "maxSeconds": 0},
    }
    jobs.apply(train_job("rule-retry", pool, template=fate(1), failurePolicy=rules))
    status = jobs.wait_phase("rule-retry", "Failed", timeout=90)
    failed = condition(status, "Failed")
    assert failed["reason"] == "RestartLimitExceeded" and "exited 1" in failed["message"]
    assert status["restarts"] == 1 and status["attempts"] == {"all": 1}


# -- runPolicy --------------------------------------------------------------------------------------------


def test_suspend_deletes_the_workers_and_keeps_the_plan_and_resume_brings_them_back(
    jobs: Jobs, pool: str
) -> None:
    jobs.apply(train_job("pause", pool))
    running = wait_running(jobs, "pause")
    placement = {w["name"]: w["node"] for w in running["plan"]["workers"]}
    jobs.kubectl("patch", "maasjob", "pause", "--type=merge", "-p", '{"spec":{"runPolicy":{"suspend":true}}}')
    status = jobs.wait_phase("pause", "Suspended")
    assert condition(status, "Suspended")["status"] == "True"
    assert condition(status, "Ready")["reason"] == "Suspended"
    jobs.wait("pause's workers deleted", lambda: not jobs.pods("pause"))
    jobs.kubectl("get", "configmap", "pause-plan")
    assert status["readyWorkers"] == f"0/{WORKERS}"
    assert "Suspended" in event_reasons(jobs, "pause")

    jobs.kubectl(
        "patch", "maasjob", "pause", "--type=merge", "-p", '{"spec":{"runPolicy":{"suspend":false}}}'
    )
    resumed = wait_running(jobs, "pause")
    assert condition(resumed, "Suspended")["reason"] == "Resumed"
    assert {w["name"]: w["node"] for w in resumed["plan"]["workers"]} == placement
    assert {p["metadata"]["name"]: p["spec"]["nodeName"] for p in jobs.pods("pause")} == placement
    assert "Resumed" in event_reasons(jobs, "pause")


def test_active_deadline_fails_a_job_that_runs_too_long(jobs: Jobs, pool: str) -> None:
    jobs.apply(train_job("late", pool, runPolicy={"activeDeadlineSeconds": 3}))
    status = jobs.wait_phase("late", "Failed", timeout=60)
    failed = condition(status, "Failed")
    assert failed["reason"] == "DeadlineExceeded" and "activeDeadlineSeconds (3 s)" in failed["message"]
    # The workers were still running: cleanPodPolicy Running deletes them.
    jobs.wait("late's running workers deleted", lambda: not jobs.pods("late"))


def test_ttl_after_finished_deletes_the_job_and_its_children(jobs: Jobs, pool: str) -> None:
    jobs.apply(train_job("brief", pool, template=fate(0), runPolicy={"ttlSecondsAfterFinished": 2}))
    jobs.wait_phase("brief", "Succeeded")

    def gone() -> bool:
        found = jobs.kubectl("get", "maasjob", "brief", "--ignore-not-found", "-o", "name").stdout
        return not found.strip()

    jobs.wait("brief deleted after its TTL", gone, timeout=60)
    jobs.wait("brief's pods collected", lambda: not jobs.pods("brief"), timeout=60)


def test_deleting_a_job_removes_its_children(jobs: Jobs, pool: str) -> None:
    jobs.apply(train_job("doomed", pool))
    wait_running(jobs, "doomed")
    children = ("pods,configmaps,services", "-l", "maas.dev/job=doomed", "-o", "name")
    owned = jobs.kubectl("get", *children).stdout.split()
    assert "configmap/doomed-plan" in owned and "service/doomed" in owned
    assert sum(1 for name in owned if name.startswith("pod/")) == WORKERS
    pod = jobs.pods("doomed")[0]
    owner = pod["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["controller"]) == ("MaaSJob", "doomed", True)
    jobs.kubectl("delete", "maasjob", "doomed", "--wait=false")
    # The controller-manager's garbage collector follows the owner references.
    jobs.wait("doomed's children collected", lambda: not jobs.kubectl("get", *children).stdout.strip())


# -- what the operator shows ------------------------------------------------------------------------------


def test_conditions_carry_the_generation_they_were_computed_from(jobs: Jobs, pool: str) -> None:
    jobs.apply(train_job("gen", pool))
    wait_running(jobs, "gen")
    env = '{"spec":{"env":[{"name":"EXTRA","value":"1"}]}}'
    jobs.kubectl("patch", "maasjob", "gen", "--type=merge", "-p", env)

    def current() -> dict[str, Any] | None:
        job = jobs.get("gen")
        status = job.get("status") or {}
        generation = job["metadata"]["generation"]
        fresh = status.get("observedGeneration") == generation and status.get("phase") == "Running"
        return job if fresh else None

    job = jobs.wait("gen's status of generation 2 and Running", current)
    assert job["metadata"]["generation"] == 2
    conditions = job["status"]["conditions"]
    assert {c["type"] for c in conditions} == {
        "Planned",
        "Ready",
        "Succeeded",
        "Failed",
        "Suspended",
        "Restarting",
        "Reconciling",
        "Stalled",
        "Progressing",
    }
    assert {c["observedGeneration"] for c in conditions} == {2}
    # The edit changed the pods (env), not the plan: the new pods carry the variable.
    pods = jobs.pods("gen")
    assert all({"name": "EXTRA", "value": "1"} in p["spec"]["containers"][0].get("env", []) for p in pods), (
        "the new gang has the edited env"
    )


def test_describe_shows_the_operators_events(jobs: Jobs, pool: str) -> None:
    jobs.apply(train_job("told", pool))
    wait_running(jobs, "told")
    described = jobs.kubectl("describe", "maasjob", "told").stdout
    for reason in ("Planned", "WorkersCreated", "AllWorkersReady"):
        assert reason in described, f"{reason} missing from kubectl describe:\n{described}"
    assert "maas-operator" in described
    # Each happened once: a decision on a stale copy of the job would tell it again.
    reasons = event_reasons(jobs, "told")
    assert sorted(reasons) == sorted(set(reasons)), reasons


def test_metrics_and_liveness_endpoints_answer(jobs: Jobs, pool: str, operator: OperatorProcess) -> None:
    """The operator serves for the whole session: this job's part is what the counters gained."""
    counters = (
        "maas_reconcile_duration_seconds_count",
        "maas_planning_duration_seconds_count",
        'maas_gang_restarts_total{cause="failure"}',
    )
    before = metric_samples(operator.metrics())
    jobs.apply(train_job("seen", pool, template=fate(75), failurePolicy={"maxRestarts": 1}))
    jobs.wait_phase("seen", "Failed", timeout=60)
    assert operator.alive()
    after = metric_samples(operator.metrics())
    for counter in counters:
        assert after[counter] - before.get(counter, 0) >= 1, counter
    assert after['maas_reconcile_duration_seconds_bucket{le="+Inf"}'] == after[counters[0]]
    # The gauge follows the status write (other tests' jobs may count too): wait for it rather than race it.
    jobs.wait(
        "maas_jobs counting a Failed job",
        lambda: metric_samples(operator.metrics())['maas_jobs{phase="Failed"}'] >= 1,
    )


# -- specs the API server accepts but the planner refuses -------------------------------------------------


@pytest.mark.parametrize(
    ("split", "field"),
    [({"stages": 5}, "spec.split.stages"), ({"stages": 1}, "spec.resources.gpuMemory")],
    ids=["more-stages-than-units", "does-not-fit-gpu-memory"],
)
def test_a_spec_the_planner_refuses_fails_as_invalid_until_it_is_fixed(
    jobs: Jobs, pool: str, split: dict[str, Any], field: str
) -> None:
    name = "refused"
    model: dict[str, Any] = {"catalog": "LargeModel"}
    if field == "spec.resources.gpuMemory":
        model = {"catalog": "Transformer", "args": {"dim": 4096, "layers": 48, "heads": 32, "seqLen": 2048}}
    # microbatches >= stages: the API server's own rule for 1F1B, so that only the planner refuses.
    jobs.apply(train_job(name, pool, model=model, split=split, parallelism={"microbatches": 8}))
    status = jobs.wait_phase(name, "Failed")
    planned, failed = condition(status, "Planned"), condition(status, "Failed")
    assert (planned["status"], planned["reason"]) == ("False", "InvalidSpec")
    assert (failed["status"], failed["reason"]) == ("True", "InvalidSpec")
    assert field in failed["message"]
    assert not jobs.pods(name)
    warnings = [e for e in jobs.events(name) if e["type"] == "Warning" and e["reason"] == "InvalidSpec"]
    assert warnings and field in warnings[0]["message"]

    jobs.kubectl(
        "patch",
        "maasjob",
        name,
        "--type=merge",
        "-p",
        '{"spec":{"model":{"catalog":"LargeModel","args":null},"split":{"stages":3}}}',
    )
    running = wait_running(jobs, name)
    assert condition(running, "Failed")["status"] == "False"
    assert condition(running, "Planned")["status"] == "True"
    assert "completionTime" not in running


# -- children the API server refuses ----------------------------------------------------------------------


def test_a_refused_pod_is_reported_on_the_job_and_retried(jobs: Jobs, pool: str) -> None:
    """A missing ServiceAccount makes the API server refuse every pod: the job's events say so, and once the
    account exists the operator's retries create the gang."""
    jobs.apply(train_job("no-account", pool, template={"serviceAccountName": "runner"}))

    def refusal() -> dict[str, Any] | None:
        return next((e for e in jobs.events("no-account") if e["reason"] == "FailedCreate"), None)

    event = jobs.wait("a FailedCreate event on no-account", refusal)
    assert event["type"] == "Warning"
    assert 'serviceaccount "runner" not found' in event["message"]
    assert "no-account-r0-s0" in event["message"]
    jobs.kubectl("create", "serviceaccount", "runner")
    wait_running(jobs, "no-account")
