"""The kwok Stages and the simulation annotations agree, without a cluster (the cluster tests run them)."""

from __future__ import annotations

import re
from importlib import resources
from typing import Any

import pytest
import yaml
from maas_devcluster.simulation import (
    ALL_ANNOTATIONS,
    EXIT_AFTER_SECONDS_ANNOTATION,
    EXIT_CODE_ANNOTATION,
    SIMULATION_PREFIX,
    exit_annotations,
)

STAGES_TEXT = resources.files("maas_devcluster").joinpath("kwok/stages.yaml").read_text()


def stages() -> list[dict[str, Any]]:
    return [document for document in yaml.safe_load_all(STAGES_TEXT) if document]


def test_stages_read_exactly_the_annotations_simulation_names() -> None:
    used = set(re.findall(re.escape(SIMULATION_PREFIX) + r"[a-z0-9-]+", STAGES_TEXT))

    assert used == set(ALL_ANNOTATIONS)


def test_every_pod_stage_leaves_unbound_pods_to_the_scheduler() -> None:
    pod_stages = [stage for stage in stages() if stage["spec"]["resourceRef"]["kind"] == "Pod"]

    assert pod_stages
    for stage in pod_stages:
        requirements = [expression["jq"] for expression in stage["spec"]["selector"]["matchExpressions"]]
        assert {"key": ".spec.nodeName", "operator": "Exists"} in requirements, stage["metadata"]["name"]


def test_stage_names_are_unique() -> None:
    names = [stage["metadata"]["name"] for stage in stages()]

    assert len(names) == len(set(names))


def test_exit_annotations_carry_the_code_and_only_a_nonzero_delay() -> None:
    assert exit_annotations(0) == {EXIT_CODE_ANNOTATION: "0"}
    assert exit_annotations(75, after_seconds=2) == {
        EXIT_CODE_ANNOTATION: "75",
        EXIT_AFTER_SECONDS_ANNOTATION: "2",
    }


@pytest.mark.parametrize(("exit_code", "after_seconds"), [(-1, 0), (256, 0), (1, -1)])
def test_exit_annotations_refuse_what_no_stage_would_match(exit_code: int, after_seconds: int) -> None:
    with pytest.raises(ValueError, match="must be"):
        exit_annotations(exit_code, after_seconds)
