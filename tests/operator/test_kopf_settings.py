"""kopf is configured for an operator of event handlers only: no diff base is built or stored for any object, and
every handler runs in the operator's event loop (kopf hands plain functions to a thread pool)."""

from __future__ import annotations

import inspect

import kopf
from maas_operator import handlers
from maas_operator.handlers import configure_kopf


def test_no_diff_base_is_built_fetched_or_stored_for_a_watched_object() -> None:
    settings = kopf.OperatorSettings()
    configure_kopf(settings)
    storage = settings.persistence.diffbase_storage
    pod = kopf.Body(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "p", "namespace": "ns", "labels": {"a": "b"}, "annotations": {"c": "d"}},
            "spec": {"containers": [{"name": "worker", "image": "x"}]},
        }
    )
    patch = kopf.Patch()

    assert storage.build(body=pod) == {}
    assert storage.fetch(body=pod) is None
    storage.store(body=pod, patch=patch, essence=storage.build(body=pod))
    assert not patch
    # kopf's finalizer and progress annotations stay under our own prefix.
    assert settings.persistence.finalizer == "maas.dev/finalizer"


def test_every_handler_is_a_coroutine_function_so_kopf_calls_it_in_the_event_loop() -> None:
    registered: dict[str, object] = {
        "start": handlers.start,
        "stop": handlers.stop,
        "probe": handlers.probe,
        "job_event": handlers.job_event,
        "pod_event": handlers.pod_event,
        "node_event": handlers.node_event,
        "configmap_event": handlers.configmap_event,
    }
    assert [name for name, fn in registered.items() if not inspect.iscoroutinefunction(fn)] == []
