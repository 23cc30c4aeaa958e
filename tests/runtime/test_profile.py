"""`maas profile` agrees with the catalog's analytic profiles, and profiles user factories."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from maas_api.catalog import catalog_profile
from maas_api.spec import ModelSpec
from maas_operator.cli import main as maas
from maas_operator.planner import build_plan
from maas_operator.planner.memory import build_memory_model
from maas_runtime.model import build_meta_model, materialize
from maas_runtime.profile import profile_units

from tests.manifests import REPO
from tests.planner.helpers import job

CASES = [
    ("LargeModel", {}),
    ("MLP", {}),
    ("MLP", {"input": 3, "hidden": 7, "layers": 1, "output": 2}),
    ("Transformer", {}),
    ("Transformer", {"vocab": 100, "dim": 48, "layers": 3, "heads": 6, "seqLen": 20, "ffnMult": 3}),
    ("MultiTaskMLP", {}),
    ("MultiTaskMLP", {"input": 5, "hidden": 9, "trunkLayers": 1, "heads": {"a": 1, "b": 2, "c": 3}}),
]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
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
        assert got.saved_bytes_per_sample == want.saved_bytes_per_sample, got.name


def test_cli_prints_camel_case_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert maas(["profile", "--catalog", "Transformer", "--args", '{"layers": 2}', "-o", "json"]) == 0
    units = json.loads(capsys.readouterr().out)
    assert [u["name"] for u in units] == ["embed", "block_0", "block_1", "head"]
    expected = catalog_profile(ModelSpec(catalog="Transformer", args={"layers": 2})).units
    assert [u["params"] for u in units] == [u.params for u in expected]
    assert {"flopsPerSample", "activationBytesPerSample", "savedBytesPerSample", "group"} <= set(units[1])


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


def _kept_by_autograd(units: list[torch.nn.Module], inputs: list[torch.Tensor]) -> tuple[int, int]:
    """Run real microbatches through a chain of units and keep their graphs, as a pipeline stage holds the
    microbatches in flight; returns (bytes of the distinct storages autograd saved, other than parameters,
    plus the outputs; bytes of the inputs among them)."""
    params = {p.untyped_storage().data_ptr() for unit in units for p in unit.parameters()}
    kept: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() not in params:
            kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    outputs = []
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        for x in inputs:
            for unit in units:
                x = unit(x)
            outputs.append(x)
    for out in outputs:
        kept[out.untyped_storage().data_ptr()] = out.untyped_storage().nbytes()
    held_inputs = sum(kept.get(x.untyped_storage().data_ptr(), 0) for x in inputs)
    return sum(kept.values()), held_inputs


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_planned_activation_memory_is_what_autograd_keeps_on_a_real_stage(dtype: str) -> None:
    """The second of two GPipe stages of a transformer (blocks and the LM head) with all its microbatches in
    flight: the plan's activation bytes equal what autograd keeps on real CPU tensors, less the stage's input
    (which the estimate leaves to the stage before), and a block keeps about 16x its output."""
    model = {
        "catalog": "Transformer",
        "args": {"vocab": 64, "dim": 32, "layers": 3, "heads": 4, "seqLen": 16},
    }
    manifest = job(
        "lm",
        model={**model, "dtype": dtype},
        split={"stages": 2},
        parallelism={"schedule": "GPipe", "microbatches": 4},
        training={"batchSize": 8},
    )
    plan = build_plan(manifest)
    stage = plan.stages[1]
    memory = build_memory_model(manifest.spec, len(plan.stages), plan.microbatches, None)
    planned = stage.memory_bytes - stage.params * memory.state_bytes_per_param
    block = plan.profile.unit("block_0")
    assert block.saved_bytes_per_sample is not None
    assert 15 < block.saved_bytes_per_sample / block.activation_bytes_per_sample < 17

    torch_dtype = getattr(torch, dtype)
    units = build_meta_model(manifest.spec.model).units
    materialize(units, torch.device("cpu"), torch_dtype)
    microbatch = memory.samples_per_gpu
    inputs = [
        torch.randn(microbatch, 16, 32, dtype=torch_dtype, requires_grad=True)
        for _ in range(plan.microbatches)
    ]
    measured, held_inputs = _kept_by_autograd([units[name] for name in stage.units], inputs)
    assert held_inputs == plan.microbatches * microbatch * 16 * 32 * torch_dtype.itemsize
    assert planned == pytest.approx(measured - held_inputs, abs=1)
