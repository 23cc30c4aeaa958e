"""The committed CRD is exactly what the models generate, and it is a well-described structural schema."""

from __future__ import annotations

from typing import Any

import yaml
from maas_api.crd import WHOLE_NUMBER_RULE, build_crd, render_crd
from maas_api.limits import MAX_SAFE_INTEGER
from maas_api.rules import SPEC_RULES

from tests.manifests import CRD_PATH


def _schema() -> dict[str, Any]:
    schema: dict[str, Any] = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def _walk(node: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = [(path, node)]
    for name, child in node.get("properties", {}).items():
        found += _walk(child, f"{path}.{name}")
    if "items" in node:
        found += _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        found += _walk(node["additionalProperties"], f"{path}{{}}")
    return found


def test_committed_crd_matches_the_models() -> None:
    assert CRD_PATH.read_text() == render_crd(), "crds/maasjob.yaml is stale: run `make crds`"


def test_every_property_has_a_description() -> None:
    undocumented = [
        path
        for path, node in _walk(_schema())
        # The API server forbids a description on metadata.
        if path not in {"", ".metadata"} and not path.endswith(("[]", "{}")) and not node.get("description")
    ]
    assert not undocumented


def test_schema_is_structural() -> None:
    text = yaml.safe_dump(_schema())
    assert "$ref" not in text and "anyOf" not in text and "additionalProperties: false" not in text
    for path, node in _walk(_schema()):
        assert "type" in node or node.get("x-kubernetes-int-or-string"), f"{path} has no type"


def test_cross_field_rules_are_cel_validations_on_spec() -> None:
    spec = _schema()["properties"]["spec"]
    rules = {v["message"]: v for v in spec["x-kubernetes-validations"]}
    assert len(rules) == len(SPEC_RULES)
    for rule in SPEC_RULES:
        assert rules[rule.message]["rule"] == rule.cel
        assert rules[rule.message]["fieldPath"] == f".{rule.field_path}"


def test_scale_subresource_is_bound_to_data_parallel_replicas() -> None:
    version = build_crd()["spec"]["versions"][0]
    scale = version["subresources"]["scale"]
    assert scale["specReplicasPath"] == ".spec.parallelism.replicas"
    assert scale["statusReplicasPath"] == ".status.replicas"
    assert "status" in version["subresources"]
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns[:8] == ["Mode", "Stages", "Replicas", "Ready", "Status", "Step", "Loss", "Age"]
    assert build_crd()["spec"]["names"]["shortNames"] == ["mj"]


def test_int_or_string_and_defaults() -> None:
    split = _schema()["properties"]["spec"]["properties"]["split"]
    assert split["default"] == {}
    assert split["properties"]["stages"] == {
        "description": split["properties"]["stages"]["description"],
        "default": 1,
        "x-kubernetes-int-or-string": True,
    }
    learning_rate = _schema()["properties"]["spec"]["properties"]["training"]["properties"]["learningRate"]
    assert learning_rate["exclusiveMinimum"] is True and learning_rate["minimum"] == 0


def test_every_integer_of_the_spec_is_bounded_and_whole() -> None:
    """Unbounded numbers let the API server accept what the planner cannot handle; a bound above 2^53 is
    not an integer to the API server; a whole float (`2.0`) would reach CEL rules as a float."""
    integers = [
        (path, node) for path, node in _walk(_schema()["properties"]["spec"]) if node.get("type") == "integer"
    ]
    assert len(integers) > 20
    for path, node in integers:
        assert "minimum" in node and "maximum" in node, f"spec{path} has no bounds"
        assert -MAX_SAFE_INTEGER <= node["minimum"] <= node["maximum"] <= MAX_SAFE_INTEGER, path
        assert WHOLE_NUMBER_RULE in node["x-kubernetes-validations"], path


def test_unit_and_head_names_are_unique_lists() -> None:
    spec = _schema()["properties"]["spec"]["properties"]
    profile = spec["model"]["properties"]["profile"]
    assert profile["x-kubernetes-list-type"] == "map" and profile["x-kubernetes-list-map-keys"] == ["name"]
    assert spec["split"]["properties"]["heads"]["x-kubernetes-list-type"] == "set"
