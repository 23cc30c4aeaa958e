"""The runtime's pure parts, in one process: data order, stages, init, plan checks, exit codes, batching."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
import torch
from maas_api.contract import ExitCode
from maas_api.spec import Loss, ModelSpec, TrainingSpec
from maas_runtime import data
from maas_runtime.agent import main as agent_main
from maas_runtime.agent import pod_exit_code
from maas_runtime.errors import PermanentError, RetryableError, classify, communication, user_code
from maas_runtime.http_server import HttpServer, Response
from maas_runtime.launch import local_plan, omp_threads, write_plan
from maas_runtime.model import InputSpec, build_meta_model, materialize, run_model
from maas_runtime.parallel_dims import ParallelDims, TorchrunEnv, check_members, check_world
from maas_runtime.plan_file import load_plan
from maas_runtime.progress import TrainProgress
from maas_runtime.serve import Batcher, PendingRequest, max_body_bytes, parse_inputs
from maas_runtime.stages import StageModule, stage_layouts
from maas_runtime.train import MAX_STATS_WINDOW, STATS_PERIOD_SECONDS, StatsWindow, StepRecord
from maas_runtime.worker import prepare_model

from tests.manifests import REPO
from tests.runtime import fuzz
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


def test_synthetic_samples_are_the_same_whether_kept_in_memory_or_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    setup = prepare_model(local_plan("mlp", TINY_MLP))
    target = data.target_spec(Loss.MSE, setup.input_spec, setup.output_shape)
    kept = data.SyntheticSamples(3, 50, setup.input_spec, target)
    monkeypatch.setattr(data, "SYNTHETIC_CACHE_BYTES", 0)
    generated = data.SyntheticSamples(3, 50, setup.input_spec, target)
    # Repeated and unread indices, read twice: the kept set serves the second read from memory.
    for indices in (torch.tensor([4, 0, 4, 49]), torch.tensor([49, 4, 17])):
        assert torch.equal(kept.inputs(indices), generated.inputs(indices))
        assert torch.equal(kept.targets(indices), generated.targets(indices))
    assert kept.inputs(torch.tensor([4, 0])).shape == (2, *setup.input_spec.shape)


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
    write_plan(local_plan("p", TINY_MLP, microbatches=3, training=TrainingSpec(batch_size=8)), path)
    with pytest.raises(
        PermanentError, match=r"^plan\.microbatches: training\.batchSize 8 does not split into 1 process"
    ):
        load_plan(path)


def test_world_size_and_worker_indexes_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    dims = ParallelDims(replicas=2, pipeline_degree=2, procs_per_worker=1, stages_per_worker=1)
    with pytest.raises(
        PermanentError, match=r"^plan\.workers: the plan needs 4 processes .* torchrun started 3"
    ):
        check_world(dims, TorchrunEnv(rank=0, world_size=3, local_rank=0, local_world_size=1, group_rank=0))
    monkeypatch.delenv("MAAS_WORKER_INDEX", raising=False)
    monkeypatch.delenv("MAAS_LOCAL_LAUNCH", raising=False)
    with pytest.raises(PermanentError, match=r"^MAAS_WORKER_INDEX: not set: every worker pod needs"):
        check_world(dims, TorchrunEnv(0, 4, 0, 1, 0))
    monkeypatch.setenv("MAAS_WORKER_INDEX", "3")
    assert check_world(dims, TorchrunEnv(0, 4, 0, 1, 0)) == (3, 0)
    monkeypatch.setenv("MAAS_LOCAL_LAUNCH", "1")
    assert check_world(dims, TorchrunEnv(2, 4, 2, 4, 0)) == (2, 0)
    with pytest.raises(PermanentError, match=r"processes 0 and 2 both claim worker 1"):
        check_members(dims, [(1, 0), (0, 0), (1, 0), (3, 0)])
    assert dims.coords(3, 0).stages == (1,) and dims.coords(3, 0).dp_rank == 1


def _raised(error: Exception, *wrappers: Callable[[str], AbstractContextManager[None]]) -> BaseException:
    """`error` as it comes out of the nested context managers (outermost first)."""
    try:
        with contextlib.ExitStack() as stack:
            for wrapper in wrappers:
                stack.enter_context(wrapper("here"))
            raise error
    except Exception as raised:
        return raised


GLOO_PEER_LOST = (
    "[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:561] Connection closed by peer [::1]:7816"
)


def test_errors_are_classified_by_where_they_happened_and_their_type() -> None:
    assert classify(PermanentError("plan.x", "bad")) == (ExitCode.PERMANENT, "plan.x: bad")
    assert classify(RetryableError("stopped"))[0] == ExitCode.RETRYABLE
    try:
        try:
            raise RuntimeError(GLOO_PEER_LOST)
        except RuntimeError as inner:
            raise RuntimeError("Failed to run stage backward") from inner
    except RuntimeError as wrapped:
        assert classify(wrapped)[0] == ExitCode.RETRYABLE
    assert classify(KeyError("x")) == (ExitCode.UNCAUGHT_ERROR, "uncaught KeyError: 'x'")
    # The words of a message decide nothing: the user's code failing is a bug that a restart repeats.
    feature_store = RuntimeError("could not connect to the feature store: peer timeout")
    assert classify(feature_store)[0] == ExitCode.UNCAUGHT_ERROR
    assert classify(_raised(feature_store, user_code)) == (
        ExitCode.UNCAUGHT_ERROR,
        "here raised RuntimeError: could not connect to the feature store: peer timeout",
    )
    assert classify(_raised(ConnectionError("refused"), user_code))[0] == ExitCode.UNCAUGHT_ERROR
    assert classify(TimeoutError("slow"))[0] == ExitCode.UNCAUGHT_ERROR
    # Finding the peers: any failure may pass on a restart, unless it is a wrong setting.
    assert classify(_raised(ValueError("no route"), communication)) == (
        ExitCode.RETRYABLE,
        "here failed (ValueError: no route)",
    )
    assert classify(_raised(PermanentError("MAAS_WORKER_INDEX", "x"), communication))[0] == ExitCode.PERMANENT
    # A collective inside the user's forward (FSDP's all-gather hook) stays a communication error.
    assert classify(_raised(RuntimeError(GLOO_PEER_LOST), communication, user_code))[0] == ExitCode.RETRYABLE
    assert classify(_raised(RuntimeError(GLOO_PEER_LOST), user_code))[0] == ExitCode.RETRYABLE
    assert classify(_raised(torch.distributed.DistNetworkError("reset"), user_code))[0] == ExitCode.RETRYABLE
    # ...and user code inside the pipeline's error wrapping stays user code.
    try:
        try:
            StageModule(stage_layouts(local_plan("p", TINY_MLP), [])[0], _Broken(), 0)(torch.zeros(1, 8))
        except Exception as error:
            raise RuntimeError("[Stage 0] failed to run forward") from error
    except RuntimeError as wrapped:
        assert classify(wrapped) == (
            ExitCode.UNCAUGHT_ERROR,
            "plan.stages[0] forward raised ConnectionError: could not connect to the feature store",
        )
    assert pod_exit_code([]) == 0
    assert pod_exit_code([(2.0, 75), (1.0, 78)]) == 78
    assert pod_exit_code([(2.0, 75), (1.0, -9)]) == 137


class _Broken(dict[str, torch.nn.Module]):
    """Units whose forward fails like user code talking to a service."""

    def __init__(self) -> None:
        super().__init__({f"layer_{i}": _FailingUnit() for i in range(4)})


class _FailingUnit(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise ConnectionError("could not connect to the feature store")


def test_the_agent_refuses_a_launch_that_would_wait_forever(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = local_plan("pods", TINY_MLP, stages=2, microbatches=2)
    monkeypatch.setenv("MAAS_PLAN_PATH", str(write_plan(plan, tmp_path / "plan.json")))
    for name in [v for v in os.environ if v.startswith("PET_") or v == "MAAS_WORKER_INDEX"]:
        monkeypatch.delenv(name)

    def refusal(*flags: str) -> str:
        assert agent_main(list(flags)) == ExitCode.PERMANENT
        return capsys.readouterr().err.strip()

    assert refusal("--nnodes", "2") == (
        "maas_runtime.agent: exit 78: PET_RDZV_ENDPOINT: 2 pods need PET_RDZV_BACKEND=c10d and"
        " PET_RDZV_ENDPOINT=<worker 0's host>:29400 (got backend 'static', endpoint '')"
    )
    rendezvous = ["--rdzv-backend", "c10d", "--rdzv-endpoint", "worker-0:29400"]
    assert (
        refusal("--nnodes", "3", *rendezvous)
        == "maas_runtime.agent: exit 78: PET_NNODES: 3 pods, the plan has 2 workers"
    )
    assert refusal("--nnodes", "2", *rendezvous).startswith(
        "maas_runtime.agent: exit 78: MAAS_WORKER_INDEX: not set"
    )
    monkeypatch.setenv("MAAS_WORKER_INDEX", "1")
    assert refusal("--nnodes", "2", "--nproc-per-node", "2", *rendezvous).startswith(
        "maas_runtime.agent: exit 78: plan.workers: the plan needs 2 processes (2 workers x 1), torchrun started 4"
    )
    monkeypatch.setenv("MAAS_PLAN_PATH", str(tmp_path / "missing.json"))
    assert refusal("--nnodes", "2", *rendezvous).startswith(
        "maas_runtime.agent: exit 78: MAAS_PLAN_PATH: cannot read"
    )


def test_stats_windows_last_about_half_a_second() -> None:
    """Every process derives the next window from the same reduced step times (one process here)."""

    def window(
        seconds: float, losses: list[float | None], stop: bool = False
    ) -> tuple[bool, list[float | None], int]:
        records = [
            StepRecord(
                step=i,
                samples_seen=i,
                seconds=seconds,
                ended=0.0,
                cpu_time=0.0,
                loss=None if loss is None else torch.tensor(loss),
            )
            for i, loss in enumerate(losses)
        ]
        return StatsWindow.reduce(records, stop, torch.device("cpu")).result()

    torch.distributed.init_process_group("gloo", store=torch.distributed.HashStore(), rank=0, world_size=1)
    try:
        assert window(0.01, [0.5, None]) == (False, [0.5, None], int(STATS_PERIOD_SECONDS / 0.01))
        assert window(2.0, [1.0], stop=True) == (True, [1.0], 1)
        assert window(1e-6, [None])[2] == MAX_STATS_WINDOW
    finally:
        torch.distributed.destroy_process_group()


# --- serving and progress -----------------------------------------------------------------------------


def test_batcher_fills_batches_and_carries_what_does_not_fit() -> None:
    batcher = Batcher(max_batch=4, max_delay_s=0.01)
    for n in (1, 2, 3):
        batcher.submit(PendingRequest(torch.zeros(n, 2)))
    assert [len(r.inputs) for r in batcher.next_batch(1.0)] == [1, 2]
    assert [len(r.inputs) for r in batcher.next_batch(1.0)] == [3]
    assert batcher.next_batch(0.01) == [] and batcher.empty()


def test_predict_inputs_are_parsed_strictly() -> None:
    floats, tokens = InputSpec((2,), torch.float32), InputSpec((3,), torch.int64, high=32)
    assert torch.equal(parse_inputs(b'{"inputs": [[1, 2.5]]}', floats, 4), torch.tensor([[1.0, 2.5]]))  # type: ignore[arg-type]
    refusals = {
        b'{"inputs": [[NaN, 1]]}': "NaN is not a JSON number",
        b'{"inputs": [[1e400, 1]]}': "inputs must be finite torch.float32 numbers",
        b'{"inputs": [[100000000000000000000000, 1]]}': "Overflow",
        b'{"inputs": [[true, false]]}': "inputs must be numbers",
        b'{"inputs": [[1, 2], [3]]}': "each input a (nested) list of numbers of shape [2]",
        b'{"inputs": [[1, 2, 3]]}': "each input must have shape [2], got [3]",
    }
    for body, reason in refusals.items():
        answer = parse_inputs(body, floats, 4)
        assert isinstance(answer, str) and reason in answer, (body, answer)
    assert parse_inputs(b'{"inputs": [[1, 2, 3.5]]}', tokens, 4) == "inputs must be integers"
    assert parse_inputs(b'{"inputs": [[1, 2, 32]]}', tokens, 4) == "token ids must be in [0, 32)"
    assert (
        parse_inputs(b'{"inputs": [[1, 2, 3]]}', tokens, 0)
        == "at most serving.maxBatchSize=0 inputs per request"
    )


def test_http_server_answers_every_malformed_request_with_a_4xx_and_keeps_serving() -> None:
    """The fuzzer's requests, 8 at a time, beside a client whose valid requests must stay fast and right."""
    spec, max_batch = InputSpec((4,), torch.float32), 8

    def predict(body: bytes) -> Response:
        inputs = parse_inputs(body, spec, max_batch)
        if isinstance(inputs, str):
            return Response.json(400, {"error": inputs})
        return Response.json(200, {"outputs": (inputs * 2).tolist()})

    limit = max_body_bytes(spec, max_batch)
    server = HttpServer(0, {("POST", "/v1/predict"): predict}, host="127.0.0.1", max_body_bytes=limit)
    valid = json.dumps({"inputs": [[1.0, 2.0, 3.0, 4.0]] * 2}).encode()
    cases = fuzz.malformed_requests("/v1/predict", valid, limit, seed=0, mutations=300)
    stop, latencies = threading.Event(), []

    def good_client() -> None:
        while not stop.is_set():
            started = time.perf_counter()
            status, body = http("POST", f"http://127.0.0.1:{server.port}/v1/predict", json.loads(valid))
            latencies.append(time.perf_counter() - started)
            assert status == 200 and body == {"outputs": [[2.0, 4.0, 6.0, 8.0]] * 2}

    try:
        client = threading.Thread(target=good_client)
        client.start()
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda case: fuzz.send(server.port, case[1]), cases))
        stop.set()
        client.join(30)
    finally:
        server.close()
    for (what, _), answer in zip(cases, answers, strict=True):
        fuzz.check_answer(what, answer)
    statuses = {what: answer.status for (what, _), answer in zip(cases, answers, strict=True)}
    assert {
        k: statuses[k] for k in ("Content-Length: 'abc'", "Content-Length: '-1'", "200 MB announced")
    } == {
        "Content-Length: 'abc'": 400,
        "Content-Length: '-1'": 400,
        "200 MB announced": 413,
    }
    assert statuses["PUT"] == statuses["FOO method"] == 405 and statuses["unknown path"] == 404
    assert statuses["NaN"] == statuses["huge integer"] == statuses["deep nesting"] == 400
    assert statuses["body shorter than announced"] == 400 and statuses["chunked"] == 411
    assert latencies and max(latencies) < 5.0, f"valid requests waited up to {max(latencies):.1f} s"


