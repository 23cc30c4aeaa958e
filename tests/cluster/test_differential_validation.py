"""The API server and `parse_maasjob` give the same verdict on mutations of every example.

Each example is mutated one place at a time (types swapped, numbers as strings and strings as numbers, whole
and fractional floats, out-of-range numbers, nulls, snake_case and capitalised keys, unknown fields, invalid
metadata), sent to the real API server with the committed CRD (server-side dry run, strict field validation)
and to `parse_maasjob`. Both must accept or both reject; when both reject, they must name a field in common
(the models may name more: a misspelt key is unknown, and the field it meant is then missing); when both
accept, the object the API server would store must parse to the same spec (the operator parses what the API
server stored, so it must never fail on it). YAML is compared too: `kubectl create` against
`maas_api.manifest_yaml`, which `maas plan` reads manifests with.
"""

from __future__ import annotations

import copy
import json
import random
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from typing import Any

import pytest
import yaml

pytest.importorskip(
    "kubernetes", reason="the cluster tests talk to the API server with the `kubernetes` client"
)

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException
from maas_api import GROUP, PLURAL, VERSION, ManifestError, parse_maasjob
from maas_api.manifest_yaml import ManifestYAMLError, load_manifests
from maas_devcluster.testing import LocalCluster
from pydantic.alias_generators import to_snake

from tests.manifests import CRD_PATH, load_examples

pytestmark = pytest.mark.cluster

SAMPLE_SIZE = 400
"""Mutations sent per run: every kind of mutation on every example, a fixed sample of the places."""
SAMPLE_SEED = 8

Path = tuple[str | int, ...]


@pytest.fixture(scope="module")
def maasjob_crd(cluster: LocalCluster) -> dict[str, Any]:
    """The committed CRD, installed and served. Left installed: the cluster goes at the end of the session,
    and another module's teardown may still be deleting it when this one starts (hence the wait)."""
    crd: dict[str, Any] = yaml.safe_load(CRD_PATH.read_text())
    name = f"crd/{crd['metadata']['name']}"
    found = cluster.kubectl("get", name, "-o", "json", check=False)
    if found.returncode == 0 and json.loads(found.stdout)["metadata"].get("deletionTimestamp"):
        cluster.kubectl("wait", "--for=delete", "--timeout=60s", name, check=False, timeout=90)
    cluster.kubectl("apply", "--server-side", "-f", CRD_PATH)
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", name)
    return crd


@dataclass(frozen=True)
class Mutation:
    name: str
    body: dict[str, Any]


def _places(node: Any, path: Path = ()) -> Iterator[tuple[Path, Any]]:
    """Every value below the node with its path, parents first."""
    yield path, node
    if isinstance(node, dict):
        for key, child in node.items():
            yield from _places(child, (*path, key))
    elif isinstance(node, list):
        for index, child in enumerate(node):
            yield from _places(child, (*path, index))


def _replaced(body: dict[str, Any], path: Path, change: Callable[[Any, str | int], None]) -> dict[str, Any]:
    mutated = copy.deepcopy(body)
    parent: Any = mutated
    for part in path[:-1]:
        parent = parent[part]
    change(parent, path[-1])
    return mutated


def _set(body: dict[str, Any], path: Path, value: Any) -> dict[str, Any]:
    def change(parent: Any, key: str | int) -> None:
        parent[key] = value

    return _replaced(body, path, change)


def _renamed(body: dict[str, Any], path: Path, new_key: str) -> dict[str, Any]:
    def change(parent: Any, key: str | int) -> None:
        parent[new_key] = parent.pop(key)

    return _replaced(body, path, change)


def _value_variants(value: Any) -> list[tuple[str, Any]]:
    """Values of other types and out-of-range values for one place."""
    if isinstance(value, bool):
        return [("as string", str(value).lower()), ("as integer", int(value))]
    if isinstance(value, int):
        return [
            ("as string", str(value)),
            ("as whole float", float(value)),
            ("as fraction", value + 0.5),
            ("as boolean", True),
            ("negative", -1),
            ("zero", 0),
            ("beyond int32", 2**31),
            ("beyond int64", 2**63),
            ("huge float", 1e19),
        ]
    if isinstance(value, float):
        return [("as string", str(value)), ("as boolean", True), ("negative", -1.0), ("huge", 1e300)]
    if isinstance(value, str):
        return [
            ("as integer", 5),
            ("as fraction", 0.5),
            ("as boolean", True),
            ("empty", ""),
            ("with a space", f"{value} x"),
            ("long", "a" * 300),
        ]
    if isinstance(value, list):
        first = value[:1]
        return [
            ("empty list", []),
            ("null item", [None]),
            ("first item twice", first + value),
            ("as string", "x"),
        ]
    if isinstance(value, dict):
        return [("as string", "x"), ("as list", []), ("empty object", {})]
    return []


