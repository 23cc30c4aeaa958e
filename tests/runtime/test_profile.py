"""`maas profile` agrees with the catalog's analytic profiles, and profiles user factories."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

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
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

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


class LiveTensorBytes(TorchDispatchMode):
    """Bytes of the tensor storages alive at each op, the largest so far in `peak` (CPU has no allocator
    statistics): every op's outputs count until the last reference to their storage goes."""

    def __init__(self, ignore: Iterable[torch.Tensor]) -> None:
        super().__init__()
        self.ignore = {StorageWeakRef(t.untyped_storage()) for t in ignore}
        self.live: dict[StorageWeakRef, int] = {}
        self.peak = 0

    def now(self) -> int:
        self.live = {ref: size for ref, size in self.live.items() if not ref.expired()}
        return sum(self.live.values())

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if (
                isinstance(t, torch.Tensor)
                and (ref := StorageWeakRef(t.untyped_storage())) not in self.ignore
            ):
                self.live.setdefault(ref, t.untyped_storage().nbytes())
        self.peak = max(self.peak, self.now())
        return out


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_planned_activation_memory_is_what_a_real_stage_holds(dtype: str) -> None:
    """The second of two GPipe stages of a transformer (blocks and the LM head), run on real CPU tensors as
    the schedule runs it: every microbatch forward, then every backward. After the forwards the live tensors
    are exactly the plan's activation bytes (the stage's received inputs aside, which the estimate leaves to
    the stage before); backward adds at most one microbatch of the largest unit's saved bytes (its
    gradients' working set), which USABLE_GPU_FRACTION's headroom is for."""
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
    chain = [units[name] for name in stage.units]
    params = [p for unit in chain for p in unit.parameters()]
    for p in params:
        p.grad = torch.zeros_like(p)  # gradients are model state, counted per parameter
    shape = (memory.samples_per_gpu, 16, 32)
    received = [torch.randn(shape, dtype=torch_dtype, requires_grad=True) for _ in range(plan.microbatches)]
    tracker = LiveTensorBytes([*params, *(p.grad for p in params if p.grad is not None)])
    with tracker:
        outputs = []
        for x in received:
            for unit in chain:
                x = unit(x)
            outputs.append(x)
        after_forwards = tracker.now()
        for y in outputs:
            y.backward(torch.ones_like(y))
    assert planned == pytest.approx(after_forwards, abs=1)
    working_set = memory.samples_per_gpu * max(
        memory.activation_bytes(plan.profile.unit(u)) for u in stage.units
    )
    assert planned <= tracker.peak <= planned + working_set
