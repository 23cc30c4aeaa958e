"""The generated MaaSJob CRD on a real API server: installs, validates server-side, explains, scales."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException
from maas_devcluster.testing import LocalCluster, wait_until

from tests.manifests import CRD_PATH, INVALID, load_examples, load_invalid

pytestmark = pytest.mark.cluster


# A lost CRD, invalid manifest or example fails these tests: a skip would let them pass without checking.
NONE_FOUND = "none-found"


def _crd_document() -> dict[str, Any]:
    assert CRD_PATH.exists(), (
        f"{CRD_PATH.relative_to(CRD_PATH.parent.parent)} is missing: regenerate it with `make crds`"
    )
    document: dict[str, Any] = yaml.safe_load(CRD_PATH.read_text())
    return document


@pytest.fixture(scope="module")
def maasjob_crd(cluster: LocalCluster) -> Iterator[dict[str, Any]]:
    """Installs the committed CRD once per module and waits until the API server serves it."""
    crd = _crd_document()
    cluster.kubectl("apply", "--server-side", "-f", CRD_PATH)
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{crd['metadata']['name']}")
    yield crd
    cluster.kubectl("delete", "-f", CRD_PATH, "--wait=false", check=False)


def _served_version(crd: dict[str, Any]) -> str:
    return str(next(version["name"] for version in crd["spec"]["versions"] if version.get("storage")))


def _create(
    admin_api: k8s.ApiClient, crd: dict[str, Any], body: dict[str, Any], namespace: str, dry_run: bool
) -> dict[str, Any]:
    """Creates through the API server with strict field validation, so unknown fields are refused too."""
    created: dict[str, Any] = k8s.CustomObjectsApi(admin_api).create_namespaced_custom_object(
        crd["spec"]["group"],
        _served_version(crd),
        namespace,
        crd["spec"]["names"]["plural"],
        body,
        dry_run="All" if dry_run else None,
        field_validation="Strict",
    )
    return created


def test_crd_is_established(admin_api: k8s.ApiClient, maasjob_crd: dict[str, Any]) -> None:
    served = k8s.ApiextensionsV1Api(admin_api).read_custom_resource_definition(
        maasjob_crd["metadata"]["name"]
    )
    conditions = {condition.type: condition.status for condition in served.status.conditions}
    assert conditions["Established"] == "True"
    assert conditions["NamesAccepted"] == "True"


def _invalid_parameters() -> list[Any]:
    if not INVALID:
        return [pytest.param(None, id=NONE_FOUND)]
    return [pytest.param(path, id=path.stem) for path in INVALID]


@pytest.mark.parametrize("path", _invalid_parameters())
def test_invalid_manifest_is_rejected_by_the_api_server(
    admin_api: k8s.ApiClient, maasjob_crd: dict[str, Any], path: Path | None
) -> None:
    assert path is not None, "no tests/manifests/invalid/*.yaml found (one per validation rule is expected)"
    manifest = load_invalid(path)
    assert manifest.expected, f"{path.name} has no '# expect:' line"

    with pytest.raises(ApiException) as refused:
        _create(admin_api, maasjob_crd, manifest.body, "default", dry_run=True)

    assert refused.value.status in (400, 422), refused.value.body
    message = json.loads(refused.value.body)["message"]
    for expected in manifest.expected:
        assert expected in message, f"{path.name}: expected {expected!r} in the API server's error: {message}"


def _example_parameters() -> list[Any]:
    examples = load_examples()
    if not examples:
        return [pytest.param(None, None, id=NONE_FOUND)]
    return [pytest.param(path, body, id=f"{path.stem}/{body['metadata']['name']}") for path, body in examples]


@pytest.mark.parametrize(("path", "body"), _example_parameters())
def test_example_is_accepted_by_the_api_server(
    admin_api: k8s.ApiClient, maasjob_crd: dict[str, Any], path: Path | None, body: dict[str, Any] | None
) -> None:
    assert path is not None and body is not None, "no MaaSJob found in examples/*.yaml"
    accepted = _create(admin_api, maasjob_crd, body, "default", dry_run=True)
    assert accepted["metadata"]["name"] == body["metadata"]["name"], path.name


def test_kubectl_explain_shows_field_descriptions(cluster: LocalCluster, maasjob_crd: dict[str, Any]) -> None:
    spec_schema = maasjob_crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    resource = f"{maasjob_crd['spec']['names']['plural']}.spec"

    # The API server publishes a new CRD's OpenAPI a moment after it is Established.
    explained = wait_until(
        f"kubectl explain {resource}",
        lambda: (
            (result := cluster.kubectl("explain", resource, check=False)).returncode == 0 and result.stdout
        ),
    )

    flat_output = " ".join(explained.split())
    assert " ".join(spec_schema["description"].split()) in flat_output
    for field_name, field_schema in spec_schema["properties"].items():
        assert re.search(rf"^\s+{re.escape(field_name)}\s", explained, re.MULTILINE), (
            f"{field_name} not explained"
        )
        first_words = " ".join(field_schema["description"].split()[:5])
        assert first_words in flat_output, f"description of {field_name} not shown"


def _replica_target(body: dict[str, Any]) -> int:
    """A replica count other than the example's own that its min/max bounds still allow."""
    parallelism = body["spec"].get("parallelism", {})
    current = parallelism.get("replicas", 1)
    upper = parallelism.get("maxReplicas", current + 1)
    return current + 1 if current + 1 <= upper else current - 1


def test_kubectl_scale_sets_parallelism_replicas(
    cluster: LocalCluster, admin_api: k8s.ApiClient, maasjob_crd: dict[str, Any], namespace: str
) -> None:
    scale = maasjob_crd["spec"]["versions"][0]["subresources"]["scale"]
    assert scale["specReplicasPath"] == ".spec.parallelism.replicas"
    examples = load_examples()
    assert examples, "no MaaSJob found in examples/*.yaml"
    _, body = next(
        ((path, body) for path, body in examples if "replicas" in body["spec"].get("parallelism", {})),
        examples[0],
    )
    body = {**body, "metadata": {**body["metadata"], "namespace": namespace}}
    name = _create(admin_api, maasjob_crd, body, namespace, dry_run=False)["metadata"]["name"]
    target = _replica_target(body)

    cluster.kubectl("scale", f"maasjob/{name}", f"--replicas={target}", "-n", namespace)

    replicas = cluster.kubectl(
        "get", f"maasjob/{name}", "-n", namespace, "-o", "jsonpath={.spec.parallelism.replicas}"
    ).stdout
    assert int(replicas) == target
    group_version = f"{maasjob_crd['spec']['group']}/{_served_version(maasjob_crd)}"
    plural = maasjob_crd["spec"]["names"]["plural"]
    scale_path = f"/apis/{group_version}/namespaces/{namespace}/{plural}/{name}/scale"
    assert json.loads(cluster.kubectl("get", "--raw", scale_path).stdout)["spec"]["replicas"] == target
