"""How the controller writes a gang's pods: a new gated pod is created (POST), the gates of pods that exist are
lifted with a patch of that field, and nothing of a pod is applied server-side. A create that finds the pod there
(the cache behind the cluster) reads it and goes on; a pod gone before its gate is lifted is not made again
ungated (the next decision makes it, gated, with its gang)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from maas_operator import names
from maas_operator.children import JobRef, Manifest
from maas_operator.controller import Controller, StaleChildError
from maas_operator.kube import Kube
from maas_operator.reconcile import Event
from maas_operator.settings import OperatorSettings

from tests.operator.test_placement_lock import add_job

NODE = {
    "kind": "Node",
    "metadata": {"name": "n0", "labels": {"kubernetes.io/hostname": "n0"}},
    "status": {"allocatable": {"nvidia.com/gpu": "8"}, "conditions": [{"type": "Ready", "status": "True"}]},
}


class Server:
    """Pods by name as the API server holds them; `already` exist before the controller creates them, `gone`
    vanish before their gates are lifted."""

    def __init__(self, already: frozenset[str] = frozenset(), gone: frozenset[str] = frozenset()) -> None:
        self.pods: dict[str, dict[str, Any]] = {}
        self.already = set(already)
        self.gone = set(gone)
        self.verbs: list[str] = []
        self.version = 10

    def _stored(self, manifest: Manifest) -> dict[str, Any]:
        self.version += 1
        metadata = {**manifest["metadata"], "uid": f"uid-{manifest['metadata']['name']}"}
        metadata["resourceVersion"] = str(self.version)
        return {**manifest, "metadata": metadata}

    async def create(self, manifest: Manifest) -> dict[str, Any] | None:
        name = manifest["metadata"]["name"]
        self.verbs.append(f"create {name}")
        await asyncio.sleep(0)
        if name in self.already:
            self.pods[name] = self._stored(manifest)
            return None
        self.pods[name] = self._stored(manifest)
        return self.pods[name]

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        self.verbs.append(f"get {name}")
        return self.pods.get(name)

    async def lift_gates(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.verbs.append(f"lift {name}")
        await asyncio.sleep(0)
        if name in self.gone:
            self.pods.pop(name, None)
            return None
        pod = self.pods[name]
        pod["spec"] = {k: v for k, v in pod["spec"].items() if k != "schedulingGates"}
        self.pods[name] = self._stored(pod)
        return self.pods[name]

    async def apply(self, manifest: Manifest) -> dict[str, Any]:
        self.verbs.append(f"apply {manifest['kind']}")
        return self._stored(manifest)

    async def apply_status(self, job: JobRef, status: dict[str, Any]) -> dict[str, Any]:
        return {
            "kind": "MaaSJob",
            "metadata": {"name": job.name, "namespace": job.namespace},
            "status": status,
        }

    async def post_event(self, job: JobRef, event: Event, count: int = 1) -> None:
        return None


def controller_for(server: Server) -> Controller:
    controller = Controller(cast(Kube, server), OperatorSettings())
    controller.on_node("ADDED", NODE)
    return controller


WORKERS = ["job-r0-s0", "job-r0-s1", "job-r1-s0", "job-r1-s1"]


def test_new_pods_are_created_then_their_gates_lifted_and_nothing_of_a_pod_is_applied() -> None:
    server = Server()
    controller = controller_for(server)
    key = add_job(controller, "job")
    asyncio.run(controller.reconcile(key))
    assert server.verbs == [
        "apply ConfigMap", "apply Service",
        *[f"create {name}" for name in WORKERS], *[f"lift {name}" for name in WORKERS],
    ]  # fmt: skip
    cached = controller.cache.pods[key]
    assert sorted(cached) == WORKERS
    assert not any(pod["spec"].get("schedulingGates") for pod in cached.values())


def test_a_create_that_finds_the_pod_reads_it_and_a_gang_left_gated_only_gets_its_gates_lifted() -> None:
    server = Server(already=frozenset({"job-r0-s1"}))
    controller = controller_for(server)
    key = add_job(controller, "job")
    asyncio.run(controller.reconcile(key))
    assert "get job-r0-s1" in server.verbs
    assert [verb for verb in server.verbs if verb.startswith("lift")] == [f"lift {name}" for name in WORKERS]

    # After a crash that left every pod made but gated, the new operator creates nothing: it lifts the gates.
    restarted_server = Server()
    restarted_server.pods = {
        name: {**pod, "spec": {**pod["spec"], "schedulingGates": [{"name": "maas.dev/gang"}]}}
        for name, pod in server.pods.items()
    }
    restarted = controller_for(restarted_server)
    key = add_job(restarted, "job")
    for pod in restarted_server.pods.values():
        restarted.on_pod("ADDED", pod)
    asyncio.run(restarted.reconcile(key))
    assert [verb.split()[0] for verb in restarted_server.verbs if "ConfigMap" not in verb] == ["lift"] * 4


def test_a_pod_gone_before_its_gate_is_lifted_is_not_made_again_ungated() -> None:
    server = Server(gone=frozenset({"job-r1-s0"}))
    controller = controller_for(server)
    key = add_job(controller, "job")
    asyncio.run(controller.reconcile(key))
    assert "job-r1-s0" not in server.pods
    assert not any(verb.startswith("apply Pod") for verb in server.verbs)
    # The cache still has its record (its DELETED event brings the news): the next decision makes it anew.
    assert controller.cache.pods[key]["job-r1-s0"]["spec"].get("schedulingGates")


def test_a_create_that_finds_another_gangs_pod_releases_no_gate_and_records_it() -> None:
    server = Server(already=frozenset({"job-r1-s1"}))
    controller = controller_for(server)
    key = add_job(controller, "job")

    async def create_stale() -> dict[str, Any] | None:
        # The pod the server holds under that name is of an older gang.
        original = server.create

        async def create(manifest: Manifest) -> dict[str, Any] | None:
            answer = await original(manifest)
            if answer is None:
                stale = server.pods[manifest["metadata"]["name"]]
                stale["metadata"]["labels"] = {**stale["metadata"]["labels"], names.GANG_LABEL: "older"}
            return answer

        server.create = create  # type: ignore[method-assign]
        await controller.reconcile(key)
        return None

    with pytest.raises(StaleChildError):
        asyncio.run(create_stale())
    assert not any(verb.startswith("lift") for verb in server.verbs)
    assert controller.cache.pods[key]["job-r1-s1"]["metadata"]["labels"][names.GANG_LABEL] == "older"
