"""kubectl on MaaSJobs with the operator running as a real process: `get` columns, `explain`, `wait`, `scale`,
and our plugin `kubectl maas` (plan, status, logs) run by kubectl itself as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from maas_devcluster.simulation import exit_annotations
from maas_devcluster.testing import LocalCluster

from tests.cluster.operator.support import REPO, Jobs, OperatorProcess, train_job

pytestmark = pytest.mark.cluster

WORKERS = 3
"""train_job's workers: 3 stages x 1 replica."""


def rows(printed: str) -> list[list[str]]:
    return [line.split() for line in printed.splitlines()]


def columns(printed: str) -> list[dict[str, str]]:
    """kubectl's table as one dict per row, cut at the header's column starts (cells may be empty)."""
    header, *lines = printed.splitlines()
    starts = [i for i, char in enumerate(header) if char != " " and (i == 0 or header[i - 1] == " ")]
    bounds = list(zip(starts, [*starts[1:], None], strict=True))
    names = [header[a:b].strip() for a, b in bounds]
    return [{name: line[a:b].strip() for name, (a, b) in zip(names, bounds, strict=True)} for line in lines]


def wait_running(jobs: Jobs, name: str) -> dict[str, Any]:
    return jobs.wait_phase(name, "Running", timeout=60)


# -- kubectl's own verbs ----------------------------------------------------------------------------------


def test_get_prints_the_jobs_columns(jobs: Jobs, pool: str) -> None:
    jobs.apply(train_job("cols", pool))
    wait_running(jobs, "cols")
    [row] = columns(jobs.kubectl("get", "mj").stdout)
    assert list(row) == ["NAME", "MODE", "STAGES", "REPLICAS", "READY", "STATUS", "STEP", "LOSS", "AGE"]
    assert list(row.values())[:6] == ["cols", "Train", "3", "1", f"{WORKERS}/{WORKERS}", "Running"]
    # kwok's workers run no code, so they report no progress (the real node's tests read it).
    assert (row["STEP"], row["LOSS"]) == ("", "")
    [row] = columns(jobs.kubectl("get", "maasjobs", "-o", "wide").stdout)
    assert list(row)[9:] == ["RESTARTS", "REASON", "STRATEGY", "SCHEDULE"]
    assert list(row.values())[9:] == ["0", "AllWorkersReady", "Layer", "1F1B"]
    # The category: `kubectl get maas` lists MaaSJobs.
    assert rows(jobs.kubectl("get", "maas", "-o", "name").stdout) == [["maasjob.maas.dev/cols"]]


def test_get_shows_why_a_job_waits(jobs: Jobs, pool: str) -> None:
    jobs.apply(train_job("waits", pool, parallelism={"replicas": 6}))
    jobs.wait(
        "waits Unschedulable",
        lambda: (c := jobs.condition("waits", "Planned")) is not None and c["reason"] == "Unschedulable",
    )
    [row] = columns(jobs.kubectl("get", "mj", "waits", "-o", "wide").stdout)
    assert (row["STAGES"], row["REPLICAS"], row["READY"]) == ("", "", "")
    assert (row["STATUS"], row["REASON"], row["RESTARTS"]) == ("Pending", "Unschedulable", "0")


def test_explain_documents_spec_and_status_fields(cluster: LocalCluster, crd: None) -> None:
    replicas = cluster.kubectl("explain", "maasjob.spec.parallelism.replicas").stdout
    assert "FIELD: replicas <integer>" in replicas
    assert "Data-parallel replicas of the whole pipeline (the scale subresource)" in " ".join(
        replicas.split()
    )
    conditions = " ".join(cluster.kubectl("explain", "mj.status.conditions.type").stdout.split())
    assert "Reconciling" in conditions and "Stalled" in conditions
    observed = " ".join(cluster.kubectl("explain", "mj.status.observedGeneration").stdout.split())
    assert "has not seen the job yet" in observed


def test_wait_for_conditions_and_phases(jobs: Jobs, pool: str) -> None:
    jobs.apply(train_job("waited", pool, template={"annotations": exit_annotations(0, 3)}))
    jobs.kubectl("wait", "--for=condition=Ready", "mj/waited", "--timeout=60s")
    jobs.kubectl("wait", "--for=jsonpath={.status.phase}=Running", "mj/waited", "--timeout=10s")
    done = jobs.kubectl("wait", "--for=condition=Succeeded", "mj/waited", "--timeout=60s").stdout
    assert done.strip() == "maasjob.maas.dev/waited condition met"
    assert jobs.status("waited")["phase"] == "Succeeded"


