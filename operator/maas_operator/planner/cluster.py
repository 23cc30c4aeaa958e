"""Reads Kubernetes Node objects (as `kubectl get nodes -o yaml` prints them) into what placement needs.

Accepts a `List`/`NodeList` with `items`, a YAML list of Nodes, or several YAML documents. Errors name the
document and the field, e.g. `nodes.yaml: items[3].status.allocatable.nvidia.com/gpu: 'x' is not ...`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from maas_operator.planner.memory import parse_quantity
from maas_operator.planner.reasons import MIB, PlanError

GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
GPU_MEMORY_LABEL = "nvidia.com/gpu.memory"
"""GPU feature discovery's label: memory of one GPU in MiB."""
USED_GPUS_ANNOTATION = "maas.dev/used-gpus"
"""GPUs already taken on a node, for `maas plan` without a cluster (the operator counts pods instead)."""
BLOCKING_TAINT_EFFECTS = frozenset({"NoSchedule", "NoExecute"})
MAX_PODS_PER_CLUSTER = 150_000
"""Kubernetes' documented scalability limit (kubernetes.io, "Considerations for large clusters"): a job
with more worker pods than this cannot run anywhere, so the planner refuses it before building them."""
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""libyaml's loader when PyYAML was built with it: reading 10,000 nodes takes a fraction of the pure-Python
loader's time. Both build the same safe types."""


class NodeFileError(PlanError):
    """A node list that cannot be read; the message names the file and the field."""


@dataclass(frozen=True)
class Taint:
    key: str
    value: str | None
    effect: str

    def __str__(self) -> str:
        return f"{self.key}={self.value}:{self.effect}" if self.value else f"{self.key}:{self.effect}"


@dataclass(frozen=True)
class Node:
    """A node as placement sees it."""

    name: str
    gpus: int
    """Allocatable `nvidia.com/gpu` (whole GPUs)."""
    labels: Mapping[str, str] = field(default_factory=dict)
    taints: tuple[Taint, ...] = ()
    unschedulable: bool = False
    """Cordoned (`spec.unschedulable`)."""
    ready: bool = True
    """False when the Ready condition says so; nodes without conditions (files) count as ready."""
    used_gpus: int = 0
    """GPUs taken according to the node's USED_GPUS_ANNOTATION (0 without it)."""

    @property
    def gpu_product(self) -> str | None:
        return self.labels.get(GPU_PRODUCT_LABEL)

    @property
    def gpu_memory_bytes(self) -> float | None:
        raw = self.labels.get(GPU_MEMORY_LABEL)
        if raw is None:
            return None
        try:
            memory = float(raw) * MIB
        except ValueError:
            return None
        return memory if 0 < memory < math.inf else None  # "nan", "inf" and "-1" say nothing usable


def _whole_number(value: Any, where: str) -> int:
    try:
        number = parse_quantity(value, where)
    except PlanError as error:
        raise NodeFileError(str(error)) from error
    if number < 0 or not math.isfinite(number) or number != int(number):
        raise NodeFileError(f"{where}: {value!r} is not a whole number of GPUs")
    return int(number)


def parse_node(document: Mapping[str, Any], where: str = "node") -> Node:
    """One Node object (a dict) into a Node; NodeFileError names `where` and the field."""
    if not isinstance(document, Mapping):
        raise NodeFileError(f"{where}: expected a Node object, got {type(document).__name__}")
    kind = document.get("kind", "Node")
    if kind != "Node":
        raise NodeFileError(f"{where}.kind: expected Node, got {kind!r}")
    metadata = document.get("metadata") or {}
    name = metadata.get("name") if isinstance(metadata, Mapping) else None
    if not isinstance(name, str) or not name:
        raise NodeFileError(f"{where}.metadata.name: every node needs a name")
    labels = metadata.get("labels") or {}
    annotations = metadata.get("annotations") or {}
    if not isinstance(labels, Mapping) or not isinstance(annotations, Mapping):
        raise NodeFileError(f"{where}.metadata: labels and annotations must be maps of strings")
    spec = document.get("spec") or {}
    status = document.get("status") or {}
    resources = status.get("allocatable") or status.get("capacity") or {}
    gpus = 0
    if GPU_RESOURCE in resources:
        gpus = _whole_number(resources[GPU_RESOURCE], f"{where}.status.allocatable.{GPU_RESOURCE}")
    taints = []
    for index, raw in enumerate(spec.get("taints") or []):
        if not isinstance(raw, Mapping) or "key" not in raw or "effect" not in raw:
            raise NodeFileError(f"{where}.spec.taints[{index}]: a taint needs key and effect")
        value = raw.get("value")
        taints.append(Taint(str(raw["key"]), None if value is None else str(value), str(raw["effect"])))
    ready = True
    for condition in status.get("conditions") or []:
        if isinstance(condition, Mapping) and condition.get("type") == "Ready":
            ready = condition.get("status") == "True"
    used = 0
    if USED_GPUS_ANNOTATION in annotations:
        used = _whole_number(
            annotations[USED_GPUS_ANNOTATION], f"{where}.metadata.annotations.{USED_GPUS_ANNOTATION}"
        )
    return Node(
        name=name,
        gpus=gpus,
        labels={str(k): str(v) for k, v in labels.items()},
        taints=tuple(taints),
        unschedulable=bool(spec.get("unschedulable", False)),
        ready=ready,
        used_gpus=used,
    )


def parse_nodes(documents: Iterable[Any], source: str = "nodes") -> list[Node]:
    """Node objects from parsed YAML documents: Lists, plain lists of Nodes, or single Nodes."""
    nodes: list[Node] = []
    for doc_index, document in enumerate(documents):
        where = f"{source}: document {doc_index}" if doc_index else source
        if document is None:
            continue
        if isinstance(document, list):
            nodes += [parse_node(item, f"{where}: [{i}]") for i, item in enumerate(document)]
        elif isinstance(document, Mapping) and document.get("kind") in {"List", "NodeList"}:
            items = document.get("items") or []
            if not isinstance(items, list):
                raise NodeFileError(f"{where}: items must be a list of Nodes")
            nodes += [parse_node(item, f"{where}: items[{i}]") for i, item in enumerate(items)]
        elif isinstance(document, Mapping):
            nodes.append(parse_node(document, where))
        else:
            raise NodeFileError(
                f"{where}: expected a Node, a List of Nodes or a list, got {type(document).__name__}"
            )
    names = [node.name for node in nodes]
    if len(set(names)) != len(names):
        duplicates = sorted({name for name in names if names.count(name) > 1})
        raise NodeFileError(f"{source}: node names must be unique; repeated: {', '.join(duplicates)}")
    return nodes


def load_nodes(text: str, source: str = "nodes") -> list[Node]:
    """Nodes from YAML text (one or more documents), or JSON (`kubectl get nodes -o json`), which the json
    module reads many times faster than any YAML loader."""
    if text.lstrip().startswith(("{", "[")):
        try:
            document = json.loads(text)
        except ValueError:
            pass  # not JSON after all (YAML flow style): the YAML loader reads it or says what is wrong
        else:
            return parse_nodes([document], source)
    try:
        documents = list(yaml.load_all(text, Loader=YAML_LOADER))
    except (yaml.YAMLError, ValueError) as error:  # ValueError: an integer of more than 4,300 digits
        raise NodeFileError(f"{source}: not valid YAML: {error}") from error
    return parse_nodes(documents, source)


def used_gpus_from_annotations(nodes: Iterable[Node]) -> dict[str, int]:
    return {node.name: node.used_gpus for node in nodes if node.used_gpus}
