"""The operator calls build_plan in its reconcile loop on whatever the API server stored, so for every spec
that parse_maasjob accepts, build_plan must return a Plan (finite, valid JSON) or raise PlanError or
Unschedulable, in bounded time. Checked on mutations of every example: extreme numbers, wrong types, nulls."""

from __future__ import annotations

import copy
import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from maas_api import ManifestError, parse_maasjob
from maas_operator.planner import PlanError, Unschedulable, build_plan
from maas_operator.planner.cluster import load_nodes

from tests.manifests import REPO, load_examples

from .helpers import time_bound

EXAMPLES = [manifest for _, manifest in load_examples()]
NODES = load_nodes((REPO / "examples" / "nodes.yaml").read_text())
PLAN_TIME_BOUND_S = 20.0
"""The slowest accepted spec plans about 150,000 workers (the pod ceiling) in ~2 s; the rest in milliseconds."""

INTEGERS = st.sampled_from([0, 1, 2, 3, 7, 64, 1000, 2**31, 10**8, 10**12, 10**18, 2**63 - 1, 2**64, -1])
FLOATS = st.sampled_from([0.0, 0.1, 0.3, 1e-300, 1.5, 1e300, 1e308, math.inf, -math.inf, math.nan])
ANY = st.one_of(
    INTEGERS,
    FLOATS,
    st.sampled_from([None, True, "", "auto", "80Gi", "-8Gi", "1e400", "0", {"x": -1}, [1], {}, []]),
)


def leaves(document: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path below `document` (maps and lists), in document order."""
    paths = [path] if path else []
    if isinstance(document, dict):
        for key, value in document.items():
            paths += leaves(value, (*path, key))
    elif isinstance(document, list):
        for index, value in enumerate(document):
            paths += leaves(value, (*path, index))
    return paths


def value_at(document: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        document = document[key]
    return document


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@st.composite
def mutated_manifests(draw: st.DrawFn) -> dict[str, Any]:
    manifest = copy.deepcopy(draw(st.sampled_from(EXAMPLES)))
    for _ in range(draw(st.integers(1, 3))):
        paths = leaves(manifest["spec"], ("spec",))
        numbers = [path for path in paths if is_number(value_at(manifest, path))]
        # Mostly the numbers (what the planner sizes things by), sometimes any field.
        path = draw(st.sampled_from(numbers if numbers and draw(st.integers(0, 3)) else paths))
        parent = value_at(manifest, path[:-1])
        old = parent[path[-1]]
        # Mostly a value of the same type (so the API accepts it and the planner sees it), sometimes anything.
        if is_number(old) and draw(st.integers(0, 3)):
            parent[path[-1]] = draw(INTEGERS if isinstance(old, int) else FLOATS)
        elif isinstance(old, dict) and draw(st.booleans()):
            # A copy: sampled maps and lists are shared objects, and a later mutation must not change them.
            old[draw(st.sampled_from(["regress", "extra", "layers", "replicas", "heads"]))] = copy.deepcopy(
                draw(ANY)
            )
        else:
            parent[path[-1]] = copy.deepcopy(draw(ANY))
    return manifest


@pytest.mark.timeout(600)  # a backstop: time_bound fails a hanging example long before
@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(mutated_manifests(), st.booleans())
def test_build_plan_returns_a_plan_or_a_plan_error_for_every_accepted_spec(
    manifest: dict[str, Any], with_nodes: bool
) -> None:
    try:
        job = parse_maasjob(manifest)
    except ManifestError:
        event("rejected by parse_maasjob")
        return  # the API server's side of this is the differential test's (issue 8 section 1)
    try:
        with time_bound(PLAN_TIME_BOUND_S):
            plan = build_plan(job, nodes=NODES if with_nodes else None)
    except (PlanError, Unschedulable) as error:
        event(f"refused: {type(error).__name__}")
        message = str(error)
        assert message and "Traceback" not in message
        return
    event("planned")
    json.dumps(plan.to_wire(), allow_nan=False)  # no Infinity or NaN in the plan
    assert len(plan.workers) == plan.replicas * plan.pipeline_degree
    assert all(math.isfinite(stage.cost) for stage in plan.stages)
