"""Reads YAML manifests into the JSON data that `kubectl apply` would send for them.

kubectl converts YAML to JSON with sigs.k8s.io/yaml (go-yaml v2, then Go's encoding/json), which reads plain
scalars differently from PyYAML: `1e3` is a number (PyYAML: a string), `y` and `n` are booleans,
`2021-01-01` stays a string (PyYAML: a date), `1:30` is a string (PyYAML: 90), and a whole float such as
`2.0` or `1e3` is written as the JSON integer `2` or `1000`. `maas plan` reads manifests with this module, so
it validates the same data the API server receives.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from typing import Any, ClassVar

import yaml

try:  # libyaml parses about ten times faster; the scalar rules below are Python either way.
    _BaseLoader: type[yaml.SafeLoader] = yaml.CSafeLoader  # type: ignore[assignment]
except AttributeError:  # PyYAML built without libyaml
    _BaseLoader = yaml.SafeLoader


class ManifestYAMLError(ValueError):
    """YAML that kubectl could not turn into JSON either."""


_NULL = re.compile(r"^(?:~|null|Null|NULL|)$")
_TRUE = {"y", "Y", "yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON"}
_FALSE = {"n", "N", "no", "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF"}
_BOOL = re.compile("^(?:" + "|".join(sorted(_TRUE | _FALSE)) + ")$")
# go-yaml v2 drops underscores, then tries Go's strconv.ParseInt(s, 0, 64) (decimal, 0x, 0o, 0b and a
# leading 0 for octal), then a float of the form below; `.inf` and `.nan` are floats too.
_INT = re.compile(r"^[-+]?(?:0[bB][01_]+|0[oO]?[0-7_]+|0[xX][0-9a-fA-F_]+|[0-9][0-9_]*)$")
_FLOAT = re.compile(
    r"^(?:[-+]?(?:\.[0-9_]+|[0-9][0-9_]*(?:\.[0-9_]*)?)(?:[eE][-+]?[0-9]+)?"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)
_GO_JSON_INTEGER_LIMIT = 1e21
"""Go's encoding/json writes a whole float64 below 1e21 without a fraction or exponent: a JSON integer."""


class KubectlLoader(_BaseLoader):  # type: ignore[misc, valid-type]
    """A safe loader whose plain scalars resolve as go-yaml v2 resolves them."""

    # Its own, empty table: PyYAML's YAML 1.1 resolvers are replaced, not extended.
    yaml_implicit_resolvers: ClassVar[dict[str | None, list[tuple[str, re.Pattern[str]]]]] = {}


for _tag, _pattern, _first in (
    ("tag:yaml.org,2002:bool", _BOOL, "yYnNtTfFoO"),
    ("tag:yaml.org,2002:null", _NULL, ["~", "n", "N", ""]),
    ("tag:yaml.org,2002:int", _INT, "-+0123456789"),
    ("tag:yaml.org,2002:float", _FLOAT, "-+0123456789."),
    ("tag:yaml.org,2002:merge", re.compile(r"^(?:<<)$"), "<"),
):
    KubectlLoader.add_implicit_resolver(_tag, _pattern, list(_first))


def _go_int(text: str) -> int:
    digits = text.replace("_", "")
    sign = -1 if digits.startswith("-") else 1
    digits = digits.lstrip("+-")
    if digits[:2] in ("0b", "0B", "0x", "0X", "0o", "0O"):
        return sign * int(digits, 0)
    if len(digits) > 1 and digits.startswith("0"):  # Go's base-0 octal
        return sign * int(digits, 8)
    return sign * int(digits)


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int | float:
    text = loader.construct_scalar(node)
    try:
        return _go_int(text)
    except ValueError:  # e.g. `08`: not octal, but a valid float to go-yaml
        return float(text.replace("_", ""))


def _construct_float(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> float:
    text = loader.construct_scalar(node).replace("_", "")
    lowered = text.lower()
    if lowered.endswith(".inf"):
        return -math.inf if lowered.startswith("-") else math.inf
    if lowered == ".nan":
        return math.nan
    return float(text)


def _construct_bool(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> bool:
    return loader.construct_scalar(node) in _TRUE


def _construct_timestamp(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> str:
    return str(loader.construct_scalar(node))


KubectlLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)
KubectlLoader.add_constructor("tag:yaml.org,2002:float", _construct_float)
KubectlLoader.add_constructor("tag:yaml.org,2002:bool", _construct_bool)
# An explicit `!!timestamp` stays text too, as in go-yaml v2 decoding into an untyped value.
KubectlLoader.add_constructor("tag:yaml.org,2002:timestamp", _construct_timestamp)


def _json_key(key: Any) -> str:
    if isinstance(key, bool):
        return "true" if key else "false"
    if key is None:
        return "null"
    return str(_as_json(key, "a key")) if not isinstance(key, str) else key


def _as_json(value: Any, where: str) -> Any:
    """The value as JSON data, the way Go's encoding/json writes what go-yaml read."""
    if isinstance(value, dict):
        return {_json_key(key): _as_json(item, f"{where}.{key}") for key, item in value.items()}
    if isinstance(value, list):
        return [_as_json(item, f"{where}[{index}]") for index, item in enumerate(value)]
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ManifestYAMLError(f"{where.lstrip('.')}: {value} is not a JSON number")
        if value.is_integer() and abs(value) < _GO_JSON_INTEGER_LIMIT:
            return int(value)
    return value


def load_manifests(text: str) -> Iterator[Any]:
    """The documents of a YAML stream as the JSON data kubectl would send (empty documents skipped)."""
    try:
        for document in yaml.load_all(text, Loader=KubectlLoader):
            if document is not None:
                yield _as_json(document, "")
    except yaml.YAMLError as error:
        raise ManifestYAMLError(f"not valid YAML: {error}") from error
