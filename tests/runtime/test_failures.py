"""Exit codes of real worker processes: 78 with a one-line reason naming the field; 75 when a peer is lost."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from maas_api.contract import TERMINATION_MESSAGE_ENV
from maas_api.spec import DataSpec, ModelSpec, TrainingSpec, VolumeSource
from maas_runtime.launch import child_pids, local_plan, run, write_plan

from tests.runtime.support import TINY_MLP, WORKER_ENV, factory_model, free_port, wait_until

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(180)]


def _factory_model(reference: str, **args: object) -> ModelSpec:
    return factory_model(reference, ["enc_0", "enc_1", "scale", "dec_0"], **args)


def _start_worker(plan_file: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """`python -m maas_runtime` as the only process of a job, with torchrun's environment."""
    torchrun = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1", "GROUP_RANK": "0"}
    contract = {"MAAS_PLAN_PATH": str(plan_file), "MAAS_WORKER_INDEX": "0"}
    full_env = {**os.environ, **WORKER_ENV, **torchrun, **contract, **(env or {})}
    full_env = {name: value for name, value in full_env.items() if value}  # "" unsets
    command = [sys.executable, "-m", "maas_runtime"]
    return subprocess.Popen(command, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_bad_inputs_exit_78_with_the_field_named(tmp_path: Path) -> None:
    training = TrainingSpec(steps=1, batch_size=2)
    newer = write_plan(local_plan("newer", TINY_MLP, training=training), tmp_path / "newer.json")
    newer.write_text(json.dumps({**json.loads(newer.read_text()), "formatVersion": 99}))
    missing_data = DataSpec(path="train.pt", volume=VolumeSource(claim_name="data", mount_path=str(tmp_path)))
    cases = {
        "plan.formatVersion: unknown plan format version 99; this runtime reads version 1": newer,
        "plan.model.factory: cannot import 'nope.missing:make' (ModuleNotFoundError: No module named 'nope')": (
            local_plan("factory", _factory_model("nope.missing:make"), training=training)
        ),
        "plan.model: unit 'scale': ['gain', 'offset'] are not initialised by reset_parameters(); give the unit an"
        " init_weights() method that sets them": (
            local_plan("init", _factory_model("tests.runtime.factories:encoder_decoder", uninitialised=True))
        ),
        f"plan.data.path: {tmp_path}/train.pt does not exist (claim data at {tmp_path})": (
            local_plan("data", TINY_MLP, training=training, data=missing_data)
        ),
        "plan.workers: the plan needs 2 processes (2 workers x 1), torchrun started 1 (WORLD_SIZE)": (
            local_plan("world", TINY_MLP, stages=2, microbatches=2, training=training)
        ),
        "plan.microbatches: training.batchSize 5 does not split into 1 process(es) per worker"
        " (resources.gpus) x 2 microbatches (parallelism.microbatches): make it a multiple of 2": (
            local_plan("batch", TINY_MLP, microbatches=2, training=TrainingSpec(steps=1, batch_size=5))
        ),
        "MAAS_WORKER_INDEX: not set: every worker pod needs its worker index (the operator sets it); run a"
        " whole plan on one machine with `python -m maas_runtime.launch --plan PLAN`": (
            local_plan("index", TINY_MLP, training=training)
        ),
    }
    workers = []
    for i, (message, plan) in enumerate(cases.items()):
        plan_file = plan if isinstance(plan, Path) else write_plan(plan, tmp_path / f"plan-{i}.json")
        env = {"MAAS_WORKER_INDEX": ""} if message.startswith("MAAS_WORKER_INDEX") else {}
        env[TERMINATION_MESSAGE_ENV] = str(tmp_path / f"termination-{i}")
        workers.append(_start_worker(plan_file, env))
    for i, (message, worker) in enumerate(zip(cases, workers, strict=True)):
        _, stderr = worker.communicate(timeout=120)
        assert (worker.returncode, stderr.strip().splitlines()[-1:]) == (
            78,
            [f"maas_runtime: exit 78: {message}"],
        )
        # The same reason, where the kubelet reads it for the pod's status (the operator quotes it).
        assert (tmp_path / f"termination-{i}").read_text() == f"exit 78: {message}\n"


def test_user_code_failures_exit_1_whatever_their_message(tmp_path: Path) -> None:
    """A factory that cannot reach a service is a bug of the job (exit 1), not a transient failure (75)."""
    plan = local_plan("store", _factory_model("tests.runtime.factories:feature_store"))
    worker = _start_worker(write_plan(plan, tmp_path / "plan.json"))
    _, stderr = worker.communicate(timeout=120)
    assert (worker.returncode, stderr.strip().splitlines()[-1]) == (
        1,
        "maas_runtime: exit 1: the model factory tests.runtime.factories:feature_store raised RuntimeError:"
        " could not connect to the feature store",
    )


def test_the_launcher_exits_with_the_failing_workers_code(tmp_path: Path) -> None:
    """Two stages; the last one's forward fails (user code) inside the pipeline schedule. Whatever torchrun
    does to the first stage afterwards, the launcher reports the cause: exit 1."""
    plan = local_plan(
        "forward",
        _factory_model("tests.runtime.factories:fails_in_forward"),
        stages=2,
        microbatches=2,
        training=TrainingSpec(steps=2, batch_size=4),
    )
    result = run(plan, tmp_path / "run", env=WORKER_ENV, timeout=150)
    assert result.exit_code == 1, result.describe()
    assert (
        "maas_runtime: exit 1: plan.stages[1] forward raised ConnectionError: could not connect to the"
        " feature store" in result.stderr[1]
    ), result.describe()


def test_two_pods_agent_exit_codes_when_a_peer_dies(tmp_path: Path) -> None:
    """Two `maas_runtime.agent` "pods" rendezvous like in the cluster; killing one's worker makes the
    other exit 75 (retryable), and each worker takes the stage of its MAAS_WORKER_INDEX, not its rank."""
    plan = local_plan(
        "pods", TINY_MLP, stages=2, microbatches=2, training=TrainingSpec(steps=100_000, batch_size=4)
    )
    plan_file = write_plan(plan, tmp_path / "plan.json")
    port = free_port()
    pods: list[subprocess.Popen[bytes]] = []
    logs: list[Path] = []
    for worker in (1, 0):
        env = {
            **os.environ,
            **WORKER_ENV,
            "MAAS_PLAN_PATH": str(plan_file),
            "MAAS_WORKER_INDEX": str(worker),
            "MAAS_PROGRESS_PORT": "0",
            "PET_NNODES": "2",
            "PET_NPROC_PER_NODE": "1",
            "PET_RDZV_BACKEND": "c10d",
            "PET_RDZV_ENDPOINT": f"127.0.0.1:{port}",
            "PET_RDZV_ID": "pods",
            "PET_MAX_RESTARTS": "0",
        }
        # Both "pods" resolve to this host: say which one hosts the rendezvous store.
        conf = f"is_host={'true' if worker == 1 else 'false'}"
        logs.append(tmp_path / f"pod-{worker}.log")
        with logs[-1].open("wb") as log:
            command = [sys.executable, "-m", "maas_runtime.agent", "--rdzv-conf", conf]
            pods.append(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT))
    try:
        wait_until(lambda: any('"event": "step"' in log.read_text() for log in logs), 120, "training steps")
        started = [
            json.loads(line)
            for log in logs
            for line in log.read_text().splitlines()
            if line.startswith('{"event": "started"')
        ]
        # Each pod runs its worker's stage with the contract's rank, whatever order torchrun's rendezvous chose.
        assert sorted((s["worker"], s["rank"], s["stages"]) for s in started) == [(0, 0, [0]), (1, 1, [1])]
        assert started[0]["worker"] == 1
        victim = child_pids(pods[1].pid)
        assert len(victim) == 1
        os.kill(victim[0], signal.SIGKILL)
        codes = [pod.wait(120) for pod in pods]
    finally:
        for pod in pods:
            if pod.poll() is None:
                for child in child_pids(pod.pid):
                    os.kill(child, signal.SIGKILL)
                pod.kill()
    assert codes == [75, 137], "\n".join(log.read_text()[-2000:] for log in logs)
