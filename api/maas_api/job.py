"""The MaaSJob resource as a whole, and parsing a manifest into it with errors that name the field.

`parse_maasjob` gives the verdict of the API server with the generated CRD: it reads the manifest as the
API server reads JSON (camelCase keys only, no coercion of strings to numbers or booleans, nulls dropped and
defaulted), checks metadata as Kubernetes does, and runs the same rules. So `maas plan` plans exactly what
`kubectl apply` stores, and the operator can parse every object the API server accepted.
"""

from __future__ import annotations

import json
import math
import re
from datetime import date, datetime
from functools import cache
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails, PydanticCustomError

from maas_api.base import ApiModel
from maas_api.rules import (
    JOB_NAME_LENGTH_MESSAGE,
    JOB_NAME_PATTERN,
    JOB_NAME_PATTERN_MESSAGE,
    MAX_JOB_NAME_LENGTH,
)
from maas_api.spec import MaaSJobSpec
from maas_api.status import MaaSJobStatus

GROUP = "maas.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "MaaSJob"
PLURAL = "maasjobs"
SINGULAR = "maasjob"
SHORT_NAMES = ("mj",)
CATEGORIES = ("all", "maas")

# Kubernetes' own validation of names, label and annotation keys and label values
# (k8s.io/apimachinery/pkg/util/validation and pkg/api/validation).
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
MAX_NAME_PART_LENGTH = 63
MAX_PREFIX_LENGTH = 253
MAX_LABEL_VALUE_LENGTH = 63
MAX_ANNOTATIONS_BYTES = 256 * 1024
GENERATED_SUFFIX_LENGTH = 5
"""The API server appends 5 random characters to generateName (cut to 58 characters) to make the name."""
MAX_GENERATE_NAME_LENGTH = 63 - GENERATED_SUFFIX_LENGTH


def qualified_name_problem(key: str) -> str | None:
    """Why `key` is not a Kubernetes qualified name (`[prefix/]name`), or None."""
    parts = key.split("/")
    if len(parts) > 2:
        return f"{key!r}: a qualified name is NAME or PREFIX/NAME, with at most one '/'"
    name = parts[-1]
    if len(parts) == 2:
        prefix = parts[0]
        if not prefix:
            return f"{key!r}: the prefix part must be non-empty"
        if len(prefix) > MAX_PREFIX_LENGTH or not _DNS_SUBDOMAIN.match(prefix):
            return f"{key!r}: the prefix part must be a DNS subdomain (lowercase, digits, '-' and '.')"
    if not name:
        return f"{key!r}: the name part must be non-empty"
    if len(name) > MAX_NAME_PART_LENGTH:
        return f"{key!r}: the name part must be at most {MAX_NAME_PART_LENGTH} characters"
    if not _QUALIFIED_NAME.match(name):
        return (
            f"{key!r}: the name part must consist of alphanumeric characters, '-', '_' or '.', and start and"
            " end with an alphanumeric character"
        )
    return None


def label_value_problem(value: str) -> str | None:
    """Why `value` is not a valid label value, or None."""
    if len(value) > MAX_LABEL_VALUE_LENGTH:
        return f"{value!r}: a label value must be at most {MAX_LABEL_VALUE_LENGTH} characters"
    if value and not _QUALIFIED_NAME.match(value):
        return (
            f"{value!r}: a label value must be empty or consist of alphanumeric characters, '-', '_' or '.',"
            " and start and end with an alphanumeric character"
        )
    return None


def _raise_problems(problems: list[str | None]) -> None:
    found = [problem for problem in problems if problem]
    if found:
        raise ValueError("; ".join(found))


class OwnerReference(ApiModel):
    """An owner of the job (metav1.OwnerReference)."""

    api_version: str
    kind: str
    name: str
    uid: str
    controller: bool | None = None
    block_owner_deletion: bool | None = None