def test_wait_waits_for_the_operator_to_judge_an_edited_spec(
    jobs: Jobs, pool: str, operator: OperatorProcess
) -> None:
    """kubectl wait honours each condition's observedGeneration: an edit the operator has not seen yet does
    not meet `Ready`, even though the Ready condition of the previous generation is True."""
    jobs.apply(train_job("edited", pool))
    jobs.kubectl("wait", "--for=condition=Ready", "mj/edited", "--timeout=60s")
    operator.stop()
    try:
        jobs.kubectl(
            "patch", "mj", "edited", "--type=merge", "-p", '{"spec":{"env":[{"name":"X","value":"1"}]}}'
        )
        stale = jobs.kubectl("wait", "--for=condition=Ready", "mj/edited", "--timeout=2s", check=False)
        assert stale.returncode != 0 and "timed out" in stale.stderr
    finally:
        operator.start()
    jobs.kubectl("wait", "--for=condition=Ready", "mj/edited", "--timeout=60s")
    assert jobs.status("edited")["observedGeneration"] == 2


def test_scale_changes_the_running_replicas(jobs: Jobs, pool: str) -> None:
    jobs.apply(train_job("scaled", pool, parallelism={"replicas": 1, "maxReplicas": 4}))
    wait_running(jobs, "scaled")
    assert (
        jobs.kubectl("scale", "mj/scaled", "--replicas=2").stdout.strip() == "maasjob.maas.dev/scaled scaled"
    )
    jobs.kubectl("wait", "--for=jsonpath={.status.readyWorkers}=6/6", "mj/scaled", "--timeout=60s")
    _, row = rows(jobs.kubectl("get", "mj", "scaled").stdout)
    assert row[1:6] == ["Train", "3", "2", "6/6", "Running"]


