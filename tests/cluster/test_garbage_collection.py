"""The controller-manager's garbage collector deletes objects whose owner is gone."""

from __future__ import annotations

import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException
from maas_devcluster.testing import wait_until

pytestmark = pytest.mark.cluster


def config_map(name: str, owner: k8s.V1ConfigMap | None = None) -> k8s.V1ConfigMap:
    owner_references = None
    if owner is not None:
        owner_references = [
            k8s.V1OwnerReference(
                api_version="v1", kind="ConfigMap", name=owner.metadata.name, uid=owner.metadata.uid
            )
        ]
    return k8s.V1ConfigMap(
        metadata=k8s.V1ObjectMeta(name=name, owner_references=owner_references), data={"role": name}
    )


def test_deleting_an_owner_deletes_its_children(core_v1: k8s.CoreV1Api, namespace: str) -> None:
    owner = core_v1.create_namespaced_config_map(namespace, config_map("owner"))
    core_v1.create_namespaced_config_map(namespace, config_map("child", owner=owner))
    core_v1.create_namespaced_config_map(namespace, config_map("bystander"))

    core_v1.delete_namespaced_config_map("owner", namespace, propagation_policy="Background")

    def child_is_gone() -> bool:
        try:
            core_v1.read_namespaced_config_map("child", namespace)
        except ApiException as error:
            return error.status == 404
        return False

    wait_until("the garbage collector to delete the child", child_is_gone)
    assert core_v1.read_namespaced_config_map("bystander", namespace).data == {"role": "bystander"}
