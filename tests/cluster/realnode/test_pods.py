"""Pods that really run on the real node: a process, kubectl logs, gloo through a headless Service, security."""

from __future__ import annotations

import json
import os
import ssl
import textwrap
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from maas_devcluster.apiclient import ApiClient
from maas_devcluster.node_config import NODE_NAME, REAL_NODE_LABEL
from maas_devcluster.pki import ClusterPki
from maas_devcluster.real_node import KUBELET

from tests.cluster.realnode.conftest import RealNodeCluster
from tests.cluster.realnode.support import apply, runtime_pod, wait_phase

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]


def test_a_pod_runs_python_on_the_real_node_and_its_logs_are_read(
    real_node_cluster: RealNodeCluster, real_namespace: str
) -> None:
    cluster, node = real_node_cluster.cluster, real_node_cluster.node
    command = ["python", "-c", "import os, torch; print('uid', os.getuid(), 'torch', torch.__version__)"]
    apply(cluster, real_namespace, runtime_pod(node, "hello", command))
    finished = wait_phase(cluster, real_namespace, "hello", "Succeeded")
    assert finished["spec"]["nodeName"] == NODE_NAME
    # Through the API server's kubelet client certificate, checked against the kubelet's serving certificate.
    logs = cluster.kubectl("-n", real_namespace, "logs", "hello").stdout
    assert logs.startswith("uid 65532 torch ")


ALL_REDUCE = textwrap.dedent(
    """
    import datetime, os, socket, time
    import torch, torch.distributed as dist
    host = os.environ["MASTER"]
    deadline = time.monotonic() + 60
    while True:  # a new pod's DNS record may lag behind the pod
        try:
            socket.getaddrinfo(host, 29500)
            break
        except socket.gaierror:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    dist.init_process_group(
        "gloo", init_method=f"tcp://{host}:29500", rank=int(os.environ["RANK"]), world_size=2,
        timeout=datetime.timedelta(seconds=60),
    )
    value = torch.tensor([float(dist.get_rank() + 1)])
    dist.all_reduce(value)
    print(f"all_reduce={value.item()}", flush=True)
    dist.destroy_process_group()
    """
)


def test_two_pods_all_reduce_with_gloo_through_a_headless_service_name(
    real_node_cluster: RealNodeCluster, real_namespace: str
) -> None:
    cluster, node = real_node_cluster.cluster, real_node_cluster.node
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "ring"},
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {"ring": "yes"},
            "ports": [{"name": "store", "port": 29500}],
        },
    }
    master = f"rank0.ring.{real_namespace}.svc.cluster.local"
    pods = []
    for rank in (0, 1):
        pod = runtime_pod(
            node, f"rank{rank}", ["python", "-c", ALL_REDUCE], hostname=f"rank{rank}", subdomain="ring"
        )
        pod["metadata"]["labels"]["ring"] = "yes"
        pod["spec"]["containers"][0]["env"] += [
            {"name": "MASTER", "value": master},
            {"name": "RANK", "value": str(rank)},
        ]
        pods.append(pod)
    apply(cluster, real_namespace, service, *pods)
    for rank in (0, 1):
        wait_phase(cluster, real_namespace, f"rank{rank}", "Succeeded", timeout=180)
        assert "all_reduce=3.0" in cluster.kubectl("-n", real_namespace, "logs", f"rank{rank}").stdout


def test_the_node_is_labelled_tainted_and_sized_like_the_machine(real_node_cluster: RealNodeCluster) -> None:
    cluster = real_node_cluster.cluster
    node = json.loads(cluster.kubectl("get", "node", NODE_NAME, "-o", "json").stdout)
    assert node["metadata"]["labels"][REAL_NODE_LABEL] == "true"
    assert {"key": REAL_NODE_LABEL, "value": "true", "effect": "NoSchedule"} in node["spec"]["taints"]
    capacity = node["status"]["capacity"]
    assert capacity["cpu"] == str(os.cpu_count())
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    [mem_total] = [line.split()[1] for line in meminfo if line.startswith("MemTotal:")]
    assert capacity["memory"] == f"{mem_total}Ki"
    assert "nvidia.com/gpu" not in capacity
    [address] = [a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP"]
    assert address == real_node_cluster.node.gateway


def test_the_kubelet_refuses_anonymous_callers_and_its_identity_is_only_a_node(
    real_node_cluster: RealNodeCluster,
) -> None:
    node = real_node_cluster.node
    unverified = ssl.create_default_context()
    unverified.check_hostname, unverified.verify_mode = False, ssl.CERT_NONE
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(
            f"https://{node.gateway}:{node.kubelet_port}/pods", context=unverified, timeout=5
        )
    assert refused.value.code == 401
    # The kubelet's own credentials: the Node authorizer lets it read its node, not the cluster's secrets.
    pki = ClusterPki(real_node_cluster.cluster.dev_cluster.layout.pki)
    kubelet = ApiClient(
        real_node_cluster.cluster.server, pki.ca_cert, pki.client_cert(KUBELET), pki.client_key(KUBELET)
    )
    assert kubelet.request("GET", f"/api/v1/nodes/{NODE_NAME}").status == 200
    assert kubelet.request("GET", "/api/v1/namespaces/kube-system/secrets").status == 403
    kubelet.close()
