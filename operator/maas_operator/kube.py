"""The one adapter that talks to the API server: server-side apply, deletes, status, events, start-up lists.

Built on `kubernetes_asyncio` (the async twin of the official client). Every write of a child or of the status
is a server-side apply with the field manager `maas-operator`, so applying the same desired object twice is a
no-op and fields set by others (defaults, the scheduler, users' labels) are left alone.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import socket
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import config as k8s_config
from kubernetes_asyncio.client.exceptions import ApiException
from maas_api.job import API_VERSION, GROUP, KIND, PLURAL, VERSION

from maas_operator import metrics, names
from maas_operator.children import JobRef, Manifest
from maas_operator.reconcile import Event

log = logging.getLogger(__name__)

# With a charset the client leaves our own serialisation alone (`apply_body`); the API server drops the charset.
APPLY = "application/apply-patch+yaml; charset=utf-8"
STRATEGIC_MERGE = "application/strategic-merge-patch+json"
MERGE_PATCH = "application/merge-patch+json"
# Collections by kind: (path prefix, plural). Namespaced kinds only, except Node.
_PATHS = {
    "Pod": ("/api/v1", "pods"),
    "ConfigMap": ("/api/v1", "configmaps"),
    "Service": ("/api/v1", "services"),
    "Event": ("/api/v1", "events"),
    KIND: (f"/apis/{GROUP}/{VERSION}", PLURAL),
}


# Characters a YAML parser must not meet raw inside a string: C1 controls (and DEL), the line separators YAML
# folds to a space (NEL, U+2028, U+2029), the byte-order mark and the non-characters; escaped as \uXXXX.
_YAML_ESCAPED = re.compile("[\x7f-\x9f\u2028\u2029\ufeff\ufffe\uffff]")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def apply_body(manifest: Mapping[str, Any]) -> bytes:
    """A server-side apply body: JSON that the API server's YAML parser reads back unchanged.

    JSON's own escaping of characters beyond U+FFFF is a surrogate pair (`\\ud83c\\udfd6`), which YAML refuses
    ("invalid Unicode character escape code"): a worker's termination message with an emoji once made every
    status write of its job fail. Those characters are written raw in UTF-8 instead, and the few that YAML
    cannot take raw are escaped; a lone surrogate (not a character at all) becomes U+FFFD.
    """
    text = json.dumps(manifest, ensure_ascii=False, separators=(",", ":"))
    text = _LONE_SURROGATE.sub("\N{REPLACEMENT CHARACTER}", text)
    return _YAML_ESCAPED.sub(lambda match: f"\\u{ord(match.group()):04x}", text).encode()


TOO_MANY_REQUESTS_RETRIES = 10
"""How often a request the API server answers 429 is sent again (client-go's default too)."""
DEFAULT_RETRY_AFTER_SECONDS = 1.0


def retry_after_seconds(error: ApiException) -> float:
    """The wait a 429 answer asks for (its Retry-After header, whole seconds), else one second."""
    headers: Mapping[str, str] = error.headers or {}
    raw = str(headers.get("Retry-After") or headers.get("retry-after") or "")
    return float(raw) if raw.isdigit() else DEFAULT_RETRY_AFTER_SECONDS


def is_status(error: BaseException, *codes: int) -> bool:
    """True for an API error with one of these HTTP status codes."""
    return isinstance(error, ApiException) and error.status in codes


def api_message(error: ApiException) -> str:
    """The API server's own words for a refusal (its Status message), else the HTTP reason."""
    try:
        message = json.loads(error.body or "{}").get("message")
    except (TypeError, ValueError, AttributeError):
        message = None
    return str(message or error.reason or f"HTTP {error.status}")


async def connect() -> k8s.ApiClient:
    """In-cluster credentials when running in a pod, else the kubeconfig ($KUBECONFIG or ~/.kube/config)."""
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        k8s_config.load_incluster_config()  # type: ignore[no-untyped-call]
    else:
        await k8s_config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))
    return k8s.ApiClient()


