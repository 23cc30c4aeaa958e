"""apply_body: server-side apply bodies that a YAML parser reads back exactly, whatever the text holds."""

from __future__ import annotations

import json

import pytest
import yaml
from maas_operator.kube import apply_body

# Text that reaches the status from outside: workers' termination messages, user code's exceptions.
AWKWARD_TEXT = [
    "Connection closed by peer. GLHF! \N{BEACH WITH UMBRELLA}\N{VARIATION SELECTOR-16}",  # gloo's own words
    "emoji beyond the BMP: \N{GRINNING FACE} \N{MATHEMATICAL BOLD CAPITAL A}",
    "C1 control \x85 next line, \x9b CSI, \x7f DEL",
    "line separators \u2028 and \u2029, a BOM \ufeff, non-characters \ufffe \uffff",
    'quotes " and \\ backslashes, a literal \\ud83c that is not an escape',
    "tabs\tnew\nlines\r and a NUL \x00",
    "accents é ü and CJK 汉字",
]


@pytest.mark.parametrize("text", AWKWARD_TEXT)
def test_yaml_reads_the_body_back_unchanged(text: str) -> None:
    manifest = {"metadata": {"name": "job"}, "status": {"conditions": [{"message": text}]}}
    body = apply_body(manifest)
    assert yaml.safe_load(body.decode()) == manifest
    assert json.loads(body) == manifest  # and it is still JSON


def test_a_lone_surrogate_becomes_the_replacement_character() -> None:
    body = apply_body({"message": "half a pair: \ud83c."})
    assert yaml.safe_load(body.decode()) == {"message": "half a pair: \N{REPLACEMENT CHARACTER}."}


def test_characters_beyond_the_bmp_are_written_raw_not_as_surrogate_pairs() -> None:
    body = apply_body({"message": "\N{GRINNING FACE}"})
    assert body == '{"message":"\N{GRINNING FACE}"}'.encode()