# -- kubectl maas -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with `kubectl-maas`, as `pip install` makes it (the console script runs
    maas_operator.kubectl_plugin:main with this interpreter), for kubectl to find on PATH."""
    folder = tmp_path_factory.mktemp("plugin-bin")
    script = folder / "kubectl-maas"
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m maas_operator.kubectl_plugin "$@"\n')
    script.chmod(0o755)
    return folder


class Plugin:
    """`kubectl maas ...` run by kubectl, which finds the plugin on PATH."""

    def __init__(self, cluster: LocalCluster, namespace: str, folder: Path) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.env = {
            **os.environ,
            "PATH": os.pathsep.join([str(folder), *map(str, cluster.bin_dirs), os.environ.get("PATH", "")]),
            "KUBECONFIG": str(cluster.kubeconfig),
            "PYTHONPATH": os.pathsep.join(
                [str(REPO / p) for p in ("api", "operator", "runtime", "devcluster")] + [str(REPO)]
            ),
        }

    def __call__(self, *arguments: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["kubectl", "maas", *arguments, "-n", self.namespace],
            input=stdin,
            capture_output=True,
            text=True,
            env=self.env,
            timeout=60,
            check=False,
        )


@pytest.fixture
def plugin(cluster: LocalCluster, namespace: str, plugin_path: Path) -> Iterator[Plugin]:
    yield Plugin(cluster, namespace, plugin_path)


def test_kubectl_finds_the_plugin(plugin: Plugin, plugin_path: Path) -> None:
    listed = subprocess.run(
        ["kubectl", "plugin", "list"], capture_output=True, text=True, env=plugin.env, check=False
    )
    assert str(plugin_path / "kubectl-maas") in listed.stdout


def test_plan_previews_what_the_operator_then_does(jobs: Jobs, pool: str, plugin: Plugin) -> None:
    manifest = train_job("preview", pool, parallelism={"replicas": 2})
    preview = plugin("plan", "-f", "-", "-o", "json", stdin=yaml.safe_dump(manifest))
    assert preview.returncode == 0, preview.stderr
    planned = {w["name"]: w["node"] for w in json.loads(preview.stdout)["workers"]}
    assert len(planned) == 6 and all(node.startswith(f"{pool}-n") for node in planned.values())
    jobs.apply(manifest)
    status = wait_running(jobs, "preview")
    assert {w["name"]: w["node"] for w in status["plan"]["workers"]} == planned

    table = plugin("plan", "-f", "-", stdin=yaml.safe_dump(manifest))
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].startswith("Cluster: ") and " GPUs, " in lines[0]
    assert lines[1].startswith("The job exists: its 6 worker(s) count as free")
    assert any(line.startswith("STAGE") for line in lines)


def test_plan_counts_the_gpus_other_pods_hold(jobs: Jobs, pool: str, plugin: Plugin) -> None:
    jobs.apply(train_job("big", pool, parallelism={"replicas": 4}))  # 12 of the pool's 16 GPUs
    wait_running(jobs, "big")
    second = yaml.safe_dump(train_job("second", pool, parallelism={"replicas": 2}))  # 6 more
    refused = plugin("plan", "-f", "-", stdin=second)
    assert refused.returncode == 3, refused.stdout
    assert refused.stderr.startswith("kubectl maas: cannot place now: ")
    # The operator agrees.
    jobs.apply(yaml.safe_load(second))
    jobs.wait(
        "second Unschedulable",
        lambda: (c := jobs.condition("second", "Planned")) is not None and c["reason"] == "Unschedulable",
    )


def test_plan_refuses_an_invalid_job_with_the_field(plugin: Plugin, pool: str) -> None:
    manifest = train_job("bad", pool)
    manifest["spec"]["split"]["stages"] = 0
    refused = plugin("plan", "-f", "-", stdin=yaml.safe_dump(manifest))
    assert refused.returncode == 2 and "spec.split.stages" in refused.stderr


def test_status_shows_conditions_plan_and_where_each_worker_runs(
    jobs: Jobs, pool: str, plugin: Plugin
) -> None:
    jobs.apply(train_job("shown", pool))
    wait_running(jobs, "shown")
    pods = {p["metadata"]["name"]: p["spec"]["nodeName"] for p in jobs.pods("shown")}
    table = plugin("status", "shown")
    assert table.returncode == 0, table.stderr
    printed = rows(table.stdout)
    assert ["Phase:", "Running"] in printed
    assert next(r for r in printed if r and r[0] == "Ready")[:3] == ["Ready", "True", "AllWorkersReady"]
    for name, node in pods.items():
        assert next(r for r in printed if r and r[0] == name)[3:6] == [node, "Running", "true"]

    document = json.loads(plugin("status", "shown", "-o", "json").stdout)
    assert {w["name"]: w["pod"]["node"] for w in document["workers"]} == pods
    assert {c["type"] for c in document["status"]["conditions"]} >= {"Ready", "Reconciling", "Stalled"}
    assert yaml.safe_load(plugin("status", "shown", "-o", "yaml").stdout) == document

    missing = plugin("status", "nope")
    assert missing.returncode == 1
    assert (
        missing.stderr.strip()
        == f'error: maasjobs.maas.dev "nope" not found in namespace "{plugin.namespace}"'
    )


def test_logs_ask_the_pods_api_for_the_selected_workers(jobs: Jobs, pool: str, plugin: Plugin) -> None:
    """kwok's pods run no code and its nodes no kubelet, so the API server has no logs to give: the plugin
    asks for the right pods' logs (shown with -v 6) and says clearly why there are none."""
    jobs.apply(train_job("talky", pool, parallelism={"replicas": 2}))
    wait_running(jobs, "talky")
    nodes = {p["metadata"]["name"]: p["spec"]["nodeName"] for p in jobs.pods("talky")}
    answer = plugin("logs", "talky", "--stage", "1", "--replica", "0", "-v", "6")
    assert answer.returncode == 1
    requests = [line.split()[:2] for line in answer.stderr.splitlines() if line.startswith("GET ")]
    logs = [url for _, url in requests if "/log?" in url]
    assert len(logs) == 1
    assert f"/api/v1/namespaces/{plugin.namespace}/pods/talky-r0-s1/log?container=worker" in logs[0]
    errors = [line for line in answer.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [
        next(
            e
            for e in errors
            if e.startswith(f"error: pod talky-r0-s1 (node {nodes['talky-r0-s1']}): no logs")
        )
    ]
    # A stage over both replicas asks for both pods.
    both = plugin("logs", "talky", "--stage", "2", "-v", "6")
    urls = [
        line.split()[1] for line in both.stderr.splitlines() if line.startswith("GET ") and "/log?" in line
    ]
    assert sorted(url.split("/pods/")[1].split("/")[0] for url in urls) == ["talky-r0-s2", "talky-r1-s2"]

    outside = plugin("logs", "talky", "--stage", "7")
    assert (outside.returncode, outside.stderr.strip()) == (
        1,
        'error: maasjob "talky" has no stage 7: its plan has stages 0..2',
    )


def test_logs_of_a_job_without_pods_say_so(jobs: Jobs, pool: str, plugin: Plugin) -> None:
    jobs.apply(train_job("asleep", pool))
    wait_running(jobs, "asleep")
    jobs.kubectl("patch", "mj", "asleep", "--type=merge", "-p", '{"spec":{"runPolicy":{"suspend":true}}}')
    jobs.wait_phase("asleep", "Suspended")
    jobs.wait("asleep's workers deleted", lambda: not jobs.pods("asleep"))
    answer = plugin("logs", "asleep", "--replica", "0", "--stage", "0")
    assert answer.returncode == 1
    assert (
        answer.stderr.strip()
        == "error: worker asleep-r0-s0 has no pod now (the operator makes it when its gang starts)"
    )
