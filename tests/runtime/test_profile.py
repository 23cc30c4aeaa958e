"""`maas profile` agrees with the catalog's analytic profiles, and profiles user factories."""

from __future__ import annotations

import json

import pytest
import yaml
from maas_api.catalog import catalog_profile
from maas_api.spec import ModelSpec
from maas_operator.cli import main as maas
from maas_runtime.model import build_meta_model
from maas_runtime.profile import profile_units

from tests.manifests import REPO

CASES = [
    ("LargeModel", {}),
    ("MLP", {}),
    ("MLP", {"input": 3, "hidden": 7, "layers": 1, "output": 2}),
    ("Transformer", {}),
    ("Transformer", {"vocab": 100, "dim": 48, "layers": 3, "heads": 6, "seqLen": 20, "ffnMult": 3}),
    ("MultiTaskMLP", {}),
    ("MultiTaskMLP", {"input": 5, "hidden": 9, "trunkLayers": 1, "heads": {"a": 1, "b": 2, "c": 3}}),
]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize(("catalog", "args"), CASES)
def test_measured_profile_equals_the_catalog_formulas(
    catalog: str, args: dict[str, object], dtype: str
) -> None:
    spec = ModelSpec(catalog=catalog, args=args, dtype=dtype)
    measured = profile_units(build_meta_model(spec), dtype)
    expected = catalog_profile(spec).units
    assert [u.name for u in measured] == [u.name for u in expected]
    for got, want in zip(measured, expected, strict=True):
        assert (got.group, got.head, got.params) == (want.group, want.head, want.params), got.name
        assert got.flops_per_sample == pytest.approx(want.flops_per_sample, rel=0.01), got.name
        assert got.activation_bytes_per_sample == pytest.approx(want.activation_bytes_per_sample, rel=0.01)


def test_cli_prints_camel_case_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert maas(["profile", "--catalog", "Transformer", "--args", '{"layers": 2}', "-o", "json"]) == 0
    units = json.loads(capsys.readouterr().out)
    assert [u["name"] for u in units] == ["embed", "block_0", "block_1", "head"]
    expected = catalog_profile(ModelSpec(catalog="Transformer", args={"layers": 2})).units
    assert [u["params"] for u in units] == [u.params for u in expected]
    assert {"flopsPerSample", "activationBytesPerSample", "group"} <= set(units[1])


def test_cli_profiles_a_factory_with_timing(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(REPO))
    assert maas(["profile", "--factory", "tests.runtime.factories:encoder_decoder", "--time", "4"]) == 0
    units = yaml.safe_load(capsys.readouterr().out)
    assert [(u["name"], u["group"], u["params"]) for u in units] == [
        ("enc_0", "encoder", 40),
        ("enc_1", "encoder", 72),
        ("scale", "decoder", 8),
        ("dec_0", "decoder", 27),
    ]
    assert units[0]["flopsPerSample"] == 64.0 and all(u["timeMsPerSample"] > 0 for u in units)


def test_cli_reports_a_bad_factory(capsys: pytest.CaptureFixture[str]) -> None:
    assert maas(["profile", "--factory", "nope.missing:make"]) == 1
    assert "plan.model.factory: cannot import 'nope.missing:make'" in capsys.readouterr().err
