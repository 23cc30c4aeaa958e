"""The MaaSJob resource as a whole, and parsing a manifest into it with errors that name the field."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_core import ErrorDetails

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


class ObjectMeta(ApiModel):
    """The parts of metav1.ObjectMeta the models read; other metadata fields are kept as given."""

    model_config = ApiModel.model_config | {"extra": "allow"}

    name: str
    """Job name (a DNS-1035 label, because it names the worker Service)."""
    namespace: str | None = None
    """Namespace."""
    generation: int | None = None
    """Spec generation, set by the API server."""
    uid: str | None = None
    """Object UID, set by the API server."""
    labels: dict[str, str] = Field(default_factory=dict)
    """Labels."""
    annotations: dict[str, str] = Field(default_factory=dict)
    """Annotations."""

    @field_validator("name")
    @classmethod
    def _short_enough(cls, name: str) -> str:
        if len(name) > MAX_JOB_NAME_LENGTH:
            raise ValueError(JOB_NAME_LENGTH_MESSAGE)
        if not re.match(JOB_NAME_PATTERN, name):
            raise ValueError(JOB_NAME_PATTERN_MESSAGE)
        return name


class MaaSJob(ApiModel):
    """A model served or trained as a service: split into stages, placed on GPUs, kept healthy."""

    api_version: Literal["maas.dev/v1alpha1"] = "maas.dev/v1alpha1"
    kind: Literal["MaaSJob"] = "MaaSJob"
    metadata: ObjectMeta
    spec: MaaSJobSpec
    status: MaaSJobStatus | None = None


class ManifestError(ValueError):
    """A manifest that does not validate; `problems` holds one `path: message` line per error."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid MaaSJob:\n" + "\n".join(f"  {p}" for p in problems))


def _error_line(error: ErrorDetails) -> str:
    path = ".".join(str(part) for part in error["loc"])
    if error["type"] == "cross_field_rule":
        ctx = error.get("ctx") or {}
        path = f"{path}.{ctx['path']}" if path else str(ctx["path"])
    message = error["msg"].removeprefix("Value error, ")
    return f"{path}: {message}"


def parse_maasjob(manifest: dict[str, Any]) -> MaaSJob:
    """Validate a manifest (as loaded from YAML or read from the API server); raises ManifestError."""
    try:
        return MaaSJob.model_validate(manifest)
    except ValidationError as error:
        raise ManifestError([_error_line(e) for e in error.errors()]) from error
