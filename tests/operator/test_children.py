"""Desired children: the start-up contract in every pod, gangs, owner references and user overrides."""

from __future__ import annotations

from typing import Any

from maas_api.contract import PLAN_PATH, RENDEZVOUS_PORT
from maas_api.plan import Plan
from maas_operator import children, names
from maas_operator.children import JobRef
from maas_operator.planner import build_plan
from maas_operator.settings import OperatorSettings

from tests.operator.fakes import gpu_nodes, serve_manifest, spec_of, train_manifest

JOB = JobRef(name="job", namespace="ns", uid="uid-1")


def plan_for(manifest: dict[str, Any]) -> Plan:
    return build_plan(spec_of(manifest), nodes=gpu_nodes(), name=JOB.name, namespace=JOB.namespace)


def env_of(pod: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in pod["spec"]["containers"][0]["env"]}


def train_pods(manifest: dict[str, Any] | None = None, **kwargs: Any) -> list[dict[str, Any]]:
    manifest = manifest or train_manifest(replicas=2)
    plan = plan_for(manifest)
    [gang] = children.gangs(JOB, plan)
    return children.gang_pods(JOB, spec_of(manifest), gang, 0, OperatorSettings(**kwargs), gated=True)


def test_every_pod_carries_the_start_up_contract() -> None:
    pods = train_pods()
    assert [p["metadata"]["name"] for p in pods] == [f"job-r{r}-s{s}" for r in range(2) for s in range(3)]
    for index, pod in enumerate(pods):
        env = env_of(pod)
        assert env["PET_NNODES"] == "6" and env["PET_NPROC_PER_NODE"] == "1"
        assert env["PET_RDZV_BACKEND"] == "c10d" and env["PET_MAX_RESTARTS"] == "0"
        assert env["PET_RDZV_ENDPOINT"] == f"job-r0-s0.job.ns.svc:{RENDEZVOUS_PORT}"
        assert env["MAAS_WORKER_INDEX"] == str(index)
        assert pod["spec"]["containers"][0]["command"] == ["python", "-m", "maas_runtime.agent"]
        assert pod["spec"]["hostname"] == pod["metadata"]["name"] and pod["spec"]["subdomain"] == "job"
        assert pod["spec"]["restartPolicy"] == "Never"
        mount = next(m for m in pod["spec"]["containers"][0]["volumeMounts"] if m["name"] == "plan")
        assert f"{mount['mountPath']}/{names.PLAN_KEY}" == PLAN_PATH
    # One rendezvous id per gang; one gang hash label.
    assert len({env_of(p)["PET_RDZV_ID"] for p in pods}) == 1
    assert len({p["metadata"]["labels"][names.GANG_LABEL] for p in pods}) == 1


def test_pods_are_gated_pinned_owned_labelled_and_non_root() -> None:
    pod = train_pods()[4]
    assert pod["spec"]["schedulingGates"] == [{"name": names.GANG_GATE}]
    term = pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["nodeSelectorTerms"][0]["matchFields"][0]["key"] == "metadata.name"
    [owner] = pod["metadata"]["ownerReferences"]
    assert owner["uid"] == "uid-1" and owner["controller"] is True and owner["kind"] == "MaaSJob"
    labels = pod["metadata"]["labels"]
    assert labels[names.JOB_LABEL] == "job" and labels[names.REPLICA_LABEL] == "1"
    assert labels[names.PIPELINE_RANK_LABEL] == "1" and labels[names.ATTEMPT_LABEL] == "0"
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert pod["spec"]["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": "1"}


def test_the_gang_hash_changes_with_the_attempt_and_nothing_else_random() -> None:
    manifest = train_manifest()
    plan = plan_for(manifest)
    [gang] = children.gangs(JOB, plan)
    spec = spec_of(manifest)
    first = children.gang_pods(JOB, spec, gang, 0, OperatorSettings(), gated=True)
    again = children.gang_pods(JOB, spec, gang, 0, OperatorSettings(), gated=False)
    retry = children.gang_pods(JOB, spec, gang, 1, OperatorSettings(), gated=True)
    assert children.gang_hash_of(first) == children.gang_hash_of(again) != children.gang_hash_of(retry)


def test_user_settings_reach_the_pods() -> None:
    manifest = train_manifest(
        image="registry.example/runtime:2",
        env=[{"name": "HF_HOME", "value": "/cache"}],
        template={"labels": {"team": "ml"}, "annotations": {"note": "x"}, "priorityClassName": "high"},
        placement={"nodeSelector": {"pool": "a"}, "tolerations": [{"key": "gpu", "operator": "Exists"}]},
        resources={"gpus": 1, "cpu": 4, "memory": "16Gi"},
        checkpoint={"claimName": "ckpt"},
    )
    manifest["spec"]["placement"]["nodeSelector"] = {}
    pod = train_pods(manifest)[0]
    container = pod["spec"]["containers"][0]
    assert container["image"] == "registry.example/runtime:2"
    assert env_of(pod)["HF_HOME"] == "/cache"
    assert pod["metadata"]["labels"]["team"] == "ml" and pod["metadata"]["annotations"] == {"note": "x"}
    assert pod["spec"]["priorityClassName"] == "high"
    assert pod["spec"]["tolerations"] == [{"key": "gpu", "operator": "Exists"}]
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "1", "cpu": "4", "memory": "16Gi"}
    assert {"name": "checkpoints", "mountPath": "/checkpoints"} in container["volumeMounts"]


def test_the_operator_pod_patch_is_merged_last() -> None:
    patch = {"spec": {"runtimeClassName": "nvidia", "securityContext": {"runAsUser": 1000}}}
    pod = train_pods(worker_pod_patch=patch, runtime_image="default:1")[0]
    assert pod["spec"]["runtimeClassName"] == "nvidia"
    assert pod["spec"]["securityContext"]["runAsUser"] == 1000
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert pod["spec"]["containers"][0]["image"] == "default:1"


def test_serve_replicas_are_worlds_of_their_own() -> None:
    manifest = serve_manifest(replicas=2)
    plan = plan_for(manifest)
    gangs = children.gangs(JOB, plan)
    assert [g.key for g in gangs] == ["r0", "r1"]
    second = gangs[1]
    assert second.plan.replicas == 1 and [w.index for w in second.plan.workers] == [0, 1]
    assert [w.name for w in second.plan.workers] == ["job-r1-s0", "job-r1-s1"]
    pods = children.gang_pods(JOB, spec_of(manifest), second, 0, OperatorSettings(), gated=False)
    env = env_of(pods[1])
    assert env["PET_NNODES"] == "2" and env["MAAS_WORKER_INDEX"] == "1"
    assert env["PET_RDZV_ENDPOINT"].startswith("job-r1-s0.job.ns.svc:")
    volume = next(v for v in pods[0]["spec"]["volumes"] if v["name"] == "plan")
    assert volume["configMap"]["name"] == "job-plan-r1"
    assert [p["name"] for p in pods[0]["spec"]["containers"][0]["ports"]][-1] == "http"
    # The replica's plan reads back as a valid one-replica plan.
    [configmap, _] = children.gang_configmaps(JOB, plan)
    assert Plan.model_validate_json(configmap["data"][names.PLAN_KEY]).replicas == 1


def test_the_service_is_headless_and_publishes_not_ready_workers() -> None:
    service = children.worker_service(JOB, spec_of(serve_manifest()))
    assert service["metadata"]["name"] == "job"
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"] == {names.JOB_LABEL: "job"}
    assert "http" in [p["name"] for p in service["spec"]["ports"]]