@cache
def _crd_schema() -> dict[str, Any]:
    schema: dict[str, Any] = yaml.safe_load(CRD_PATH.read_text())["spec"]["versions"][0]["schema"]
    return schema["openAPIV3Schema"]  # type: ignore[no-any-return]


def _schema_at(path: Path) -> dict[str, Any]:
    """The committed CRD's schema of the field at `path` ({} where it is free-form or unknown)."""
    node = _crd_schema()
    for part in path:
        if isinstance(part, int):
            node = node.get("items", {})
        else:
            extra = node.get("additionalProperties")
            node = node.get("properties", {}).get(part) or (extra if isinstance(extra, dict) else {})
    return node


def _range_variants(value: Any, schema: dict[str, Any]) -> list[tuple[str, Any]]:
    """The field's own bounds and just beyond them."""
    if isinstance(value, bool) or not isinstance(value, int | float) or "maximum" not in schema:
        return []
    step = 1 if isinstance(value, int) else schema["maximum"] * 1e-6
    kind = int if isinstance(value, int) else float
    return [
        ("at maximum", kind(schema["maximum"])),
        ("above maximum", kind(schema["maximum"] + step)),
        ("below minimum", kind(schema.get("minimum", 0) - max(step, 1))),
    ]


def _mutations_of(example: str, body: dict[str, Any]) -> Iterator[Mutation]:
    for path, value in _places(body):
        if not path or path[0] not in ("spec", "metadata"):
            continue
        where = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in path).lstrip(".")
        for kind, variant in _value_variants(value) + _range_variants(value, _schema_at(path)):
            yield Mutation(f"{example}: {where} {kind}", _set(body, path, variant))
        yield Mutation(f"{example}: {where} null", _set(body, path, None))
        key = path[-1]
        if isinstance(key, str):
            if to_snake(key) != key:
                yield Mutation(f"{example}: {where} snake_case", _renamed(body, path, to_snake(key)))
            yield Mutation(f"{example}: {where} capitalised", _renamed(body, path, key[:1].upper() + key[1:]))
        if isinstance(value, dict):
            yield Mutation(f"{example}: {where} unknown field", _set(body, (*path, "unknownField"), 1))
    metadata: list[tuple[str, Path, Any]] = [
        ("name uppercase", ("metadata", "name"), "Job"),
        ("name too long", ("metadata", "name"), "j" * 46),
        ("generateName", ("metadata", "generateName"), "job-"),
        ("label value invalid", ("metadata", "labels"), {"team": "ml team"}),
        ("label key invalid", ("metadata", "labels"), {"-team": "ml"}),
        ("label value null", ("metadata", "labels"), {"team": None}),
        ("annotation key invalid", ("metadata", "annotations"), {"example.com/a b": "x"}),
        ("annotation key upper case", ("metadata", "annotations"), {"Example.com/Key": "x"}),
        ("annotations too large", ("metadata", "annotations"), {"a": "x" * (256 * 1024)}),
        ("finalizer invalid", ("metadata", "finalizers"), ["a/b/c"]),
    ]
    for kind, path, variant in metadata:
        yield Mutation(f"{example}: metadata {kind}", _set(body, path, variant))


def _all_mutations() -> list[Mutation]:
    mutations = []
    for path, body in load_examples():
        mutations.extend(_mutations_of(f"{path.stem}/{body['metadata']['name']}", body))
    return mutations


def _sample(mutations: list[Mutation]) -> list[Mutation]:
    """Every kind of mutation once per example, then a fixed random sample of the rest."""
    by_kind: dict[tuple[str, str], Mutation] = {}
    for mutation in mutations:
        example, place = mutation.name.split(": ", 1)
        by_kind.setdefault((example, place.rsplit(" ", 1)[-1]), mutation)
    chosen = {mutation.name: mutation for mutation in by_kind.values()}
    rest = [mutation for mutation in mutations if mutation.name not in chosen]
    remaining = max(0, SAMPLE_SIZE - len(chosen))
    for mutation in random.Random(SAMPLE_SEED).sample(rest, min(remaining, len(rest))):
        chosen[mutation.name] = mutation
    return sorted(chosen.values(), key=lambda mutation: mutation.name)


