"""Where this process sits in the job: ranks, worker, replica, pipeline rank, device and the DeviceMesh.

The mesh has shape (replicas, pipelineDegree, procsPerWorker), dims ("replica", "pp", "local"):
- "pp" is one replica's pipeline (one process per worker of the replica, same local rank);
- the data-parallel group of a process is every process with the same pipeline rank: dims ("replica",
  "local"), used as HSDP (replicate across replicas, shard across a worker's GPUs), or plain FSDP over
  "replica" when a worker has one process.

torchrun's c10d rendezvous numbers nodes by sorted host name and pid, not by `--node-rank`, so torchrun's
rank need not match the worker the operator placed a pod as. Each process therefore joins the process
group with the contract's rank for its worker index (env MAAS_WORKER_INDEX, required), which keeps every
stage on the node the planner chose. (DeviceMesh cannot do this remapping: its groups order their ranks by
number.)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from maas_api import contract
from maas_api.plan import Plan
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from maas_runtime.errors import PermanentError

MESH_DIMS = ("replica", "pp", "local")
STORE_TIMEOUT = timedelta(minutes=5)
"""How long a process waits for the others to announce themselves before giving up (retryable)."""


@dataclass(frozen=True)
class ParallelDims:
    replicas: int
    pipeline_degree: int
    procs_per_worker: int
    stages_per_worker: int

    @classmethod
    def from_plan(cls, plan: Plan) -> ParallelDims:
        return cls(
            replicas=plan.replicas,
            pipeline_degree=plan.pipeline_degree,
            procs_per_worker=contract.processes_per_worker(plan.gpus_per_worker),
            stages_per_worker=plan.stages_per_worker,
        )

    @property
    def workers(self) -> int:
        return self.replicas * self.pipeline_degree

    @property
    def world_size(self) -> int:
        return self.workers * self.procs_per_worker

    @property
    def dp_size(self) -> int:
        return self.replicas * self.procs_per_worker

    def coords(self, worker: int, local_rank: int) -> RankCoords:
        replica, pipeline_rank = divmod(worker, self.pipeline_degree)
        assert contract.worker_index(replica, pipeline_rank, self.pipeline_degree) == worker
        return RankCoords(
            worker=worker,
            local_rank=local_rank,
            replica=replica,
            pipeline_rank=pipeline_rank,
            dp_rank=replica * self.procs_per_worker + local_rank,
            stages=tuple(
                contract.stages_of_pipeline_rank(pipeline_rank, self.pipeline_degree, self.stages_per_worker)
            ),
        )


@dataclass(frozen=True)
class RankCoords:
    worker: int
    local_rank: int
    replica: int
    pipeline_rank: int
    dp_rank: int
    """Index among the processes that hold the same stages (data-parallel rank)."""
    stages: tuple[int, ...]
    """Model stages of this process."""


@dataclass(frozen=True)
class TorchrunEnv:
    """What torchrun tells a worker process."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    group_rank: int

    @classmethod
    def read(cls) -> TorchrunEnv:
        def number(name: str, default: int | None = None) -> int:
            value = os.environ.get(name)
            if value is None:
                if default is None:
                    raise PermanentError(
                        name, "not set: start the worker with torchrun (python -m maas_runtime.agent)"
                    )
                return default
            try:
                return int(value)
            except ValueError as error:
                raise PermanentError(name, f"{value!r} is not an integer") from error

        rank = number("RANK")
        local_world_size = number("LOCAL_WORLD_SIZE", 1)
        return cls(
            rank=rank,
            world_size=number("WORLD_SIZE"),
            local_rank=number("LOCAL_RANK", 0),
            local_world_size=local_world_size,
            group_rank=number("GROUP_RANK", rank // local_world_size),
        )


LOCAL_LAUNCH_ENV = "MAAS_LOCAL_LAUNCH"
"""Set by maas_runtime.launch: every worker of the plan runs under one torchrun (one machine)."""


def replica_port(port: int, replica: int) -> int:
    """The port replica `replica` listens on: in a cluster each replica has its own pod IP, so `port`; on one
    machine (maas_runtime.launch) replica r takes port + r so that the replicas do not collide. 0 stays 0
    (an ephemeral port)."""
    if os.environ.get(LOCAL_LAUNCH_ENV) == "1" and port != 0:
        return port + replica
    return port


def check_world(dims: ParallelDims, env: TorchrunEnv) -> tuple[int, int]:
    """Check torchrun's numbers against the plan; returns (worker index, local rank within the worker)."""
    if env.world_size != dims.world_size:
        raise PermanentError(
            "plan.workers",
            f"the plan needs {dims.world_size} processes ({dims.workers} workers x {dims.procs_per_worker}),"
            f" torchrun started {env.world_size} (WORLD_SIZE)",
        )
    if os.environ.get(LOCAL_LAUNCH_ENV) == "1" and env.local_world_size == env.world_size:
        return divmod(env.rank, dims.procs_per_worker)
    if env.local_world_size != dims.procs_per_worker:
        raise PermanentError(
            "plan.gpusPerWorker",
            f"the plan runs {dims.procs_per_worker} process(es) per worker, torchrun started"
            f" {env.local_world_size} (PET_NPROC_PER_NODE)",
        )
    raw = os.environ.get(contract.WORKER_INDEX_ENV)
    if raw is None:
        # Falling back to rendezvous order would run stages on nodes the planner did not choose.
        raise PermanentError(
            contract.WORKER_INDEX_ENV,
            "not set: every worker pod needs its worker index (the operator sets it); run a whole plan on one"
            " machine with `python -m maas_runtime.launch --plan PLAN`",
        )
    try:
        worker = int(raw)
    except ValueError as error:
        raise PermanentError(contract.WORKER_INDEX_ENV, f"{raw!r} is not an integer") from error
    if not 0 <= worker < dims.workers:
        raise PermanentError(
            contract.WORKER_INDEX_ENV, f"{worker} is not a worker of the plan (0..{dims.workers - 1})"
        )
    return worker, env.local_rank


def select_device(local_rank: int) -> tuple[torch.device, str]:
    """cuda:LOCAL_RANK with NCCL when a GPU is visible, otherwise the CPU with gloo."""
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
        return device, "nccl"
    return torch.device("cpu"), "gloo"


def check_members(dims: ParallelDims, members: list[tuple[int, int]]) -> None:
    """Every (worker, local rank) of the plan exactly once among the processes."""
    expected = {(w, p) for w in range(dims.workers) for p in range(dims.procs_per_worker)}
    seen: dict[tuple[int, int], int] = {}
    for torchrun_rank, member in enumerate(members):
        if member in seen:
            raise PermanentError(
                contract.WORKER_INDEX_ENV,
                f"processes {seen[member]} and {torchrun_rank} both claim worker {member[0]} local rank {member[1]}",
            )
        seen[member] = torchrun_rank
    if set(seen) != expected:
        raise PermanentError(contract.WORKER_INDEX_ENV, f"workers {sorted(expected - set(seen))} are missing")


def init_distributed(
    dims: ParallelDims, env: TorchrunEnv, worker: int, local_rank: int, backend: str, device: torch.device
) -> int:
    """Start the default process group with ranks numbered as the contract says; returns this rank.

    torchrun's rank follows rendezvous order, so every process first announces its (worker, local rank)
    through torchrun's store, checks that the plan's workers are all there once, then joins the process
    group as `contract.global_rank(worker, local_rank)`. The store is the agent's (TORCHELASTIC_USE_AGENT_STORE),
    or else one hosted by torchrun's rank 0 at MASTER_ADDR:MASTER_PORT.
    """
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    try:
        host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    except (KeyError, ValueError) as error:
        raise PermanentError(
            "MASTER_ADDR", "MASTER_ADDR and MASTER_PORT must be set (start with torchrun)"
        ) from error
    base = dist.TCPStore(  # type: ignore[attr-defined]
        host,
        port,
        env.world_size,
        is_master=not agent_store and env.rank == 0,
        timeout=STORE_TIMEOUT,
        wait_for_workers=False,
        multi_tenant=True,
    )
    # A fresh prefix per torchrun attempt: a restarted gang must not read the previous attempt's keys.
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "run")
    store = dist.PrefixStore(f"maas/{run_id}/{attempt}", base)  # type: ignore[attr-defined]
    store.set(f"member/{env.rank}", f"{worker},{local_rank}")
    keys = [f"member/{r}" for r in range(env.world_size)]
    store.wait(keys)
    members = [tuple(int(v) for v in store.get(key).decode().split(",")) for key in keys]
    check_members(dims, [(m[0], m[1]) for m in members])
    rank = contract.global_rank(worker, local_rank, dims.procs_per_worker)
    dist.init_process_group(
        backend,
        store=dist.PrefixStore("pg", store),  # type: ignore[attr-defined]
        rank=rank,
        world_size=env.world_size,
        device_id=device if device.type == "cuda" else None,
    )
    return rank


def build_mesh(dims: ParallelDims, device: torch.device) -> DeviceMesh:
    """The job's DeviceMesh; global ranks are already laid out (replica, pp, local)-major."""
    shape = (dims.replicas, dims.pipeline_degree, dims.procs_per_worker)
    return init_device_mesh(device.type, shape, mesh_dim_names=MESH_DIMS)


def data_parallel_mesh(dims: ParallelDims, mesh: DeviceMesh) -> DeviceMesh | None:
    """The mesh FSDP shards (or replicates) over; None without data parallelism."""
    if dims.dp_size == 1:
        return None
    if dims.procs_per_worker == 1:
        return mesh["replica"]
    return mesh["replica", "local"]
