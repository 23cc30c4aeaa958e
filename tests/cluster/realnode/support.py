"""Pods for the real node: the runtime image with the node's own worker pod patch, as the operator makes them."""

from __future__ import annotations

import json
from typing import Any

from maas_devcluster.node_config import REAL_NODE_LABEL
from maas_devcluster.node_images import RUN_AS_USER, WORKER_CONTAINER
from maas_devcluster.real_node import RealNode
from maas_devcluster.testing import LocalCluster, wait_until
from maas_operator.pod_patch import merge_pod_patch

from tests.cluster.operator.support import load_example

ON_REAL_NODE = {REAL_NODE_LABEL: "true"}


def reference_train_job(name: str, steps: int, stages: int = 3, replicas: int = 2) -> dict[str, Any]:
    """examples/large-model-train.yaml without GPUs, on the real node, `steps` steps (and another shape)."""
    job = load_example("large-model-train.yaml")
    job["metadata"]["name"] = name
    spec = job["spec"]
    spec["resources"]["gpus"] = 0
    spec["training"]["steps"] = steps
    spec["split"]["stages"] = stages
    spec["parallelism"]["replicas"] = replicas
    spec.setdefault("placement", {})["nodeSelector"] = ON_REAL_NODE
    return job


def runtime_pod(node: RealNode, name: str, command: list[str], **spec: Any) -> dict[str, Any]:
    """A pod of the runtime image on the real node, non-root, with the host's Python mounted (the patch)."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "restartPolicy": "Never",
            "nodeSelector": ON_REAL_NODE,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": RUN_AS_USER,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": WORKER_CONTAINER,
                    "image": node.images["runtime"],
                    "imagePullPolicy": "Never",
                    "command": command,
                    "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
                }
            ],
            **spec,
        },
    }
    return merge_pod_patch(pod, node.worker_pod_patch)


def apply(cluster: LocalCluster, namespace: str, *manifests: dict[str, Any]) -> None:
    cluster.kubectl(
        "-n",
        namespace,
        "apply",
        "-f",
        "-",
        stdin=json.dumps({"kind": "List", "apiVersion": "v1", "items": list(manifests)}),
    )


def pod(cluster: LocalCluster, namespace: str, name: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(
        cluster.kubectl("-n", namespace, "get", "pod", name, "-o", "json").stdout
    )
    return result


def wait_phase(
    cluster: LocalCluster, namespace: str, name: str, phase: str, timeout: float = 120.0
) -> dict[str, Any]:
    """Waits for the pod's phase; a pod that ends in another phase fails at once, with its logs."""

    def probe() -> dict[str, Any] | None:
        current = pod(cluster, namespace, name)
        reached = current.get("status", {}).get("phase")
        if reached in ("Succeeded", "Failed") and reached != phase:
            logs = cluster.kubectl("-n", namespace, "logs", name, check=False)
            raise AssertionError(
                f"pod {name} is {reached}, not {phase}: {current['status']}\n{logs.stdout}{logs.stderr}"
            )
        return current if reached == phase else None

    return wait_until(f"pod {namespace}/{name} {phase}", probe, timeout=timeout, interval=0.5)


def step_events(logs: str) -> list[dict[str, Any]]:
    """The runtime's JSON event lines (rank 0 logs every step's loss, averaged over the replicas)."""
    events = []
    for line in logs.splitlines():
        start = line.find('{"event"')
        if start >= 0:
            events.append(json.loads(line[start:]))
    return events