@dataclass(frozen=True)
class Verdict:
    accepted: bool
    fields: frozenset[str]
    detail: str
    stored: dict[str, Any] | None = None


_FIELD_IN_MESSAGE = re.compile(r"\b((?:metadata|spec|status)(?:\.[A-Za-z0-9_-]+|\[\d+\])+)")
_UNKNOWN_FIELD = re.compile(r'unknown field "([^"]+)"')
# Decoding errors of metadata: `Go struct field ObjectMeta.name of type string`, `Go value of type v1.ObjectMeta`.
_OBJECT_META_FIELD = re.compile(r"Go struct field ObjectMeta\.(?:metadata\.)?(\S+) of type")
_OBJECT_META = "Go value of type v1.ObjectMeta"


def _server_fields(status: dict[str, Any]) -> set[str]:
    """The fields an API server error names: its causes, or the fields its message names."""
    message = str(status.get("message", ""))
    fields = set(_UNKNOWN_FIELD.findall(message))
    fields.update(f"metadata.{field}" for field in _OBJECT_META_FIELD.findall(message))
    if _OBJECT_META in message:
        fields.add("metadata")
    if "the API version in the data" in message:
        fields.add("apiVersion")
    if "'Kind' is missing" in message:
        fields.add("kind")
    for cause in (status.get("details") or {}).get("causes") or []:
        field = str(cause.get("field") or "").lstrip(".")
        if field and field != "<nil>":
            fields.add(field)
        else:  # a rule at the root names its field in its message
            fields.update(_FIELD_IN_MESSAGE.findall(str(cause.get("message", "")))[:1])
    return fields


def _ask_server(api: k8s.CustomObjectsApi, namespace: str, body: dict[str, Any]) -> Verdict:
    try:
        stored = api.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, body, dry_run="All", field_validation="Strict"
        )
    except ApiException as error:
        assert error.status in (400, 422), f"the API server failed ({error.status}): {error.body}"
        status = json.loads(error.body)
        return Verdict(False, frozenset(_server_fields(status)), str(status.get("message")))
    return Verdict(True, frozenset(), "", stored)


def _ask_models(body: dict[str, Any]) -> Verdict:
    try:
        job = parse_maasjob(copy.deepcopy(body))
    except ManifestError as error:
        fields = {problem.split(": ", 1)[0] for problem in error.problems}
        return Verdict(False, frozenset(fields), "; ".join(error.problems))
    return Verdict(True, frozenset(), "", job.model_dump())


def _same_field(ours: str, theirs: str) -> bool:
    """One names the other or a field inside it (the API server names `spec` for some rules on a field)."""
    shorter, longer = sorted((ours, theirs), key=len)
    return longer == shorter or longer.startswith((f"{shorter}.", f"{shorter}["))


def _disagreement(mutation: Mutation, server: Verdict, models: Verdict) -> str | None:
    if server.accepted != models.accepted:
        accepted, refused = ("API server", "models") if server.accepted else ("models", "API server")
        reason = models.detail if server.accepted else server.detail
        return f"{mutation.name}: the {accepted} accept it, the {refused} refuse it: {reason}"
    if not server.accepted:
        # The models may name more (a misspelt key is unknown, and the field it meant is then missing).
        if not any(_same_field(ours, theirs) for ours in models.fields for theirs in server.fields):
            return (
                f"{mutation.name}: the models name {sorted(models.fields)}, the API server"
                f" {sorted(server.fields)}: {server.detail}"
            )
        return None
    assert server.stored is not None and models.stored is not None
    try:
        stored_job = parse_maasjob(server.stored)
    except ManifestError as error:
        return f"{mutation.name}: the stored object does not parse: {error}"
    if stored_job.model_dump()["spec"] != models.stored["spec"]:
        return f"{mutation.name}: the models read another spec than the API server stores: {server.stored['spec']}"
    return None


def _in_namespace(body: dict[str, Any], namespace: str) -> dict[str, Any]:
    metadata = body.get("metadata")
    return {**body, "metadata": {**metadata, "namespace": namespace}} if isinstance(metadata, dict) else body


