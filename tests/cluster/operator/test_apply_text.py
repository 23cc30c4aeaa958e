"""The operator's server-side apply against the real API server (its YAML parser, not PyYAML): text from
outside (termination messages, exceptions) arrives unchanged, emoji included."""

from __future__ import annotations

import asyncio
import json

import pytest
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import config as k8s_config
from maas_devcluster.testing import LocalCluster
from maas_operator.kube import Kube

from tests.operator.test_apply_body import AWKWARD_TEXT

pytestmark = pytest.mark.cluster


async def apply_with_the_operators_client(cluster: LocalCluster, manifest: dict[str, object]) -> None:
    configuration = k8s.Configuration()
    await k8s_config.load_kube_config(config_file=str(cluster.kubeconfig), client_configuration=configuration)
    async with k8s.ApiClient(configuration) as api:
        await Kube(api).apply(manifest)


def test_awkward_text_is_applied_and_read_back_unchanged(cluster: LocalCluster, namespace: str) -> None:
    data = {f"text-{index}": text for index, text in enumerate(AWKWARD_TEXT)}
    manifest = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "awkward", "namespace": namespace},
        "data": data,
    }
    asyncio.run(apply_with_the_operators_client(cluster, manifest))
    stored = json.loads(cluster.kubectl("-n", namespace, "get", "configmap", "awkward", "-o", "json").stdout)
    assert stored["data"] == data