class ObjectMeta(ApiModel):
    """metav1.ObjectMeta, checked as the API server checks it; other fields are refused, as there."""

    name: str | None = None
    """Job name (a DNS-1035 label, because it names the worker Service)."""
    generate_name: str | None = None
    """Prefix of a name the API server generates (create only)."""
    namespace: str | None = None
    """Namespace."""
    self_link: str | None = None
    uid: str | None = None
    """Object UID, set by the API server."""
    resource_version: str | None = None
    generation: int | None = None
    """Spec generation, set by the API server."""
    creation_timestamp: datetime | None = None
    deletion_timestamp: datetime | None = None
    deletion_grace_period_seconds: int | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    """Labels."""
    annotations: dict[str, str] = Field(default_factory=dict)
    """Annotations."""
    owner_references: list[OwnerReference] | None = None
    finalizers: list[str] | None = None
    managed_fields: list[dict[str, Any]] | None = None

    @field_validator("labels")
    @classmethod
    def _valid_labels(cls, labels: dict[str, str]) -> dict[str, str]:
        _raise_problems([qualified_name_problem(key) for key in labels])
        _raise_problems([label_value_problem(value) for value in labels.values()])
        return labels

    @field_validator("annotations")
    @classmethod
    def _valid_annotations(cls, annotations: dict[str, str]) -> dict[str, str]:
        # Kubernetes checks annotation keys in lower case.
        _raise_problems([qualified_name_problem(key.lower()) for key in annotations])
        size = sum(len(key.encode()) + len(value.encode()) for key, value in annotations.items())
        if size > MAX_ANNOTATIONS_BYTES:
            raise ValueError(f"annotations take {size} bytes; the limit is {MAX_ANNOTATIONS_BYTES}")
        return annotations

    @field_validator("finalizers")
    @classmethod
    def _valid_finalizers(cls, finalizers: list[str] | None) -> list[str] | None:
        _raise_problems([qualified_name_problem(finalizer) for finalizer in finalizers or ()])
        return finalizers

    @field_validator("namespace")
    @classmethod
    def _valid_namespace(cls, namespace: str | None) -> str | None:
        if namespace is not None and (
            len(namespace) > MAX_NAME_PART_LENGTH or not _DNS_LABEL.match(namespace)
        ):
            raise ValueError(f"{namespace!r} is not a namespace name (a DNS-1123 label)")
        return namespace

    @model_validator(mode="after")
    def _valid_name(self) -> ObjectMeta:
        """The job's rules on metadata.name (CEL at the CRD's root), applied to the name the API server
        will store: the given name, or generateName with the generated suffix."""
        name = self.effective_name()
        if name is None:
            message = "metadata.name or metadata.generateName is required"
        elif len(name) > MAX_JOB_NAME_LENGTH:
            message = JOB_NAME_LENGTH_MESSAGE
        elif not re.match(JOB_NAME_PATTERN, name):
            message = JOB_NAME_PATTERN_MESSAGE
        else:
            return self
        raise PydanticCustomError("cross_field_rule", "{message}", {"path": "name", "message": message})

    def effective_name(self) -> str | None:
        """The name, or the shape of the name the API server generates from generateName."""
        if self.name:
            return self.name
        if self.generate_name:
            return self.generate_name[:MAX_GENERATE_NAME_LENGTH] + "x" * GENERATED_SUFFIX_LENGTH
        return None


class MaaSJob(ApiModel):
    """A model served or trained as a service: split into stages, placed on GPUs, kept healthy."""

    api_version: Literal["maas.dev/v1alpha1"]
    kind: Literal["MaaSJob"]
    metadata: ObjectMeta
    spec: MaaSJobSpec
    status: MaaSJobStatus | None = None


class ManifestError(ValueError):
    """A manifest that does not validate; `problems` holds one `path: message` line per error."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid MaaSJob:\n" + "\n".join(f"  {p}" for p in problems))


def field_path(loc: tuple[int | str, ...]) -> str:
    """A pydantic error location as the API server writes field paths: `spec.model.profile[2].name`."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else str(part)
    return path


