"""The cache against stale versions: watch events and our own write-through answers race (lifecycle tests)."""

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


def versioned(body: dict[str, Any], version: int, **status: Any) -> dict[str, Any]:
    body["metadata"]["resourceVersion"] = str(version)
    body["status"] = {**body.get("status", {}), **status}
    return body


def job_body(version: int, restarts: int) -> dict[str, Any]:
    return {
        "metadata": {"name": "job", "namespace": "ns", "uid": "job-uid", "resourceVersion": str(version)},
        "status": {"restarts": restarts},
    }


def test_a_watch_event_older_than_our_own_status_write_does_not_roll_the_job_back() -> None:
    """Two quick status writes: the first one's event arrives after the second one's answer was recorded."""
    cache = WorldCache()
    cache.put_job("ADDED", job_body(10, restarts=0))
    cache.put_job("MODIFIED", job_body(12, restarts=1))  # write-through of our second write
    cache.put_job("MODIFIED", job_body(11, restarts=0))  # the event of our first write, late
    assert cache.jobs["ns/job"]["status"]["restarts"] == 1
    cache.put_job("MODIFIED", job_body(13, restarts=1))
    assert cache.jobs["ns/job"]["metadata"]["resourceVersion"] == "13"


def test_a_recreated_job_replaces_the_deleted_one() -> None:
    cache = WorldCache()
    cache.put_job("ADDED", job_body(10, restarts=2))
    cache.put_job("DELETED", job_body(11, restarts=2))
    cache.put_job("ADDED", job_body(12, restarts=0))
    assert cache.jobs["ns/job"]["status"]["restarts"] == 0


def test_an_older_pod_version_does_not_replace_a_newer_one() -> None:
    cache = WorldCache()
    cache.put_pod("MODIFIED", versioned(pod_body("job-r0-s0", "uid-1"), 20, phase="Failed"))
    cache.put_pod("MODIFIED", versioned(pod_body("job-r0-s0", "uid-1"), 19, phase="Running"))
    assert cache.pods["ns/job"]["job-r0-s0"]["status"]["phase"] == "Failed"
    # A Failed pod holds no GPUs, and the late Running version must not bring its claim back.
    assert cache.holders == {}


def test_a_late_deleted_event_of_an_old_pod_leaves_the_new_pod_of_that_name() -> None:
    """A restarted operator deletes the old gang and creates the new one before kopf's watch delivers the old
    pod's DELETED event: that event must not drop the new pod (it would look deleted, a second disruption)."""
    cache = WorldCache()
    old = _pod("old-uid", "5")
    new = _pod("new-uid", "9")
    cache.put_pod(None, old)
    cache.put_pod("DELETED", old)  # our forced delete, recorded at once
    cache.put_pod("MODIFIED", new)  # our create, written through
    cache.put_pod("DELETED", old)  # the watch's late event
    assert cache.pods["ns/job"]["job-r0-s0"]["metadata"]["uid"] == "new-uid"
    assert cache.holders["ns/job-r0-s0"].uid == "new-uid"


def _pod(uid: str, version: str) -> dict[str, object]:
    return {
        "metadata": {
            "name": "job-r0-s0",
            "namespace": "ns",
            "uid": uid,
            "resourceVersion": version,
            "labels": {"maas.dev/job": "job"},
        },
        "spec": {
            "nodeName": "n0",
            "containers": [{"name": "worker", "resources": {"limits": {"nvidia.com/gpu": "1"}}}],
        },
        "status": {"phase": "Running"},
    }
