"""RBAC is enforced: a ServiceAccount's real token is refused (403) until a Role grants it the verb."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException
from maas_devcluster.testing import LocalCluster, wait_until

pytestmark = pytest.mark.cluster

ACCOUNT = "no-roles"


@pytest.fixture
def service_account_api(
    cluster: LocalCluster, core_v1: k8s.CoreV1Api, namespace: str
) -> Iterator[k8s.ApiClient]:
    """A client that authenticates with a token issued for the ServiceAccount through the TokenRequest API."""
    core_v1.create_namespaced_service_account(
        namespace, k8s.V1ServiceAccount(metadata=k8s.V1ObjectMeta(name=ACCOUNT))
    )
    token_request = k8s.AuthenticationV1TokenRequest(
        spec=k8s.V1TokenRequestSpec(audiences=[], expiration_seconds=600)
    )
    token = core_v1.create_namespaced_service_account_token(ACCOUNT, namespace, token_request).status.token
    configuration = k8s.Configuration(host=cluster.server)
    configuration.ssl_ca_cert = str(cluster.ca_cert)
    configuration.api_key = {"authorization": token}
    configuration.api_key_prefix = {"authorization": "Bearer"}
    with k8s.ApiClient(configuration) as api:
        yield api


def test_service_account_without_roles_is_forbidden(
    service_account_api: k8s.ApiClient, namespace: str
) -> None:
    # The token is valid: the API server says who it belongs to...
    review = k8s.AuthenticationV1Api(service_account_api).create_self_subject_review(
        k8s.V1SelfSubjectReview()
    )
    assert review.status.user_info.username == f"system:serviceaccount:{namespace}:{ACCOUNT}"

    # ...and still refuses the request, because no Role grants it.
    with pytest.raises(ApiException) as refused:
        k8s.CoreV1Api(service_account_api).list_namespaced_pod(namespace)
    assert refused.value.status == 403
    assert f"system:serviceaccount:{namespace}:{ACCOUNT}" in refused.value.body
    assert "cannot list resource" in refused.value.body


def test_role_binding_grants_exactly_its_verbs(
    admin_api: k8s.ApiClient, service_account_api: k8s.ApiClient, namespace: str
) -> None:
    rbac = k8s.RbacAuthorizationV1Api(admin_api)
    rbac.create_namespaced_role(
        namespace,
        k8s.V1Role(
            metadata=k8s.V1ObjectMeta(name="pod-reader"),
            rules=[k8s.V1PolicyRule(api_groups=[""], resources=["pods"], verbs=["list"])],
        ),
    )
    rbac.create_namespaced_role_binding(
        namespace,
        k8s.V1RoleBinding(
            metadata=k8s.V1ObjectMeta(name="pod-reader"),
            role_ref=k8s.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name="pod-reader"),
            subjects=[k8s.RbacV1Subject(kind="ServiceAccount", name=ACCOUNT, namespace=namespace)],
        ),
    )
    as_account = k8s.CoreV1Api(service_account_api)

    def can_list_pods() -> bool:
        try:
            as_account.list_namespaced_pod(namespace)
        except ApiException as error:
            if error.status != 403:
                raise
            return False
        return True

    wait_until("the RoleBinding to take effect", can_list_pods, timeout=15)
    with pytest.raises(ApiException) as refused:
        as_account.list_namespaced_config_map(namespace)
    assert refused.value.status == 403