def _error_line(error: ErrorDetails) -> str:
    path = field_path(tuple(error["loc"]))
    ctx = error.get("ctx") or {}
    if error["type"] == "cross_field_rule":
        path = f"{path}.{ctx['path']}" if path else str(ctx["path"])
    elif error["type"] == "duplicate_item":
        path = f"{path}[{ctx['index']}]"
    message = error["msg"].removeprefix("Value error, ")
    return f"{path}: {message}"


# --- Reading a manifest as the API server reads it ------------------------------------------------------

INT64_RANGE = range(-(2**63), 2**63)
"""The API server reads a JSON integer outside int64 as a float (and then refuses it where an integer belongs)."""


def _child_schema(schema: dict[str, Any], key: str) -> dict[str, Any] | None:
    properties: dict[str, Any] = schema.get("properties", {})
    if key in properties:
        child: dict[str, Any] = properties[key]
        return child
    extra = schema.get("additionalProperties")
    return extra if isinstance(extra, dict) else None


def _as_the_api_server_reads(value: Any, schema: dict[str, Any] | None) -> Any:
    """The value the API server validates: a null without `nullable` is pruned (the field's default then
    applies, as the models' default does), and an integer beyond int64 is a float."""
    if isinstance(value, int) and not isinstance(value, bool) and value not in INT64_RANGE:
        try:
            return float(value)
        except OverflowError:
            # Beyond float64 too: the server's JSON decoder refuses it; inf fails every model as well.
            return math.inf if value > 0 else -math.inf
    if schema is None:  # unknown or free-form: the models judge it as given
        if isinstance(value, dict):
            return {key: _as_the_api_server_reads(item, None) for key, item in value.items()}
        if isinstance(value, list):
            return [_as_the_api_server_reads(item, None) for item in value]
        return value
    if isinstance(value, dict) and ("properties" in schema or "additionalProperties" in schema):
        read = {}
        for key, item in value.items():
            child = _child_schema(schema, key)
            if item is None and child is not None and not child.get("nullable"):
                continue
            read[key] = _as_the_api_server_reads(item, child)
        return read
    if isinstance(value, list) and "items" in schema:
        return [_as_the_api_server_reads(item, schema["items"]) for item in value]
    return _as_the_api_server_reads(value, None)


def _metadata_as_the_api_server_reads(metadata: Any) -> Any:
    """ObjectMeta as the API server decodes it: a null field is unset, a null label or annotation is ""."""
    if not isinstance(metadata, dict):
        return metadata
    read = {key: value for key, value in metadata.items() if value is not None}
    for key in ("labels", "annotations"):
        if isinstance(read.get(key), dict):
            read[key] = {name: "" if value is None else value for name, value in read[key].items()}
    return read


@cache
def _wire_schema() -> dict[str, Any]:
    # Imported here: the CRD generator imports this module for the resource's names.
    from maas_api.crd import build_crd

    schema: dict[str, Any] = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def _as_json_text(value: object) -> str:
    """PyYAML's dates and timestamps as the strings kubectl sends for them (see maas_api.manifest_yaml)."""
    if isinstance(value, date):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} {value!r} is not JSON data")


def _json_text(manifest: dict[str, Any]) -> str:
    try:
        return json.dumps(manifest, default=_as_json_text)
    except (TypeError, ValueError) as error:  # other objects, circular structures
        raise ManifestError([f"the manifest is not JSON data: {error}"]) from error


def parse_maasjob(manifest: dict[str, Any]) -> MaaSJob:
    """Validate a manifest (as loaded from YAML or read from the API server); raises ManifestError.

    Accepts exactly what the API server accepts with the generated CRD and strict field validation.
    """
    if not isinstance(manifest, dict):
        raise ManifestError([f"a manifest is a mapping, not {type(manifest).__name__}"])
    wire = _as_the_api_server_reads(manifest, _wire_schema())
    if isinstance(wire, dict) and "metadata" in wire:
        wire["metadata"] = _metadata_as_the_api_server_reads(wire["metadata"])
    try:
        return MaaSJob.model_validate_json(_json_text(wire), strict=True, by_alias=True, by_name=False)
    except ValidationError as error:
        raise ManifestError([_error_line(e) for e in error.errors()]) from error
