"""`kubectl maas`'s pure parts: kubectl's ages and tables, the cluster as the planner sees it, a job's status
view, and which workers `logs` picks; and the command's input errors, which need no cluster."""

from __future__ import annotations

import io
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from maas_api.plan import Plan
from maas_operator import names
from maas_operator.kubectl_plugin import EXIT_ERROR, run
from maas_operator.kubectl_views import (
    SelectionError,
    cluster_view,
    dump,
    human_age,
    job_status,
    log_prefix,
    log_selector,
    render_status,
    select_workers,
    stored_plan,
    table,
)
from maas_operator.planner.cli import EXIT_INVALID

from tests.operator.fakes import START, FakeWorld, train_manifest

NOW = START + timedelta(minutes=5)


# -- kubectl's printing -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (-5, "<invalid>"),
        (-0.5, "0s"),
        (0, "0s"),
        (45, "45s"),
        (119, "119s"),
        (120, "2m"),
        (200, "3m20s"),
        (599, "9m59s"),
        (600, "10m"),
        (179 * 60, "179m"),
        (3 * 3600, "3h"),
        (5 * 3600 + 10 * 60, "5h10m"),
        (47 * 3600, "47h"),
        (48 * 3600, "2d"),
        (3 * 86400 + 4 * 3600, "3d4h"),
        (8 * 86400, "8d"),
        (400 * 86400, "400d"),
        (2 * 365 * 86400, "2y"),
        (3 * 365 * 86400 + 10 * 86400, "3y10d"),
        (9 * 365 * 86400, "9y"),
    ],
)
def test_ages_read_as_kubectl_prints_them(seconds: float, shown: str) -> None:
    assert human_age(timedelta(seconds=seconds)) == shown


def test_tables_pad_each_column_to_its_widest_cell_plus_three() -> None:
    printed = table(["NAME", "READY"], [["a-long-name", "true"], ["b", "false"]])
    assert printed.splitlines() == ["NAME          READY", "a-long-name   true", "b             false"]


def test_json_and_yaml_outputs_read_back_to_the_same_document() -> None:
    document = {"name": "job", "workers": [{"node": None, "stages": [0, 1]}]}
    assert json.loads(dump(document, "json")) == document
    assert dump(document, "json").splitlines()[1].startswith("    ")  # kubectl indents JSON by 4
    assert yaml.safe_load(dump(document, "yaml")) == document
    with pytest.raises(ValueError, match="table, json, yaml"):
        dump(document, "wide")


# -- the cluster as the planner sees it -------------------------------------------------------------------


