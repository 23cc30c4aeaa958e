"""Loads the example and invalid manifests that both the model tests and the API-server tests check."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
INVALID = sorted((Path(__file__).parent / "manifests" / "invalid").glob("*.yaml"))
CRD_PATH = REPO / "crds" / "maasjob.yaml"


@dataclass(frozen=True)
class InvalidManifest:
    path: Path
    rule: str | None
    """The cross-field rule it breaks (None for plain schema errors)."""
    expected: list[str]
    """Substrings that both the models' and the API server's error must contain."""
    body: dict[str, Any]


def load_invalid(path: Path) -> InvalidManifest:
    text = path.read_text()
    headers = [line[1:].strip() for line in text.splitlines() if line.startswith("#")]
    rule = next((h.split(":", 1)[1].strip() for h in headers if h.startswith("rule:")), None)
    expected = [h.split(":", 1)[1].strip() for h in headers if h.startswith("expect:")]
    return InvalidManifest(path=path, rule=rule, expected=expected, body=yaml.safe_load(text))


def is_maasjob(doc: Any) -> bool:
    return isinstance(doc, dict) and doc.get("kind") == "MaaSJob"


def load_examples() -> list[tuple[Path, dict[str, Any]]]:
    """Every MaaSJob document under examples/ (other kinds, e.g. node lists, are skipped)."""
    found = []
    for path in EXAMPLES:
        for doc in yaml.safe_load_all(path.read_text()):
            if is_maasjob(doc):
                found.append((path, doc))
    return found
