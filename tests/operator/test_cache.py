"""cache: watch events and the adapter's own write-through agree on which pods exist."""

from __future__ import annotations

from typing import Any

from maas_operator.cache import WorldCache


def pod_body(name: str, uid: str, deleting: bool = False) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": "ns",
        "uid": uid,
        "labels": {"maas.dev/job": "job"},
    }
    if deleting:
        metadata["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {
        "metadata": metadata,
        "spec": {
            "nodeName": "node-0",
            "containers": [{"name": "worker", "resources": {"limits": {"nvidia.com/gpu": "1"}}}],
        },
        "status": {"phase": "Running"},
    }


def test_a_delete_answer_written_through_after_the_deleted_event_leaves_no_ghost() -> None:
    """kwok removes a deleted pod at once: its DELETED event can overtake the answer to our DELETE."""
    cache = WorldCache()
    cache.put_pod("ADDED", pod_body("job-r0-s0", "uid-1"))
    cache.put_pod("DELETED", pod_body("job-r0-s0", "uid-1", deleting=True))
    assert cache.put_pod("MODIFIED", pod_body("job-r0-s0", "uid-1", deleting=True)) == "ns/job"
    assert cache.pods["ns/job"] == {}
    assert cache.holders == {}


def test_a_new_pod_of_the_same_name_is_recorded() -> None:
    cache = WorldCache()
    cache.put_pod("ADDED", pod_body("job-r0-s0", "uid-1"))
    cache.put_pod("DELETED", pod_body("job-r0-s0", "uid-1"))
    cache.put_pod("ADDED", pod_body("job-r0-s0", "uid-2"))
    assert cache.pods["ns/job"]["job-r0-s0"]["metadata"]["uid"] == "uid-2"
    assert set(cache.holders) == {"ns/job-r0-s0"}
