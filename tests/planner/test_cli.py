"""`maas plan` on the examples, in every output format, and its exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from maas_api.plan import Plan
from maas_operator.planner.cli import main

REPO = Path(__file__).resolve().parents[2]
NODES = REPO / "examples" / "nodes.yaml"
JOBS = ["large-model-train.yaml", "transformer-serve.yaml", "multitask-train.yaml", "transformer-auto.yaml"]


@pytest.mark.parametrize("example", JOBS)
@pytest.mark.parametrize("output", ["table", "json", "yaml"])
def test_examples_plan_on_the_example_nodes(
    example: str, output: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["-f", str(REPO / "examples" / example), "--nodes", str(NODES), "-o", output]) == 0
    printed = capsys.readouterr().out
    if output == "table":
        assert printed.splitlines()[2].startswith("STAGE") and "NODE" in printed and "gpu-node-" in printed
        return
    document = json.loads(printed) if output == "json" else yaml.safe_load(printed)
    plan = Plan.model_validate(document)
    assert all(w.node and w.node.startswith("gpu-node-") for w in plan.workers)
    assert {"stages", "workers", "bottleneck"} <= set(document)
    assert {"index", "units", "cost", "memoryBytes"} <= set(document["stages"][0])
    placement = document["placement"]
    assert [row["worker"] for row in placement] == [w.name for w in plan.workers]
    assert {"worker", "stage", "replica", "node", "gpus"} == set(placement[0])


def test_large_model_example_is_three_stages_by_two_replicas(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-f", str(REPO / "examples/large-model-train.yaml"), "-o", "json"]) == 0
    plan = Plan.model_validate_json(capsys.readouterr().out)
    assert len(plan.stages) == 3 and plan.replicas == 2 and len(plan.workers) == 6
    assert all(w.node is None for w in plan.workers)


def test_task_example_puts_heads_in_their_own_stage(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-f", str(REPO / "examples/multitask-train.yaml"), "-o", "json"]) == 0
    plan = Plan.model_validate_json(capsys.readouterr().out)
    assert plan.stages[-1].heads == ["head_classify", "head_regress"]


def test_invalid_manifest_exits_2_with_field_paths(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "maas.dev/v1alpha1",
                "kind": "MaaSJob",
                "metadata": {"name": "x"},
                "spec": {"mode": "Train", "model": {"catalog": "LargeModel"}, "split": {"stages": 0}},
            }
        )
    )
    assert main(["-f", str(bad)]) == 2
    assert "spec.split.stages" in capsys.readouterr().err


def test_planning_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    too_many = tmp_path / "stages.yaml"
    too_many.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "maas.dev/v1alpha1",
                "kind": "MaaSJob",
                "metadata": {"name": "x"},
                "spec": {"mode": "Train", "model": {"catalog": "LargeModel"}, "split": {"stages": 5}},
            }
        )
    )
    assert main(["-f", str(too_many)]) == 2
    assert "spec.split.stages: 5 stages but the model has only 3 units" in capsys.readouterr().err


def test_bad_node_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    nodes = tmp_path / "nodes.yaml"
    nodes.write_text("kind: List\nitems:\n- kind: Node\n  metadata: {}\n")
    assert main(["-f", str(REPO / "examples/large-model-train.yaml"), "--nodes", str(nodes)]) == 2
    assert "items[0].metadata.name" in capsys.readouterr().err


def test_bad_arguments_and_missing_files_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert main(["-f", "examples/large-model-train.yaml", "-o", "xml"]) == 2
    assert main(["-f", "/nonexistent.yaml"]) == 2
    assert "cannot read /nonexistent.yaml" in capsys.readouterr().err


def test_unschedulable_exits_3_with_the_reason(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    nodes = tmp_path / "nodes.yaml"
    nodes.write_text(
        yaml.safe_dump(
            [
                {
                    "kind": "Node",
                    "metadata": {"name": "tiny"},
                    "status": {"allocatable": {"nvidia.com/gpu": "2"}},
                }
            ]
        )
    )
    assert main(["-f", str(REPO / "examples/large-model-train.yaml"), "--nodes", str(nodes)]) == 3
    err = capsys.readouterr().err
    assert (
        "cannot place: job large-model needs 6 workers with 1 GPU each" in err
        and "2 fit: tiny (2 free)" in err
    )


def test_console_script_dispatches_to_the_planner() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "maas_operator.cli",
            "plan",
            "-f",
            "examples/transformer-serve.yaml",
            "--nodes",
            "examples/nodes.yaml",
            "-o",
            "json",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["job"] == "transformer-serve"