def node(name: str, gpus: int, ready: bool = True, cordoned: bool = False) -> dict[str, Any]:
    return {
        "kind": "Node",
        "metadata": {"name": name},
        "spec": {"unschedulable": cordoned},
        "status": {
            "allocatable": {"nvidia.com/gpu": str(gpus)},
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def gpu_pod(
    name: str, node_name: str, gpus: int, job: str | None = None, phase: str = "Running"
) -> dict[str, Any]:
    labels = {names.JOB_LABEL: job} if job else {}
    return {
        "metadata": {"name": name, "namespace": "ns", "labels": labels, "uid": name},
        "spec": {"nodeName": node_name, "containers": [{"resources": {"limits": {"nvidia.com/gpu": gpus}}}]},
        "status": {"phase": phase},
    }


def test_the_cluster_view_counts_what_other_pods_hold_as_the_operator_does() -> None:
    nodes = [node("a", 8), node("b", 8), node("down", 8, ready=False), node("cordoned", 4, cordoned=True)]
    nodes.append(
        {"kind": "Node", "metadata": {"name": "broken"}, "status": {"allocatable": {"nvidia.com/gpu": "x"}}}
    )
    pods = [
        gpu_pod("other-0", "a", 3, job="other"),
        gpu_pod("plain", "b", 1),
        gpu_pod("mine-0", "a", 2, job="mine"),  # the job's own: free for its own re-plan
        gpu_pod("done", "b", 4, phase="Succeeded"),  # finished pods hold nothing
    ]
    view = cluster_view(nodes, pods, "ns/mine")
    assert [n.name for n in view.nodes] == ["a", "b", "down", "cordoned"]
    assert view.unreadable == ("broken",)
    assert dict(view.used_gpus) == {"a": 3, "b": 1}
    assert view.total_gpus == 28
    assert view.free_gpus == (8 - 3) + (8 - 1)
    assert view.describe() == "Cluster: 4 nodes (3 ready), 28 GPUs, 12 free; ignored (unreadable): broken"


# -- kubectl maas status ----------------------------------------------------------------------------------


def job_object(world: FakeWorld, generation: int | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "maas.dev/v1alpha1",
        "kind": "MaaSJob",
        "metadata": {
            "name": world.job.name,
            "namespace": world.job.namespace,
            "generation": generation or world.generation,
            "creationTimestamp": START.strftime("%Y-%m-%dT%H:%M:%SZ"),
        },
        "spec": world.manifest["spec"],
        "status": world.status.to_wire(),
    }


def running() -> FakeWorld:
    world = FakeWorld(train_manifest(replicas=2))
    world.settle()
    return world


def test_the_status_view_joins_the_plan_and_each_workers_pod() -> None:
    world = running()
    world.exit("job-r1-s2", 75)
    del world.pods["job-r0-s0"]
    plan = stored_plan(world.plan_configmap)
    assert plan is not None
    view = job_status(job_object(world), plan, list(world.pods.values()))
    assert view["name"] == "job" and view["mode"] == "Train"
    assert view["status"]["phase"] == "Running" and "plan" not in view["status"]
    assert [s["index"] for s in view["plan"]["stages"]] == [0, 1, 2]
    workers = {w["name"]: w for w in view["workers"]}
    assert sorted(workers) == sorted(w.name for w in plan.workers)
    assert workers["job-r0-s0"]["pod"] is None
    assert workers["job-r1-s2"]["pod"]["exitCode"] == 75 and workers["job-r1-s2"]["pod"]["phase"] == "Failed"
    ready = workers["job-r0-s1"]
    assert ready["pod"]["ready"] is True and ready["pod"]["node"] == ready["node"]
    assert ready["pod"]["attempt"] == "0"
    # The view is what -o json prints: plain JSON.
    assert json.loads(json.dumps(view)) == view


def test_the_status_table_shows_conditions_plan_and_workers() -> None:
    world = running()
    world.exit("job-r1-s2", 75)
    plan = stored_plan(world.plan_configmap)
    printed = render_status(job_status(job_object(world), plan, list(world.pods.values())), NOW)
    lines = printed.splitlines()
    assert lines[0].split() == ["Name:", "job"]
    assert "Phase:" in printed and "Running" in printed
    fields = {line.split(":", 1)[0]: line.split(":", 1)[1].strip() for line in lines[:10]}
    assert fields["Workers"] == "6/6 ready, 0 failed"
    assert (fields["Age"], fields["Progress"], fields["Restarts"]) == (
        "5m",
        "not reported",
        "0 (disruptions: 0)",
    )
    header = next(line for line in lines if line.startswith("TYPE"))
    assert header.split() == ["TYPE", "STATUS", "REASON", "AGE", "MESSAGE"]
    ready = next(line for line in lines if line.startswith("Ready "))
    assert ready.split()[:4] == ["Ready", "True", "AllWorkersReady", "5m"]
    assert "Plan: 3 stages x 2 replicas, 1F1B with 4 microbatches" in printed
    failed = next(line for line in lines if line.startswith("job-r1-s2"))
    assert failed.split()[1:3] == ["1", "2"] and "Failed (exit 75)" in failed


def test_the_status_of_a_job_the_operator_has_not_seen_says_so() -> None:
    job = {"metadata": {"name": "new", "namespace": "ns", "generation": 1}, "spec": {"mode": "Serve"}}
    job["status"] = {"observedGeneration": 0, "phase": "Pending"}
    printed = render_status(job_status(job, None, []), NOW)
    assert "generation 1 not observed yet" in printed
    assert "none yet: the operator has not seen this job" in printed
    assert "Plan: none yet" in printed


def test_without_the_plan_configmap_the_status_plan_is_shown() -> None:
    world = running()
    view = job_status(job_object(world), None, list(world.pods.values()))
    assert len(view["workers"]) == 6 and view["plan"]["replicas"] == 2


def test_pods_the_plan_does_not_name_are_listed_too() -> None:
    world = running()
    stale = dict(
        world.pods["job-r0-s0"], metadata={**world.pods["job-r0-s0"]["metadata"], "name": "job-r5-s0"}
    )
    view = job_status(job_object(world), stored_plan(world.plan_configmap), [*world.pods.values(), stale])
    assert view["workers"][-1]["name"] == "job-r5-s0" and view["workers"][-1]["replica"] is None


def test_a_plan_configmap_that_does_not_parse_is_no_plan() -> None:
    assert stored_plan({"data": {names.PLAN_KEY: "{not json"}}) is None
    assert stored_plan(None) is None


# -- kubectl maas logs ------------------------------------------------------------------------------------


def plan_of(**spec: Any) -> Plan:
    world = FakeWorld(train_manifest(**spec))
    world.step()
    plan = stored_plan(world.plan_configmap)
    assert plan is not None
    return plan


def test_logs_pick_the_workers_of_a_stage_and_a_replica() -> None:
    plan = plan_of(replicas=2)
    job = {"metadata": {"name": "job"}}
    assert [w.name for w in select_workers(job, plan, 1, 0)] == ["job-r0-s1"]
    assert [w.name for w in select_workers(job, plan, 2, None)] == ["job-r0-s2", "job-r1-s2"]
    assert [w.name for w in select_workers(job, plan, None, 1)] == ["job-r1-s0", "job-r1-s1", "job-r1-s2"]
    assert len(select_workers(job, plan, None, None)) == 6


def test_with_interleaving_a_stage_is_found_on_the_worker_that_runs_it() -> None:
    plan = plan_of(
        model={"catalog": "Transformer", "args": {"vocab": 64, "dim": 16, "layers": 4, "heads": 2}},
        split={"stages": 4},
        parallelism={"replicas": 1, "microbatches": 4, "schedule": "Interleaved1F1B", "stagesPerWorker": 2},
    )
    assert {w.name: w.stages for w in plan.workers} == {"job-r0-s0": [0, 2], "job-r0-s1": [1, 3]}
    assert [w.name for w in select_workers({"metadata": {"name": "job"}}, plan, 3, None)] == ["job-r0-s1"]


def test_a_selection_outside_the_plan_says_what_the_plan_has() -> None:
    plan = plan_of(replicas=2)
    job = {"metadata": {"name": "job"}}
    with pytest.raises(SelectionError, match=r'maasjob "job" has no stage 3: its plan has stages 0\.\.2'):
        select_workers(job, plan, 3, None)
    with pytest.raises(SelectionError, match=r"has no replica 2: its plan has replicas 0\.\.1"):
        select_workers(job, plan, None, 2)
    waiting = {
        "metadata": {"name": "job"},
        "status": {
            "conditions": [
                {"type": "Planned", "status": "False", "reason": "Unschedulable", "message": "no room"}
            ]
        },
    }
    with pytest.raises(
        SelectionError, match=r"has no plan yet, so it has no workers \(Unschedulable: no room\)"
    ):
        select_workers(waiting, None, 0, 0)


def test_the_pods_of_a_job_are_found_by_the_operators_labels() -> None:
    assert log_selector("job", None) == "maas.dev/job=job"
    assert log_selector("job", 1) == "maas.dev/job=job,maas.dev/replica=1"
    assert log_prefix("job-r0-s1", "worker") == "[pod/job-r0-s1/worker] "


# -- the command's input errors (no cluster needed) -------------------------------------------------------


def plugin(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run(list(argv), out, err)
    return code, out.getvalue(), err.getvalue()


def test_an_invalid_manifest_is_refused_before_any_request(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**train_manifest(), "spec": {**train_manifest()["spec"], "mode": "Fly"}}))
    code, out, err = plugin("plan", "-f", str(bad), "--kubeconfig", str(tmp_path / "none"))
    assert (code, out) == (EXIT_INVALID, "")
    assert "spec.mode" in err


def test_a_namespace_flag_that_contradicts_the_manifest_is_refused(tmp_path: Path) -> None:
    manifest = train_manifest()
    manifest["metadata"]["namespace"] = "team-a"
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(manifest))
    code, _, err = plugin("plan", "-f", str(path), "-n", "team-b")
    assert code == EXIT_INVALID
    assert 'namespace from the provided object "team-a" does not match the namespace "team-b"' in err


def test_a_missing_kubeconfig_is_a_clear_error(tmp_path: Path) -> None:
    code, _, err = plugin("status", "job", "--kubeconfig", str(tmp_path / "missing"))
    assert code == EXIT_ERROR
    assert err.startswith("error: cannot load the kubeconfig")


def test_flags_may_come_before_or_after_the_command(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing")
    assert plugin("--kubeconfig", missing, "status", "job")[0] == EXIT_ERROR
    code, _, err = plugin("status")
    assert code == EXIT_INVALID and "name" in err
    assert plugin("unknown")[0] == EXIT_INVALID
