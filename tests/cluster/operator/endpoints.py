"""A record of a Serve job's endpoint while the cluster changes under it: a watch on the endpoint Service's
EndpointSlices and one on the namespace's pods, checked at every EndpointSlice event.

At every moment the slices say something (each watch event), the ready endpoints must be at least the minimum
(once armed) and each must belong to a replica whose every stage is up in the pod watch's picture: its pods all
present, of one gang, not terminating, containers ready. A stage the test takes down on purpose reaches the
endpoint through the operator, the kubelet (here kwok) and the EndpointSlice controller: `grace_seconds`
excuses an endpoint whose stage went down that recently, and the lag is recorded.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client as k8s
from kubernetes import watch
from maas_operator import names

Obj = dict[str, Any]


def _true(pod: Obj, type_: str) -> bool:
    return any(
        c["type"] == type_ and c["status"] == "True" for c in pod.get("status", {}).get("conditions") or []
    )


def _labels(pod: Obj) -> dict[str, str]:
    return dict(pod["metadata"].get("labels") or {})


def _gang_size(pod: Obj) -> int:
    env = pod["spec"]["containers"][0].get("env") or []
    return int(next(e["value"] for e in env if e["name"] == "PET_NNODES"))


@dataclass
class Sample:
    at: float
    """time.monotonic() of the event."""
    ready: tuple[str, ...]
    """Entry pods that are ready endpoints."""
    event: str = ""


@dataclass(frozen=True)
class ReadyEndpoint:
    """One ready endpoint of the Service: its entry pod (name and uid: names repeat across revisions) and
    address."""

    pod: str
    uid: str
    address: str


@dataclass
class EndpointRecord:
    core_v1: k8s.CoreV1Api
    discovery_v1: k8s.DiscoveryV1Api
    namespace: str
    job: str
    minimum: int = 0
    """Ready endpoints that must exist at every slice event once `arm()` was called."""
    grace_seconds: float = 0.0
    samples: list[Sample] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    pods: dict[str, Obj] = field(default_factory=dict)
    down_since: dict[str, float] = field(default_factory=dict)
    """Pod -> when its containers stopped being ready (or it started terminating), while they are not."""
    left_endpoint: dict[str, float] = field(default_factory=dict)
    """Entry pod -> when it last stopped being a ready endpoint."""
    first_deleting: dict[str, float] = field(default_factory=dict)
    """Pod -> when it was first seen terminating or deleted."""
    stage_down_lag: list[float] = field(default_factory=list)
    """For endpoints removed after a stage went down: seconds from the stage down to the removal."""
    armed: bool = False
    fewest_ready: int | None = None
    """The fewest ready endpoints at any slice event since `arm()`."""

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._slices: dict[str, Obj] = {}
        self._ready: tuple[str, ...] = ()
        self._addresses: tuple[ReadyEndpoint, ...] = ()
        self.pods_by_uid: dict[str, Obj] = {}
        """Every pod seen, by uid, as last seen (kept after it is deleted)."""
        self._threads = [
            threading.Thread(target=self._watch, args=(self._list_pods, self._on_pod), daemon=True),
            threading.Thread(target=self._watch, args=(self._list_slices, self._on_slice), daemon=True),
        ]

    # -- lifecycle ----------------------------------------------------------------------------------------

    def __enter__(self) -> EndpointRecord:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)

    def arm(self, minimum: int) -> None:
        """From now on, fewer than `minimum` ready endpoints at any slice event is a violation."""
        with self._lock:
            self.minimum = minimum
            self.armed = True
            self.fewest_ready = len(self._ready)

    def ready(self) -> tuple[str, ...]:
        with self._lock:
            return self._ready

    def ready_endpoints(self) -> tuple[ReadyEndpoint, ...]:
        """The ready endpoints' pods and addresses, as the slices say now (what a client balances over)."""
        with self._lock:
            return self._addresses

    def wait_ready(self, entries: list[str], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sorted(self.ready()) == sorted(entries):
                return
            time.sleep(0.1)
        raise AssertionError(f"endpoints {sorted(self.ready())}, expected {sorted(entries)}")

    def assert_clean(self) -> None:
        timeline = "\n".join(f"  {s.at:.2f} {s.event}: {list(s.ready)}" for s in self.samples[-40:])
        assert not self.violations, "\n".join(self.violations[:10]) + "\nlast endpoint changes:\n" + timeline

    # -- watches ------------------------------------------------------------------------------------------

    def _list_pods(self, **kwargs: Any) -> Any:
        return self.core_v1.list_namespaced_pod(self.namespace, **kwargs)

    def _list_slices(self, **kwargs: Any) -> Any:
        selector = f"kubernetes.io/service-name={names.endpoint_service_name(self.job)}"
        return self.discovery_v1.list_namespaced_endpoint_slice(
            self.namespace, label_selector=selector, **kwargs
        )

    def _watch(self, lister: Callable[..., Any], handle: Callable[[str, Obj], None]) -> None:
        serialize = self.core_v1.api_client.sanitize_for_serialization
        listing = lister()
        for item in listing.items:
            handle("ADDED", serialize(item))
        version = listing.metadata.resource_version
        stream = watch.Watch()  # type: ignore[no-untyped-call]
        while not self._stop.is_set():
            # Short watches, so the thread notices a stop; each resumes where the last event left off (kept
            # here: the client keeps it only for the API's own list functions, not for a wrapper like ours).
            for event in stream.stream(  # type: ignore[no-untyped-call]
                lister, resource_version=version, timeout_seconds=1, allow_watch_bookmarks=True
            ):
                raw = event["raw_object"]
                version = raw["metadata"]["resourceVersion"]
                if event["type"] != "BOOKMARK":
                    handle(event["type"], serialize(raw))

    def _on_pod(self, event_type: str, pod: Obj) -> None:
        name = pod["metadata"]["name"]
        now = time.monotonic()
        with self._lock:
            leaving = event_type == "DELETED" or bool(pod["metadata"].get("deletionTimestamp"))
            if leaving:
                self.first_deleting.setdefault(name, now)
            if event_type == "DELETED":
                self.pods.pop(name, None)
            else:
                self.pods[name] = pod
            self.pods_by_uid[pod["metadata"]["uid"]] = pod
            up = not leaving and _true(pod, "ContainersReady")
            if up:
                self.down_since.pop(name, None)
            else:
                self.down_since.setdefault(name, now)

    def _on_slice(self, event_type: str, endpoint_slice: Obj) -> None:
        now = time.monotonic()
        with self._lock:
            name = endpoint_slice["metadata"]["name"]
            if event_type == "DELETED":
                self._slices.pop(name, None)
            else:
                self._slices[name] = endpoint_slice
            ready = tuple(
                sorted(
                    endpoint["targetRef"]["name"]
                    for s in self._slices.values()
                    for endpoint in s.get("endpoints") or []
                    if (endpoint.get("conditions") or {}).get("ready") and endpoint.get("targetRef")
                )
            )
            self._addresses = tuple(
                sorted(
                    (
                        ReadyEndpoint(endpoint["targetRef"]["name"], endpoint["targetRef"]["uid"], address)
                        for s in self._slices.values()
                        for endpoint in s.get("endpoints") or []
                        if (endpoint.get("conditions") or {}).get("ready") and endpoint.get("targetRef")
                        for address in endpoint.get("addresses", [])[:1]
                    ),
                    key=lambda e: e.pod,
                )
            )
            for entry in set(self._ready) - set(ready):
                self.left_endpoint[entry] = now
                replica = _labels(self.pods.get(entry, {"metadata": {}})).get(names.REPLICA_LABEL)
                downs = [
                    self.down_since[p]
                    for p, pod in self.pods.items()
                    if _labels(pod).get(names.REPLICA_LABEL) == replica and p in self.down_since
                ]
                if downs:
                    self.stage_down_lag.append(now - min(downs))
            self._ready = ready
            self.samples.append(Sample(now, ready, f"{event_type} {name}"))
            if self.armed:
                self.fewest_ready = min(
                    len(ready), self.fewest_ready if self.fewest_ready is not None else len(ready)
                )
            if self.armed and len(ready) < self.minimum:
                self.violations.append(f"{len(ready)} ready endpoints, minimum {self.minimum}: {ready}")
            for entry in ready:
                problem = self._stage_problem(entry, now)
                if problem:
                    self.violations.append(f"endpoint {entry} ready while {problem}")

    def _stage_problem(self, entry: str, now: float) -> str | None:
        pod = self.pods.get(entry)
        if pod is None:
            return "its pod is gone"
        labels = _labels(pod)
        replica, gang = labels.get(names.REPLICA_LABEL), labels.get(names.GANG_LABEL)
        members = {
            name: p
            for name, p in self.pods.items()
            if _labels(p).get(names.JOB_LABEL) == self.job and _labels(p).get(names.REPLICA_LABEL) == replica
        }
        if any(_labels(p).get(names.GANG_LABEL) != gang for p in members.values()):
            return f"replica {replica} holds pods of another gang"
        if len(members) != _gang_size(pod):
            return f"replica {replica} has {len(members)} of {_gang_size(pod)} workers"
        for name in members:
            since = self.down_since.get(name)
            if since is not None and now - since > self.grace_seconds:
                return f"stage {name} of replica {replica} is down for {now - since:.1f} s"
        return None
