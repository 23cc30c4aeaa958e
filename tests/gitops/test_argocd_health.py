"""Argo CD's health check for MaaSJobs (docs/gitops/maasjob-health.lua), run in Lua 5.1 as Argo CD runs it,
on the statuses recorded from the operator on the local cluster, and on what a user or an older operator
may leave behind."""

from __future__ import annotations

import copy

import pytest
import yaml

from tests.gitops.support import ARGOCD_KEY, ARGOCD_PATCH, EXPECTED, HEALTH_LUA, argocd_health, recorded


@pytest.mark.parametrize("phase", list(EXPECTED))
def test_each_recorded_phase_reads_as_expected(phase: str) -> None:
    status, message = argocd_health(recorded(phase))
    assert status == EXPECTED[phase][0]
    assert message


def test_the_message_is_the_deciding_conditions_reason_and_message() -> None:
    job = recorded("failed")
    stalled = next(c for c in job["status"]["conditions"] if c["type"] == "Stalled")
    assert argocd_health(job) == ("Degraded", f"{stalled['reason']}: {stalled['message']}")
    assert argocd_health(recorded("unschedulable"))[1].startswith("Unschedulable: ")
    assert argocd_health(recorded("not-observed"))[1] == "Waiting for the operator to observe generation 1"


def test_a_spec_edit_the_operator_has_not_seen_is_progressing() -> None:
    job = copy.deepcopy(recorded("running"))
    job["metadata"]["generation"] += 1
    assert argocd_health(job) == (
        "Progressing",
        f"Waiting for the operator to observe generation {job['metadata']['generation']}",
    )


@pytest.mark.parametrize(
    "status",
    [
        None,  # as a client that bypasses the API server's defaults would see it
        {},
        {"observedGeneration": 1},  # an operator older than the Reconciling condition
        {"observedGeneration": 1, "conditions": []},
    ],
)
def test_a_job_without_the_summary_conditions_is_progressing(status: dict[str, object] | None) -> None:
    job = {"apiVersion": "maas.dev/v1alpha1", "kind": "MaaSJob", "metadata": {"name": "x", "generation": 1}}
    if status is not None:
        job["status"] = status
    assert argocd_health(job)[0] == "Progressing"


def test_the_argocd_settings_patch_holds_the_same_health_check() -> None:
    patch = yaml.safe_load(ARGOCD_PATCH.read_text())
    assert patch["data"][ARGOCD_KEY] == HEALTH_LUA.read_text(), (
        f"{ARGOCD_PATCH.name} differs from {HEALTH_LUA.name}: copy the Lua into it"
    )
