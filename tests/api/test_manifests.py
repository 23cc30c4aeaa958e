"""Examples validate; every invalid manifest fails with a message naming the field; every rule is covered."""

from __future__ import annotations

import pytest
from maas_api import MaaSJob, ManifestError, parse_maasjob
from maas_api.rules import SPEC_RULES

from tests.manifests import INVALID, load_examples, load_invalid


@pytest.mark.parametrize(("path", "body"), load_examples(), ids=lambda v: getattr(v, "name", ""))
def test_example_is_valid(path: object, body: dict[str, object]) -> None:
    job = parse_maasjob(body)
    assert isinstance(job, MaaSJob)


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_manifest_names_the_field(path: object) -> None:
    manifest = load_invalid(path)  # type: ignore[arg-type]
    assert manifest.expected, f"{manifest.path.name} has no '# expect:' line"
    with pytest.raises(ManifestError) as raised:
        parse_maasjob(manifest.body)
    message = str(raised.value)
    for expected in manifest.expected:
        assert expected in message


def test_every_rule_has_an_invalid_manifest() -> None:
    covered = {load_invalid(path).rule for path in INVALID}
    missing = {rule.name for rule in SPEC_RULES} - covered
    assert not missing, f"add a manifest under tests/manifests/invalid for: {sorted(missing)}"
    assert {"job-name-length", "job-name-pattern"} <= covered
