"""Requests the API server's priority and fairness turns away (429) are sent again after the wait its
Retry-After asks for; other refusals, and a 429 that does not end, reach the caller."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio.client.exceptions import ApiException
from maas_operator.kube import TOO_MANY_REQUESTS_RETRIES, Kube, retry_after_seconds
from multidict import CIMultiDict, CIMultiDictProxy


def too_many(retry_after: str | None) -> ApiException:
    error = ApiException(status=429, reason="Too Many Requests")
    # As aiohttp hands them over: case-insensitive.
    error.headers = CIMultiDictProxy(CIMultiDict({"retry-after": retry_after} if retry_after else {}))
    return error


class Server:
    """call_api that answers with `answers` in turn (an exception is raised), then with the object."""

    def __init__(self, *answers: ApiException) -> None:
        self.answers = list(answers)
        self.calls = 0

    async def call_api(self, path: str, method: str, **_: Any) -> dict[str, Any]:
        self.calls += 1
        if self.answers:
            raise self.answers.pop(0)
        return {"kind": "Pod", "metadata": {"name": path.rsplit("/", 1)[-1]}}


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(asyncio, "sleep", sleep)
    return slept


def test_a_turned_away_request_is_sent_again_after_the_servers_wait(waits: list[float]) -> None:
    server = Server(too_many("2"), too_many(None))
    kube = Kube(cast(k8s.ApiClient, server))
    answer = asyncio.run(kube.get("Pod", "ns", "job-r0-s0"))
    assert answer is not None and answer["metadata"]["name"] == "job-r0-s0"
    assert server.calls == 3
    assert waits == [2.0, 1.0]


def test_other_refusals_and_a_429_that_does_not_end_reach_the_caller(waits: list[float]) -> None:
    refused = ApiException(status=422, reason="Unprocessable Entity")
    with pytest.raises(ApiException) as raised:
        manifest = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "ns"}}
        asyncio.run(Kube(cast(k8s.ApiClient, Server(refused))).apply(manifest))
    assert raised.value.status == 422 and waits == []

    server = Server(*[too_many("0") for _ in range(TOO_MANY_REQUESTS_RETRIES + 1)])
    with pytest.raises(ApiException) as raised:
        asyncio.run(Kube(cast(k8s.ApiClient, server)).get("Pod", "ns", "p"))
    assert raised.value.status == 429
    assert server.calls == TOO_MANY_REQUESTS_RETRIES + 1 and len(waits) == TOO_MANY_REQUESTS_RETRIES


def test_retry_after_is_read_in_whole_seconds_else_one() -> None:
    assert retry_after_seconds(too_many("3")) == 3.0
    assert retry_after_seconds(too_many("soon")) == 1.0
    assert retry_after_seconds(too_many(None)) == 1.0
