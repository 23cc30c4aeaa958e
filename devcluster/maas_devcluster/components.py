"""The command line of each control-plane component: etcd, kube-apiserver, controller-manager, scheduler, kwok."""

from __future__ import annotations

from maas_devcluster import pki as cluster_pki
from maas_devcluster.binaries import ControlPlaneBinaries
from maas_devcluster.layout import StateLayout
from maas_devcluster.topology import KWOK_NODE_SELECTOR

SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
# kwok hands out pod IPs from here; its default (10.0.0.0/24) would collide with the Service range.
POD_IP_RANGE = "10.128.0.0/16"
# kwok renews a node's Lease at a quarter of its duration, as a kubelet does: node_count / 10 writes a second
# at the kubelet's 40 s. Thousands of fake nodes would swamp 2 cores, so leases stretch to keep renewals near
# 100 a second, and the controller-manager's grace period (kubelet default: lease + 10 s) stretches with them.
KUBELET_LEASE_SECONDS = 40
RENEWALS_PER_SECOND = 100


def node_lease_seconds(node_count: int) -> int:
    return max(KUBELET_LEASE_SECONDS, node_count * 4 // RENEWALS_PER_SECOND)


# Client rate limits of the controller-manager and scheduler, raised for clusters of thousands of fake nodes.
CLIENT_QPS = 500
CLIENT_BURST = 1000


def etcd_command(binaries: ControlPlaneBinaries, layout: StateLayout, ports: dict[str, int]) -> list[str]:
    client_url = f"http://127.0.0.1:{ports['etcd']}"
    peer_url = f"http://127.0.0.1:{ports['etcd-peer']}"
    return [
        str(binaries["etcd"]),
        "--name=maas-dev",
        f"--data-dir={layout.etcd_data}",
        f"--listen-client-urls={client_url}",
        f"--advertise-client-urls={client_url}",
        f"--listen-peer-urls={peer_url}",
        f"--initial-advertise-peer-urls={peer_url}",
        f"--initial-cluster=maas-dev={peer_url}",
        # A throwaway dev cluster: skipping fsync makes every write (and test) much faster.
        "--unsafe-no-fsync",
        "--log-level=warn",
    ]


def apiserver_command(
    binaries: ControlPlaneBinaries,
    layout: StateLayout,
    ports: dict[str, int],
    certificates: cluster_pki.ClusterPki,
    bind_address: str = "127.0.0.1",
) -> list[str]:
    return [
        str(binaries["kube-apiserver"]),
        f"--etcd-servers=http://127.0.0.1:{ports['etcd']}",
        f"--bind-address={bind_address}",
        "--advertise-address=127.0.0.1",
        f"--secure-port={ports['kube-apiserver']}",
        f"--cert-dir={layout.pki}",
        f"--tls-cert-file={certificates.serving_cert}",
        f"--tls-private-key-file={certificates.serving_key}",
        f"--client-ca-file={certificates.ca_cert}",
        # Node authorizes kubelets (only their own node and pods), NodeRestriction limits what they may write.
        "--authorization-mode=Node,RBAC",
        "--enable-admission-plugins=NodeRestriction",
        # Kubelets (the real node's) are reached with a client certificate of our own and must present a
        # serving certificate from our CA, at their InternalIP (a made-up node name does not resolve).
        f"--kubelet-client-certificate={certificates.client_cert(cluster_pki.APISERVER_KUBELET_CLIENT)}",
        f"--kubelet-client-key={certificates.client_key(cluster_pki.APISERVER_KUBELET_CLIENT)}",
        f"--kubelet-certificate-authority={certificates.ca_cert}",
        "--kubelet-preferred-address-types=InternalIP,Hostname",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-account-key-file={certificates.service_account_public_key}",
        f"--service-account-signing-key-file={certificates.service_account_key}",
        f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
        "--allow-privileged=true",
        # This plugin taints every new Node not-ready until the node lifecycle controller sees it Ready, one
        # PATCH per node; kwok reports Ready at once, so for a fake fleet the taint only costs start time
        # (5 s for 4 nodes, minutes for thousands). Nodes that go NotReady later are still tainted and evicted.
        "--disable-admission-plugins=TaintNodesByCondition",
        # As strict as OpenShift about owner references: setting blockOwnerDeletion on a child needs `update`
        # on its owner's finalizers, so the Helm chart's RBAC is tested against that rule too.
        "--enable-admission-plugins=OwnerReferencesPermissionEnforcement",
        "--profiling=false",
    ]


def controller_manager_command(
    binaries: ControlPlaneBinaries,
    layout: StateLayout,
    ports: dict[str, int],
    certificates: cluster_pki.ClusterPki,
    node_count: int,
) -> list[str]:
    kubeconfig = layout.component_kubeconfigs / "kube-controller-manager.kubeconfig"
    return [
        str(binaries["kube-controller-manager"]),
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1",
        f"--secure-port={ports['kube-controller-manager']}",
        # One instance: no need to wait for a leader lease on every start.
        "--leader-elect=false",
        # Each controller acts as its own ServiceAccount, as in kubeadm clusters, so RBAC is exercised.
        "--use-service-account-credentials=true",
        f"--service-account-private-key-file={certificates.service_account_key}",
        f"--root-ca-file={certificates.ca_cert}",
        f"--cluster-signing-cert-file={certificates.ca_cert}",
        f"--cluster-signing-key-file={certificates.ca_key}",
        f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
        "--controllers=*",
        # The default 20 requests/s per controller lets, e.g., the node lifecycle controller update only ~5
        # nodes a second (1000 nodes: minutes); a local fleet of fake nodes needs no such restraint.
        f"--kube-api-qps={CLIENT_QPS}",
        f"--kube-api-burst={CLIENT_BURST}",
        f"--node-monitor-grace-period={node_lease_seconds(node_count) + 10}s",
        "--profiling=false",
    ]


def scheduler_command(
    binaries: ControlPlaneBinaries, layout: StateLayout, ports: dict[str, int]
) -> list[str]:
    kubeconfig = layout.component_kubeconfigs / "kube-scheduler.kubeconfig"
    return [
        str(binaries["kube-scheduler"]),
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1",
        f"--secure-port={ports['kube-scheduler']}",
        "--leader-elect=false",
        # Binding thousands of pods in scale runs would otherwise queue behind the default 50 requests/s.
        f"--kube-api-qps={CLIENT_QPS}",
        f"--kube-api-burst={CLIENT_BURST}",
        "--profiling=false",
    ]


def kwok_command(binaries: ControlPlaneBinaries, layout: StateLayout, node_count: int) -> list[str]:
    return [
        str(binaries["kwok"]),
        f"--kubeconfig={layout.component_kubeconfigs / 'kwok.kubeconfig'}",
        # kwok refuses to start without Stage configs; these make nodes Ready and bound pods Running.
        f"--config={layout.kwok_stages}",
        "--manage-all-nodes=false",
        f"--manage-nodes-with-annotation-selector={KWOK_NODE_SELECTOR}",
        f"--node-lease-duration-seconds={node_lease_seconds(node_count)}",
        f"--cidr={POD_IP_RANGE}",
    ]