def test_http_server_holds_a_burst_of_new_connections_while_its_accept_loop_is_busy() -> None:
    """64 clients connecting at once while the accept loop is not accepting (here: stopped; on a busy machine:
    not scheduled) are all held by the kernel, none waits for a SYN retransmit."""
    server = HttpServer(0, {}, host="127.0.0.1")
    server._server.shutdown()  # stops accepting; the socket keeps listening
    connections = []
    try:
        started = time.monotonic()
        for _ in range(64):
            connections.append(socket.create_connection(("127.0.0.1", server.port), timeout=0.5))
        assert time.monotonic() - started < 5.0
    finally:
        for connection in connections:
            connection.close()
        server._server.server_close()


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


def test_the_termination_message_is_appended_up_to_the_kubelets_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from maas_api.contract import TERMINATION_MESSAGE_ENV, TERMINATION_MESSAGE_LIMIT
    from maas_runtime.termination import record_termination_message

    monkeypatch.delenv(TERMINATION_MESSAGE_ENV, raising=False)
    record_termination_message("nowhere to write")  # a local run: no file, no error
    path = tmp_path / "termination-log"
    monkeypatch.setenv(TERMINATION_MESSAGE_ENV, str(path))
    record_termination_message("exit 75: peer lost\n(details)")
    record_termination_message("exit 75: peer lost too")
    assert path.read_text() == "exit 75: peer lost (details)\nexit 75: peer lost too\n"
    record_termination_message("y" * 10_000)
    record_termination_message("never written: the kubelet would not keep it")
    assert TERMINATION_MESSAGE_LIMIT <= len(path.read_text()) < 2 * TERMINATION_MESSAGE_LIMIT
    assert "never written" not in path.read_text()


def test_local_workers_share_the_machines_cores_for_openmp() -> None:
    assert omp_threads(6, 2) == 1  # never zero, even with more workers than cores
    assert omp_threads(4, 32) == 8
    assert omp_threads(1, None) == 1
