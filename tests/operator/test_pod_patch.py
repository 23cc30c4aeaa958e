"""The operator-level worker pod patch merges like a strategic merge patch: lists by key, never replaced."""

from __future__ import annotations

import re
from typing import Any

import pytest
from maas_operator.pod_patch import PodPatchError, merge_pod_patch
from maas_operator.settings import OperatorSettings

from tests.operator.test_children import train_pods


def base_pod() -> dict[str, Any]:
    return {
        "metadata": {"name": "w", "labels": {"a": "1"}},
        "spec": {
            "containers": [
                {
                    "name": "worker",
                    "image": "runtime:1",
                    "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                    "volumeMounts": [{"name": "plan", "mountPath": "/etc/maas", "readOnly": True}],
                    "ports": [{"name": "rendezvous", "containerPort": 29400}],
                }
            ],
            "volumes": [{"name": "plan", "configMap": {"name": "job-plan"}}],
            "tolerations": [{"key": "gpu", "operator": "Exists"}],
        },
    }


def test_a_sidecar_a_volume_a_mount_and_a_variable_are_added_to_the_operators() -> None:
    patch = {
        "spec": {
            "containers": [
                {
                    "name": "worker",
                    "env": [{"name": "GLOO_SOCKET_IFNAME", "value": "eth0"}],
                    "volumeMounts": [{"name": "venv", "mountPath": "/opt/venv", "readOnly": True}],
                },
                {"name": "sidecar", "image": "log-shipper:2"},
            ],
            "volumes": [{"name": "venv", "hostPath": {"path": "/srv/venv"}}],
        }
    }
    pod = merge_pod_patch(base_pod(), patch)
    worker, sidecar = pod["spec"]["containers"]
    assert worker["image"] == "runtime:1"
    assert [e["name"] for e in worker["env"]] == ["A", "B", "GLOO_SOCKET_IFNAME"]
    assert [m["mountPath"] for m in worker["volumeMounts"]] == ["/etc/maas", "/opt/venv"]
    assert worker["ports"] == [{"name": "rendezvous", "containerPort": 29400}]
    assert sidecar == {"name": "sidecar", "image": "log-shipper:2"}
    assert [v["name"] for v in pod["spec"]["volumes"]] == ["plan", "venv"]


def test_an_item_with_the_same_key_is_merged_in_place() -> None:
    patch = {
        "metadata": {"labels": {"b": "2"}},
        "spec": {
            "containers": [
                {
                    "name": "worker",
                    "env": [{"name": "B", "value": "patched"}],
                    "volumeMounts": [{"name": "plan", "mountPath": "/etc/maas", "readOnly": False}],
                    "ports": [{"containerPort": 29400, "protocol": "TCP"}],
                }
            ],
            "volumes": [{"name": "plan", "configMap": {"defaultMode": 292}}],
        },
    }
    pod = merge_pod_patch(base_pod(), patch)
    [worker] = pod["spec"]["containers"]
    assert worker["env"] == [{"name": "A", "value": "1"}, {"name": "B", "value": "patched"}]
    assert worker["volumeMounts"] == [{"name": "plan", "mountPath": "/etc/maas", "readOnly": False}]
    assert worker["ports"] == [{"name": "rendezvous", "containerPort": 29400, "protocol": "TCP"}]
    assert pod["spec"]["volumes"] == [{"name": "plan", "configMap": {"name": "job-plan", "defaultMode": 292}}]
    assert pod["metadata"]["labels"] == {"a": "1", "b": "2"}


def test_tolerations_are_appended_once() -> None:
    extra = {"key": "maas.dev/real-node", "operator": "Exists", "effect": "NoSchedule"}
    patch = {"spec": {"tolerations": [extra, {"key": "gpu", "operator": "Exists"}]}}
    pod = merge_pod_patch(base_pod(), patch)
    assert pod["spec"]["tolerations"] == [{"key": "gpu", "operator": "Exists"}, extra]


def test_a_list_without_a_merge_key_and_a_scalar_replace() -> None:
    patch = {"spec": {"containers": [{"name": "worker", "command": ["sleep", "1"]}], "hostNetwork": True}}
    pod = merge_pod_patch({**base_pod(), "spec": {**base_pod()["spec"], "hostNetwork": False}}, patch)
    assert pod["spec"]["containers"][0]["command"] == ["sleep", "1"]
    assert pod["spec"]["hostNetwork"] is True


def test_null_deletes_a_key_and_the_delete_directive_an_item() -> None:
    patch = {
        "metadata": {"labels": {"a": None}},
        "spec": {
            "containers": [{"name": "worker", "env": [{"name": "A", "$patch": "delete"}]}],
            "volumes": [{"name": "absent", "$patch": "delete"}],
            "initContainers": [{"name": "absent", "$patch": "delete"}],
        },
    }
    pod = merge_pod_patch(base_pod(), patch)
    assert pod["metadata"]["labels"] == {}
    assert [e["name"] for e in pod["spec"]["containers"][0]["env"]] == ["B"]
    assert [v["name"] for v in pod["spec"]["volumes"]] == ["plan"]
    assert pod["spec"]["initContainers"] == []


def test_the_inputs_are_not_changed() -> None:
    base, patch = (
        base_pod(),
        {"spec": {"containers": [{"name": "worker", "env": [{"name": "C", "value": "3"}]}]}},
    )
    merge_pod_patch(base, patch)
    assert base == base_pod()
    assert patch == {"spec": {"containers": [{"name": "worker", "env": [{"name": "C", "value": "3"}]}]}}


@pytest.mark.parametrize(
    ("patch", "where"),
    [
        ({"spec": {"volumes": [{"hostPath": {"path": "/x"}}]}}, "spec.volumes[0]: an item of volumes needs"),
        (
            {"spec": {"containers": [{"name": "worker", "env": [{"value": "1"}]}]}},
            "spec.containers[0].env[0]: an item of env needs its merge key 'name'",
        ),
        (
            {"spec": {"volumes": [{"name": "v", "$patch": "replace"}]}},
            "spec.volumes[0].$patch: only 'delete'",
        ),
        ({"spec": {"$patch": "delete"}}, "spec.$patch: $patch is only allowed in an item"),
    ],
)
def test_a_malformed_patch_is_refused_naming_the_field(patch: dict[str, Any], where: str) -> None:
    with pytest.raises(PodPatchError, match="^" + re.escape(where)):
        merge_pod_patch({}, patch)


def test_the_setting_is_checked_at_start_up_and_reaches_every_worker_pod() -> None:
    with pytest.raises(SystemExit, match=re.escape("MAAS_WORKER_POD_PATCH: spec.volumes[0]")):
        OperatorSettings.from_environment({"MAAS_WORKER_POD_PATCH": '{"spec": {"volumes": [{}]}}'})
    settings = OperatorSettings.from_environment(
        {
            "MAAS_WORKER_POD_PATCH": '{"spec": {"volumes": [{"name": "venv", "hostPath": {"path": "/v"}}],'
            ' "containers": [{"name": "worker", "volumeMounts": [{"name": "venv", "mountPath": "/v"}]}]}}'
        }
    )
    for pod in train_pods(worker_pod_patch=settings.worker_pod_patch):
        [worker] = pod["spec"]["containers"]
        assert {"name": "venv", "mountPath": "/v"} in worker["volumeMounts"]
        assert any(m["mountPath"] == "/dev/shm" for m in worker["volumeMounts"])
        assert {v["name"] for v in pod["spec"]["volumes"]} >= {"venv", "plan"}
        assert worker["command"] == ["python", "-m", "maas_runtime.agent"]
