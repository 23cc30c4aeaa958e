"""Every MaaSJob example in examples/ becomes Ready on the default cluster's nodes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from maas_devcluster.testing import LocalCluster, wait_until

from tests.cluster.operator.support import EXAMPLES, Jobs, bound_claim, load_example

pytestmark = pytest.mark.cluster

# MaaSJob examples only: the nodes file and the HPA (tests/cluster/operator/test_serving.py applies it) are not.
EXAMPLE_FILES = sorted(
    path.name for path in EXAMPLES.glob("*.yaml") if load_example(path.name).get("kind") == "MaaSJob"
)

# The default cluster's nodes carry no team label; examples/nodes.yaml puts team=ml on its rack-1 nodes, so
# the test does the same on the default cluster's rack-1 nodes while the factory example runs.
TEAM_NODES = ("gpu-node-2", "gpu-node-3")
PRIORITY_CLASS = "training-high"
"""The factory example's PriorityClass (with its ServiceAccount, a prerequisite the example names)."""


def claims_of(spec: dict[str, Any]) -> list[str]:
    """PersistentVolumeClaims an example mounts (data volume, checkpoints)."""
    claims = [((spec.get("data") or {}).get("volume") or {}).get("claimName")]
    claims.append((spec.get("checkpoint") or {}).get("claimName"))
    return [claim for claim in claims if claim]


@pytest.fixture
def team_nodes(cluster: LocalCluster) -> Iterator[None]:
    cluster.kubectl("label", "node", *TEAM_NODES, "team=ml", "--overwrite")
    yield
    cluster.kubectl("label", "node", *TEAM_NODES, "team-")


@pytest.fixture
def priority_class(cluster: LocalCluster) -> Iterator[None]:
    document = {
        "apiVersion": "scheduling.k8s.io/v1",
        "kind": "PriorityClass",
        "metadata": {"name": PRIORITY_CLASS},
        "value": 1000,
    }
    cluster.kubectl("apply", "-f", "-", stdin=json.dumps(document))
    yield
    cluster.kubectl("delete", "priorityclass", PRIORITY_CLASS, "--ignore-not-found")


@pytest.mark.parametrize("example", EXAMPLE_FILES)
def test_every_example_becomes_ready(
    example: str, jobs: Jobs, cluster: LocalCluster, namespace: str, request: pytest.FixtureRequest
) -> None:
    manifest = load_example(example)
    spec = manifest["spec"]
    if "team" in ((spec.get("placement") or {}).get("nodeSelector") or {}):
        request.getfixturevalue("team_nodes")
    template = spec.get("template") or {}
    if template.get("serviceAccountName"):
        jobs.kubectl("create", "serviceaccount", template["serviceAccountName"])
    if template.get("priorityClassName"):
        request.getfixturevalue("priority_class")
        assert template["priorityClassName"] == PRIORITY_CLASS
    claims = claims_of(spec)
    for claim in claims:
        for document in bound_claim(namespace, claim):
            cluster.kubectl("apply", "-f", "-", stdin=json.dumps(document))
    name = manifest["metadata"]["name"]
    try:
        jobs.apply(manifest)
        try:
            status = jobs.wait_phase(name, "Running", timeout=90)
        except AssertionError as error:
            seen = [(p["metadata"]["name"], p["status"]) for p in jobs.pods(name)]
            raise AssertionError(f"{error}\nstatus: {jobs.status(name)}\npods: {seen}") from None
        ready = jobs.condition(name, "Ready")
        assert ready is not None and ready["status"] == "True", ready
        total = status["workers"]["total"]
        assert total > 0 and status["readyWorkers"] == f"{total}/{total}"
        pods = jobs.pods(name)
        assert len(pods) == total
        assert all(p["status"]["phase"] == "Running" for p in pods)
        for claim in claims:
            assert all(
                any(
                    (v.get("persistentVolumeClaim") or {}).get("claimName") == claim
                    for v in p["spec"]["volumes"]
                )
                for p in pods
            ), f"every worker mounts {claim}"
        if "team" in ((spec.get("placement") or {}).get("nodeSelector") or {}):
            assert {p["spec"]["nodeName"] for p in pods} <= set(TEAM_NODES)
    finally:
        # Free the default nodes' GPUs for the next example before the namespace goes.
        jobs.kubectl("delete", "maasjob", name, "--ignore-not-found", "--wait=false")
        # The garbage collector would follow, but it learns of a new CRD only at its next discovery (30 s).
        jobs.kubectl("delete", "pods", "-l", f"maas.dev/job={name}", "--wait=false")
        wait_until(f"{name}'s pods gone", lambda: not jobs.pods(name), timeout=60)
        for claim in claims:
            cluster.kubectl("delete", "pv", f"{namespace}-{claim}", "--ignore-not-found", "--wait=false")
