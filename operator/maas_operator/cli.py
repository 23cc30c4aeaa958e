"""The `maas` command: one entry point that dispatches to each side's own command-line module.

Sub-commands import their side lazily, so `maas plan` works without torch and `maas profile` without kopf.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable

# sub-command -> (module with `main(argv) -> int`, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "plan": ("maas_operator.planner.cli", "preview the split and placement of a MaaSJob without a cluster"),
    "profile": ("maas_runtime.profile", "print the unit profile of a model (needs torch)"),
    "operator": ("maas_operator.main", "run the MaaSJob operator (kopf) against the current kubeconfig"),
    "crds": ("maas_api.crd", "print or write the CRD generated from the API models"),
    "dev-cluster": ("maas_devcluster.cli", "start, stop or inspect the local control plane"),
}


def usage() -> str:
    lines = ["usage: maas COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<12} {help_text}" for name, (_, help_text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in {"-h", "--help"}:
        print(usage())
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(f"maas: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    return guard_broken_pipe(lambda: int(module.main(rest)))


def guard_broken_pipe(command: Callable[[], int]) -> int:
    """Runs a command; a reader that closed our stdout early (`maas plan -o json | head`) is not an error."""
    try:
        return command()
    except BrokenPipeError:
        # Point stdout at /dev/null so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