def test_mutations_are_generated_for_every_example() -> None:
    mutations = _sample(_all_mutations())
    examples = {path.stem for path, _ in load_examples()}
    assert {mutation.name.split("/", 1)[0] for mutation in mutations} == examples
    assert len(mutations) >= SAMPLE_SIZE


def test_api_server_and_models_agree_on_mutated_examples(
    admin_api: k8s.ApiClient, maasjob_crd: dict[str, Any], namespace: str
) -> None:
    api = k8s.CustomObjectsApi(admin_api)
    mutations = _sample(_all_mutations())
    bodies = [_in_namespace(mutation.body, namespace) for mutation in mutations]
    with ThreadPoolExecutor(max_workers=4) as pool:
        server_verdicts = list(pool.map(lambda body: _ask_server(api, namespace, body), bodies))

    disagreements = [
        problem
        for mutation, body, server in zip(mutations, bodies, server_verdicts, strict=True)
        if (problem := _disagreement(mutation, server, _ask_models(body)))
    ]

    assert sum(v.accepted for v in server_verdicts) > 0 and sum(not v.accepted for v in server_verdicts) > 0
    assert not disagreements, f"{len(disagreements)} of {len(mutations)} disagree:\n" + "\n".join(
        disagreements
    )


@pytest.mark.parametrize(
    "parallelism",
    [
        {"schedule": "Interleaved1F1B", "stagesPerWorker": 4, "microbatches": 4},
        {"schedule": "Interleaved1F1B", "stagesPerWorker": 0, "microbatches": 4},
    ],
    ids=["fewer-stages-than-per-worker", "zero-per-worker"],
)
def test_rules_do_not_divide_by_zero(
    admin_api: k8s.ApiClient, maasjob_crd: dict[str, Any], namespace: str, parallelism: dict[str, Any]
) -> None:
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "MaaSJob",
        "metadata": {"name": "divide", "namespace": namespace},
        "spec": {
            "mode": "Train",
            "model": {"catalog": "LargeModel"},
            "split": {"stages": 2},
            "parallelism": parallelism,
        },
    }
    server = _ask_server(k8s.CustomObjectsApi(admin_api), namespace, body)
    models = _ask_models(body)

    assert not server.accepted and not models.accepted
    assert "by zero" not in server.detail, server.detail
    assert {"spec.split.stages", "spec.parallelism.stagesPerWorker"} & set(models.fields) & set(server.fields)


YAML_SCALARS = [
    "training: {steps: 1e3}",
    "split: {stages: 2.0}",
    "training: {batchSize: 0x20}",
    "training: {steps: 017}",
    "training: {steps: 08}",
    "training: {steps: 1_000}",
    "training: {learningRate: .5}",
    "runPolicy: {suspend: y}",
    "runPolicy: {suspend: on}",
    "runPolicy: {suspend: NO}",
    "image: 2024-01-01",
    "image: 2001-12-14t21:59:43.10-05:00",
    "image: 1:30",
    "image: 1e3",
    "resources: {cpu: 0.5}",
    "training: {steps: '200'}",
    "training: {steps: 1.5e3}",
    "training: {steps: 1e30}",
]


@pytest.mark.parametrize("fragment", YAML_SCALARS)
def test_kubectl_and_maas_plan_read_yaml_alike(
    cluster: LocalCluster, maasjob_crd: dict[str, Any], namespace: str, fragment: str
) -> None:
    text = (
        f"apiVersion: {GROUP}/{VERSION}\nkind: MaaSJob\nmetadata: {{name: yaml, namespace: {namespace}}}\n"
        f"spec:\n  mode: Train\n  model: {{catalog: LargeModel}}\n  {fragment}\n"
    )
    created = cluster.kubectl("create", "--dry-run=server", "-o", "json", "-f", "-", stdin=text, check=False)
    try:
        models = _ask_models(next(load_manifests(text)))
    except ManifestYAMLError as error:
        models = Verdict(False, frozenset(), str(error))

    assert (created.returncode == 0) == models.accepted, f"kubectl: {created.stderr}; models: {models.detail}"
    if models.accepted:
        assert models.stored is not None
        assert parse_maasjob(json.loads(created.stdout)).model_dump()["spec"] == models.stored["spec"]
