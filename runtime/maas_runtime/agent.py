"""`python -m maas_runtime.agent [torchrun flags]`: the pod's torchrun, passing the workers' exit codes on.

torchrun itself exits 1 whenever a worker fails, whatever the worker's code, which would turn every
retryable failure (75) into a permanent one at the pod level. This runs the same elastic agent with the
same flags and `PET_*` environment variables (torchrun's own argument parser), always with
`-m maas_runtime` as the program, and exits with:
- 0 when every worker succeeded;
- 78 when any worker exited 78 (a restart cannot help);
- otherwise the code of the first worker that failed (a signal N becomes 128+N, e.g. 137 for OOM kills);
- 75 when the rendezvous failed or timed out, 128+N when the agent itself got signal N (SIGTERM: 143);
- 78 at once, before the rendezvous, when the plan, the rendezvous settings, the pod count or
  MAAS_WORKER_INDEX are wrong (`check_launch`).
"""

from __future__ import annotations

import sys

from maas_api import contract
from maas_api.contract import ExitCode

from maas_runtime.errors import PermanentError
from maas_runtime.termination import record_termination_message


def signal_code(code: int) -> int:
    """A process killed by signal N reports -N; shells and Kubernetes report 128+N."""
    return 128 - code if code < 0 else code


def pod_exit_code(failures: list[tuple[float, int]]) -> int:
    """The pod's exit code from its failed workers' (timestamp, exit code) pairs."""
    if not failures:
        return int(ExitCode.SUCCESS)
    codes = [signal_code(code) for _, code in failures]
    if ExitCode.PERMANENT in codes:
        return int(ExitCode.PERMANENT)
    return signal_code(min(failures)[1])


def check_launch(nnodes: str, nproc_per_node: str, rdzv_backend: str, rdzv_endpoint: str) -> None:
    """Checks before the rendezvous, where a mistake would make every pod wait for the others forever:
    rendezvous settings, the worker index and the plan against the number of pods and processes."""
    from maas_runtime.parallel_dims import ParallelDims, TorchrunEnv, check_world
    from maas_runtime.plan_file import load_plan, plan_path

    plan = load_plan(plan_path())
    dims = ParallelDims.from_plan(plan)
    try:
        pods = int(nnodes.rpartition(":")[2])
        processes = int(nproc_per_node)
    except ValueError as error:
        raise PermanentError(
            "PET_NNODES",
            f"PET_NNODES={nnodes!r} and PET_NPROC_PER_NODE={nproc_per_node!r} must be the numbers of pods"
            " and of processes per pod",
        ) from error
    if pods != dims.workers:
        raise PermanentError("PET_NNODES", f"{pods} pods, the plan has {dims.workers} workers")
    if pods > 1 and (rdzv_backend != "c10d" or not rdzv_endpoint):
        raise PermanentError(
            "PET_RDZV_ENDPOINT",
            f"{pods} pods need PET_RDZV_BACKEND=c10d and PET_RDZV_ENDPOINT=<worker 0's host>:"
            f"{contract.RENDEZVOUS_PORT} (got backend {rdzv_backend!r}, endpoint {rdzv_endpoint!r})",
        )
    # The same check the workers make once started (processes per pod, MAAS_WORKER_INDEX).
    env = TorchrunEnv(
        rank=0, world_size=pods * processes, local_rank=0, local_world_size=processes, group_rank=0
    )
    check_world(dims, env)


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous.api import RendezvousError
    from torch.distributed.run import parse_args, run

    flags = sys.argv[1:] if argv is None else argv
    args = parse_args([*flags, "--module", "maas_runtime"])  # type: ignore[no-untyped-call]
    try:
        check_launch(args.nnodes, args.nproc_per_node, args.rdzv_backend, args.rdzv_endpoint)
    except PermanentError as error:
        print(f"maas_runtime.agent: exit {int(ExitCode.PERMANENT)}: {error}", file=sys.stderr)
        record_termination_message(f"exit {int(ExitCode.PERMANENT)}: {error}")
        return int(ExitCode.PERMANENT)
    try:
        run(args)  # type: ignore[no-untyped-call]
    except ChildFailedError as error:
        failures = [(float(failure.timestamp), failure.exitcode) for failure in error.failures.values()]
        code = pod_exit_code(failures)
        print(
            f"maas_runtime.agent: workers failed {sorted(c for _, c in failures)}: exit {code}",
            file=sys.stderr,
        )
        return code
    except SignalException as error:
        print(f"maas_runtime.agent: stopped by {error.sigval.name}", file=sys.stderr)
        return 128 + int(error.sigval)
    except RendezvousError as error:
        message = f"rendezvous failed ({type(error).__name__}: {error})"
        print(f"maas_runtime.agent: {message}", file=sys.stderr)
        record_termination_message(f"exit {int(ExitCode.RETRYABLE)}: {message}")
        return int(ExitCode.RETRYABLE)
    return int(ExitCode.SUCCESS)


if __name__ == "__main__":
    sys.exit(main())
