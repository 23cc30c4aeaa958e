"""The runtime's pure parts, in one process: data order, stages, init, plan checks, exit codes, batching."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from maas_api.contract import ExitCode
from maas_api.spec import Loss, ModelSpec
from maas_runtime import data
from maas_runtime.agent import pod_exit_code
from maas_runtime.errors import PermanentError, RetryableError, classify
from maas_runtime.http_server import HttpServer, Response
from maas_runtime.launch import local_plan, write_plan
from maas_runtime.model import build_meta_model, materialize, run_model
from maas_runtime.parallel_dims import ParallelDims, TorchrunEnv, check_members, check_world
from maas_runtime.plan_file import load_plan
from maas_runtime.progress import TrainProgress
from maas_runtime.serve import Batcher, PendingRequest
from maas_runtime.stages import StageModule, stage_layouts
from maas_runtime.worker import prepare_model

from tests.manifests import REPO
from tests.runtime.support import TINY_MLP, TINY_MULTITASK, TINY_TRANSFORMER, http

# --- data -------------------------------------------------------------------------------------------


def test_synthetic_language_model_targets_are_the_next_tokens() -> None:
    setup = prepare_model(local_plan("lm", TINY_TRANSFORMER))
    target = data.target_spec(Loss.CROSS_ENTROPY, setup.input_spec, setup.output_shape)
    assert target.next_token and target.shape == (8,)
    samples = data.SyntheticSamples(3, 100, setup.input_spec, target)
    indices = torch.tensor([5, 7])
    inputs, targets = samples.inputs(indices), samples.targets(indices)
    assert inputs.dtype == torch.int64 and inputs.shape == (2, 8) and int(inputs.max()) < 32
    assert torch.equal(inputs[:, 1:], targets[:, :-1])
    assert torch.equal(samples.inputs(torch.tensor([7])), inputs[1:])  # sample 7 is always the same


# --- model and stages -------------------------------------------------------------------------------


def test_a_unit_gets_the_same_weights_whatever_else_is_materialised() -> None:
    alone = build_meta_model(TINY_MLP).units
    materialize({"layer_2": alone["layer_2"]}, torch.device("cpu"), torch.float32)
    whole = build_meta_model(TINY_MLP).units
    materialize(dict(whole.items()), torch.device("cpu"), torch.float32)
    assert torch.equal(alone["layer_2"].weight, whole["layer_2"].weight)
    assert not torch.equal(whole["layer_1"].weight[:4, :4], whole["layer_2"].weight[:4, :4])


@pytest.mark.parametrize(
    "stages",
    [
        [["trunk_0", "trunk_1"], ["trunk_2", "head_classify"], ["head_regress"]],
        [["trunk_0"], ["trunk_1", "trunk_2"], ["head_classify", "head_regress"]],
        [["trunk_0", "trunk_1", "trunk_2", "head_classify", "head_regress"]],
    ],
)
def test_task_split_stages_chain_to_the_whole_models_output(stages: list[list[str]]) -> None:
    plan = local_plan("task", TINY_MULTITASK, stages=stages, heads=["head_classify", "head_regress"])
    setup = prepare_model(plan)
    units = build_meta_model(plan.model).units
    materialize(dict(units.items()), torch.device("cpu"), torch.float32)
    x = torch.randn(3, 6)
    y = x
    for layout in setup.layouts:
        y = StageModule(layout, units, setup.trunk_width)(y)
    assert y.shape == (3, 7)
    assert torch.allclose(y, run_model(units, setup.heads, x))


def test_a_trunk_unit_after_a_head_is_refused() -> None:
    heads = ["head_classify", "head_regress"]
    late_trunk = local_plan(
        "task", TINY_MULTITASK, stages=[["trunk_0", "head_classify"], ["trunk_1", "trunk_2"]]
    )
    with pytest.raises(
        PermanentError, match=r"plan\.stages\[1\]\.units: trunk units \['trunk_1', 'trunk_2'\] come"
    ):
        stage_layouts(late_trunk, heads)
    head_first = local_plan("task", TINY_MULTITASK, stages=[["trunk_0"], ["head_classify", "trunk_1"]])
    with pytest.raises(PermanentError, match=r"plan\.stages\[1\]\.units: task heads must come after"):
        stage_layouts(head_first, heads)


def test_model_errors_name_the_field() -> None:
    with pytest.raises(PermanentError, match=r"^plan\.model\.args: plan\.model\.args\.layerz"):
        build_meta_model(ModelSpec(catalog="MLP", args={"layerz": 2}))
    sys.path.insert(0, str(REPO))
    try:
        with pytest.raises(
            PermanentError, match=r"^plan\.model\.factory: .* returned Linear, not an nn.ModuleDict"
        ):
            build_meta_model(ModelSpec(factory="tests.runtime.factories:not_a_module_dict"))
        with pytest.raises(PermanentError, match=r"^plan\.model\.args: .* rejected \{'depth': 3\}"):
            build_meta_model(ModelSpec(factory="tests.runtime.factories:encoder_decoder", args={"depth": 3}))
        with pytest.raises(PermanentError, match=r"has no function 'nothing'"):
            build_meta_model(ModelSpec(factory="tests.runtime.factories:nothing"))
    finally:
        sys.path.remove(str(REPO))


# --- plan, world and exit codes -----------------------------------------------------------------------


def test_plan_file_errors_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(PermanentError, match=r"^MAAS_PLAN_PATH: cannot read the plan"):
        load_plan(tmp_path / "missing.json")
    path = write_plan(local_plan("p", TINY_MLP), tmp_path / "plan.json")
    assert load_plan(path).job == "p"
    body = json.loads(path.read_text())
    path.write_text(json.dumps({**body, "formatVersion": 2}))
    with pytest.raises(PermanentError, match=r"^plan\.formatVersion: unknown plan format version 2"):
        load_plan(path)
    path.write_text(json.dumps({**body, "microbatches": 0}))
    with pytest.raises(
        PermanentError, match=r"^plan\.microbatches: Input should be greater than or equal to 1"
    ):
        load_plan(path)
    path.write_text(json.dumps({**body, "pipelineDegree": 2}))
    with pytest.raises(PermanentError, match=r"^plan\.stages: 1 stages != pipelineDegree 2"):
        load_plan(path)


def test_world_size_and_worker_indexes_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    dims = ParallelDims(replicas=2, pipeline_degree=2, procs_per_worker=1, stages_per_worker=1)
    with pytest.raises(
        PermanentError, match=r"^plan\.workers: the plan needs 4 processes .* torchrun started 3"
    ):
        check_world(dims, TorchrunEnv(rank=0, world_size=3, local_rank=0, local_world_size=1, group_rank=0))
    monkeypatch.setenv("MAAS_WORKER_INDEX", "3")
    assert check_world(dims, TorchrunEnv(0, 4, 0, 1, 0)) == (3, 0)
    monkeypatch.setenv("MAAS_LOCAL_LAUNCH", "1")
    assert check_world(dims, TorchrunEnv(2, 4, 2, 4, 0)) == (2, 0)
    with pytest.raises(PermanentError, match=r"processes 0 and 2 both claim worker 1"):
        check_members(dims, [(1, 0), (0, 0), (1, 0), (3, 0)])
    assert dims.coords(3, 0).stages == (1,) and dims.coords(3, 0).dp_rank == 1


def test_errors_map_to_the_contracts_exit_codes() -> None:
    assert classify(PermanentError("plan.x", "bad")) == (ExitCode.PERMANENT, "plan.x: bad")
    assert classify(RetryableError("stopped"))[0] == ExitCode.RETRYABLE
    try:
        try:
            raise RuntimeError("[gloo/pair.cc:561] Connection closed by peer")
        except RuntimeError as inner:
            raise RuntimeError("Failed to run stage backward") from inner
    except RuntimeError as wrapped:
        assert classify(wrapped)[0] == ExitCode.RETRYABLE
    assert classify(KeyError("x")) == (ExitCode.UNCAUGHT_ERROR, "uncaught KeyError: 'x'")
    assert pod_exit_code([]) == 0
    assert pod_exit_code([(2.0, 75), (1.0, 78)]) == 78
    assert pod_exit_code([(2.0, 75), (1.0, -9)]) == 137


# --- serving and progress -----------------------------------------------------------------------------


def test_batcher_fills_batches_and_carries_what_does_not_fit() -> None:
    batcher = Batcher(max_batch=4, max_delay_s=0.01)
    for n in (1, 2, 3):
        batcher.submit(PendingRequest(torch.zeros(n, 2)))
    assert [len(r.inputs) for r in batcher.next_batch(1.0)] == [1, 2]
    assert [len(r.inputs) for r in batcher.next_batch(1.0)] == [3]
    assert batcher.next_batch(0.01) == [] and batcher.empty()


def test_progress_endpoints() -> None:
    progress = TrainProgress("job", "ns", total_steps=10)
    progress.update(step=3, loss=0.5, samples_per_second=100.0)
    server = HttpServer(
        0,
        {
            ("GET", "/progress"): lambda _: Response.json(200, progress.snapshot()),
            ("GET", "/metrics"): lambda _: Response.text(200, progress.metrics()),
        },
        host="127.0.0.1",
    )
    try:
        status, body = http("GET", f"http://127.0.0.1:{server.port}/progress")
        assert status == 200 and body["step"] == 3 and body["totalSteps"] == 10 and body["loss"] == 0.5
        status, text = http("GET", f"http://127.0.0.1:{server.port}/metrics")
        assert 'maas_train_loss{job="job",namespace="ns"} 0.5' in text
        assert "# TYPE maas_train_samples_total counter" in text
        assert http("GET", f"http://127.0.0.1:{server.port}/nothing")[0] == 404
    finally:
        server.close()


def test_runtime_never_imports_kopf() -> None:
    code = (
        "import sys, maas_runtime.__main__, maas_runtime.train, maas_runtime.serve, maas_runtime.profile,"
        " maas_runtime.agent, maas_runtime.launch; print('kopf' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "False"