class Kube:
    """Typed verbs over one ApiClient; every call counts in the `maas_api_requests_total` metric."""

    def __init__(self, api: k8s.ApiClient) -> None:
        self.api = api
        self.instance = socket.gethostname()

    async def _call(
        self,
        method: str,
        path: str,
        body: object = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
        kind: str = "",
    ) -> Any:
        for attempt in range(TOO_MANY_REQUESTS_RETRIES + 1):
            metrics.API_REQUESTS.labels(verb=method, kind=kind).inc()
            try:
                return await self.api.call_api(
                    path,
                    method,
                    query_params=query or [],
                    header_params={"Content-Type": content_type, "Accept": "application/json"},
                    body=body,
                    response_types_map={200: "object", 201: "object", 202: "object"},
                    auth_settings=["BearerToken"],
                    _return_http_data_only=True,
                )
            except ApiException as error:
                if error.status != 429 or attempt == TOO_MANY_REQUESTS_RETRIES:
                    raise
                # The API server's priority and fairness turned the request away (its queues for our flow
                # are full): wait as long as it says, as client-go does, rather than a fixed client rate.
                metrics.API_THROTTLED.labels(verb=method, kind=kind).inc()
                await asyncio.sleep(retry_after_seconds(error))
        raise AssertionError("unreachable")

    @staticmethod
    def _path(kind: str, namespace: str, name: str = "") -> str:
        prefix, plural = _PATHS[kind]
        path = f"{prefix}/namespaces/{namespace}/{plural}"
        return f"{path}/{name}" if name else path

    async def apply(self, manifest: Manifest) -> dict[str, Any]:
        """Server-side apply (forced: the operator owns the fields it sets on its children)."""
        metadata = manifest["metadata"]
        path = self._path(manifest["kind"], metadata["namespace"], metadata["name"])
        query = [("fieldManager", names.FIELD_MANAGER), ("force", "true")]
        result: dict[str, Any] = await self._call(
            "PATCH", path, apply_body(manifest), query, APPLY, manifest["kind"]
        )
        return result

    async def create(self, manifest: Manifest) -> dict[str, Any] | None:
        """Creates an object that is known not to exist (POST: for the API server a create costs less than an
        apply, which must work out the managed fields of every field); None when it exists after all."""
        metadata = manifest["metadata"]
        path = self._path(manifest["kind"], metadata["namespace"])
        query = [("fieldManager", names.FIELD_MANAGER)]
        try:
            result: dict[str, Any] = await self._call("POST", path, manifest, query, kind=manifest["kind"])
        except ApiException as error:
            if error.status == 409:
                return None
            raise
        return result

    async def lift_gates(self, namespace: str, name: str) -> dict[str, Any] | None:
        """Removes a pod's scheduling gates (a merge patch of that one field, whoever set them); None when the
        pod is gone."""
        body = {"spec": {"schedulingGates": None}}
        try:
            result: dict[str, Any] = await self._call(
                "PATCH",
                self._path("Pod", namespace, name),
                body,
                [("fieldManager", names.FIELD_MANAGER)],
                MERGE_PATCH,
                "Pod",
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return result

    async def apply_status(self, job: JobRef, status: Mapping[str, Any]) -> dict[str, Any]:
        """The whole status, server-side applied to the status subresource: fields we no longer set go."""
        body = {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {"name": job.name, "namespace": job.namespace},
            "status": dict(status),
        }
        path = self._path(KIND, job.namespace, job.name) + "/status"
        query = [("fieldManager", names.FIELD_MANAGER), ("force", "true")]
        result: dict[str, Any] = await self._call(
            "PATCH", path, apply_body(body), query, APPLY, KIND + "/status"
        )
        return result

    async def set_pod_condition(
        self, namespace: str, name: str, condition: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        """Sets one condition on a pod's status (a strategic merge by type: the kubelet's conditions stay);
        None when the pod is gone."""
        path = self._path("Pod", namespace, name) + "/status"
        body = {"status": {"conditions": [dict(condition)]}}
        try:
            result: dict[str, Any] = await self._call(
                "PATCH", path, body, content_type=STRATEGIC_MERGE, kind="Pod/status"
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return result

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """One object as the API server has it now, None when it is gone."""
        try:
            result: dict[str, Any] = await self._call("GET", self._path(kind, namespace, name), kind=kind)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return result

    async def delete(
        self, kind: str, namespace: str, name: str, grace_seconds: int | None = None, uid: str | None = None
    ) -> dict[str, Any] | None:
        """Deletes one object; returns what the server answered, None when it was already gone.
        `uid` makes the delete conditional, so a newer object of the same name is never deleted."""
        options: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "propagationPolicy": "Background",
        }
        if grace_seconds is not None:
            options["gracePeriodSeconds"] = grace_seconds
        if uid is not None:
            options["preconditions"] = {"uid": uid}
        try:
            result: dict[str, Any] = await self._call(
                "DELETE", self._path(kind, namespace, name), options, kind=kind
            )
        except ApiException as error:
            if error.status in (404, 409):
                return None
            raise
        return result

    async def post_event(self, job: JobRef, event: Event, count: int = 1) -> None:
        """An event on the job, as `kubectl describe mj` shows it; `count`: how often it happened."""
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{job.name}.", "namespace": job.namespace},
            "involvedObject": {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "name": job.name,
                "namespace": job.namespace,
                "uid": job.uid,
            },
            "type": event.type,
            "reason": event.reason,
            # The API server refuses messages over 1 KiB in some versions; a planner reason can be long.
            "message": event.message[:1000],
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": count,
            "source": {"component": names.FIELD_MANAGER},
            "reportingComponent": f"{GROUP}/operator",
            "reportingInstance": self.instance[:128],
        }
        await self._call("POST", self._path("Event", job.namespace), body, kind="Event")

    async def list_cluster(self, path: str, label_selector: str = "") -> list[dict[str, Any]]:
        """One List of a collection (start-up only: afterwards the watches keep the caches current)."""
        items: list[dict[str, Any]] = []
        token = ""
        while True:
            query = [("limit", "500")]
            if label_selector:
                query.append(("labelSelector", label_selector))
            if token:
                query.append(("continue", token))
            page = await self._call("GET", path, query=query, kind=path.rsplit("/", 1)[-1])
            items += page.get("items") or []
            token = (page.get("metadata") or {}).get("continue") or ""
            if not token:
                return items

    async def close(self) -> None:
        await self.api.close()
