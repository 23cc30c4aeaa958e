"""`python -m maas_runtime`: one worker process. The only place where errors become exit codes.

Exit codes (maas_api.contract.ExitCode), decided by where an error happened and its type (maas_runtime.errors):
0 done (all steps, or serving drained after SIGTERM); 75 retryable (rendezvous failed, peer lost, a
collective failed or timed out, training stopped by SIGTERM after its checkpoint); 78 permanent (bad plan,
environment, model reference or arguments, missing data); 1 the user's model code raised (whatever the
error), or anything else. The reason is one line on stderr that starts with `maas_runtime:` and names the
plan field or variable to fix.
"""

from __future__ import annotations

import os
import sys
import traceback

from maas_api.contract import ExitCode

from maas_runtime.errors import classify
from maas_runtime.plan_file import load_plan, plan_path
from maas_runtime.termination import install_termination_flag, record_termination_message


def run() -> ExitCode:
    import torch.distributed as dist

    terminate = install_termination_flag()
    plan = load_plan(plan_path())
    from maas_runtime.worker import start_worker

    worker = start_worker(plan, terminate)
    if plan.mode == "Train":
        from maas_runtime.train import train

        code = train(worker)
    else:
        from maas_runtime.serve import serve

        code = serve(worker)
    dist.destroy_process_group()
    return code


def main() -> int:
    try:
        code = run()
        print(f"maas_runtime: exit {int(code)}: done", file=sys.stderr, flush=True)
        return int(code)
    except BaseException as error:
        code, reason = classify(error)
        if code == ExitCode.UNCAUGHT_ERROR:
            traceback.print_exc()
        print(f"maas_runtime: exit {int(code)}: {reason}", file=sys.stderr, flush=True)
        if code != ExitCode.SUCCESS:
            record_termination_message(f"exit {int(code)}: {reason}")
        sys.stdout.flush()
        # Skip interpreter teardown: a process group with a dead peer can hang in its destructor.
        os._exit(int(code))


if __name__ == "__main__":
    sys.exit(main())
