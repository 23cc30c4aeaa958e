"""Creates, lists and checks the fake GPU Node objects that kwok keeps alive."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from maas_devcluster.apiclient import ApiClient
from maas_devcluster.topology import KWOK_ANNOTATION_KEY, KWOK_ANNOTATION_VALUE

# Requests in flight while creating nodes: enough to hide round trips, few enough for 2 cores.
NODE_CREATION_THREADS = 8


def node_is_schedulable(node: dict[str, Any]) -> bool:
    """Ready, and carrying no not-ready/unreachable taint from the node lifecycle controller."""
    conditions = node.get("status", {}).get("conditions") or []
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    lifecycle_taints = [
        taint
        for taint in node.get("spec", {}).get("taints") or []
        if taint.get("key", "").startswith("node.kubernetes.io/")
        and taint.get("effect") != "PreferNoSchedule"
    ]
    return ready and not lifecycle_taints


def list_fake_nodes(client: ApiClient) -> list[dict[str, Any]]:
    """Every Node kwok manages, however many (paged)."""
    nodes: list[dict[str, Any]] = []
    continue_token = ""
    while True:
        path = "/api/v1/nodes?limit=2000" + (f"&continue={continue_token}" if continue_token else "")
        page = client.get_json(path)
        nodes.extend(
            node
            for node in page.get("items", [])
            if node["metadata"].get("annotations", {}).get(KWOK_ANNOTATION_KEY) == KWOK_ANNOTATION_VALUE
        )
        continue_token = page.get("metadata", {}).get("continue") or ""
        if not continue_token:
            return nodes


def create_fake_nodes(
    client: ApiClient, manifests: list[dict[str, Any]], threads: int = NODE_CREATION_THREADS
) -> int:
    """Creates the nodes that do not exist yet, several requests in flight; returns how many were new."""
    existing = {node["metadata"]["name"] for node in list_fake_nodes(client)}
    missing = [manifest for manifest in manifests if manifest["metadata"]["name"] not in existing]
    if not missing:
        return 0
    with ThreadPoolExecutor(max_workers=min(threads, len(missing))) as pool:
        created = list(pool.map(lambda manifest: client.create("/api/v1/nodes", manifest), missing))
    return sum(created)
