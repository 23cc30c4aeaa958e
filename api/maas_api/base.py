"""The base model every API type derives from: camelCase on the wire, unknown fields rejected."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class ApiModel(BaseModel):
    """Kubernetes-style model.

    Fields are snake_case in Python and camelCase in YAML/JSON; a field's docstring is its description (it
    becomes the CRD's description, so `kubectl explain` shows it). Unknown fields are an error: nothing a
    user submitted is silently dropped. Python code may construct models by field name; manifests are read by
    `maas_api.parse_maasjob`, strictly and by camelCase name only, as the API server reads them.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=True,
        validate_default=True,
        # JSON has no infinity or NaN: the API server never sees one, so the models refuse them too.
        allow_inf_nan=False,
    )

    def to_wire(self) -> dict[str, object]:
        """The JSON-compatible camelCase form, without unset optional fields."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)
