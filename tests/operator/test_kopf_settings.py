"""kopf is configured for an operator of event handlers only: no diff base is built or stored for any object."""

from __future__ import annotations

import kopf
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
