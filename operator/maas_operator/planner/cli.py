"""`maas plan`: preview the split and the placement of a MaaSJob without a cluster.

Exit codes: 0 with a plan; 2 for invalid input (manifest, node file, arguments); 3 when the job is valid
but cannot be placed on the given nodes (the reason goes to stderr).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, NoReturn, TextIO

import yaml
from maas_api import ManifestError, Plan, parse_maasjob
from maas_api.manifest_yaml import ManifestYAMLError, load_manifests

from maas_operator.planner.build import build_plan
from maas_operator.planner.cluster import load_nodes
from maas_operator.planner.reasons import PlanError, Unschedulable, format_bytes, format_count, plural

EXIT_OK = 0
EXIT_INVALID = 2
EXIT_UNSCHEDULABLE = 3


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        raise InputError(message)


class InputError(Exception):
    """Input that cannot be read: a file, its YAML, or not exactly one MaaSJob in it (the message says which)."""


def _parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(prog="maas plan", description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("-f", "--filename", required=True, help="MaaSJob manifest (YAML), or - for stdin")
    parser.add_argument(
        "--nodes",
        help="Node list (kubectl get nodes -o yaml, or -o json, which reads faster); without it, no placement",
    )
    parser.add_argument("-o", "--output", choices=["table", "json", "yaml"], default="table")
    return parser


def read_input(path: str) -> str:
    """A file's text, or standard input's for `-`."""
    if path == "-":
        return sys.stdin.read()
    try:
        return Path(path).read_text()
    except OSError as error:
        raise InputError(f"cannot read {path}: {error.strerror}") from error


def load_job_manifest(path: str) -> dict[str, Any]:
    """The one MaaSJob in a file (YAML, read as kubectl reads it), not validated yet."""
    try:  # read as kubectl reads it, so the plan is of what `kubectl apply` would store
        documents = list(load_manifests(read_input(path)))
    except (ManifestYAMLError, ValueError) as error:  # ValueError: an integer of more than 4,300 digits
        raise InputError(f"{path}: {error}") from error
    jobs = [d for d in documents if isinstance(d, dict) and d.get("kind") == "MaaSJob"]
    if len(jobs) != 1:
        candidates = jobs or documents
        if len(candidates) != 1 or not isinstance(candidates[0], dict):
            raise InputError(f"{path} must hold exactly one MaaSJob, found {len(jobs)}")
        jobs = candidates
    manifest: dict[str, Any] = jobs[0]
    return manifest


def main(argv: list[str]) -> int:
    try:
        args = _parser().parse_args(argv)
        job = parse_maasjob(load_job_manifest(args.filename))
        nodes = load_nodes(read_input(args.nodes), args.nodes) if args.nodes else None
        plan = build_plan(job, nodes=nodes)
    except InputError as error:
        print(f"maas plan: {error}", file=sys.stderr)
        return EXIT_INVALID
    except ManifestError as error:
        print(f"maas plan: {error}", file=sys.stderr)
        return EXIT_INVALID
    except PlanError as error:
        print(f"maas plan: invalid: {error}", file=sys.stderr)
        return EXIT_INVALID
    except Unschedulable as error:
        print(f"maas plan: cannot place: {error}", file=sys.stderr)
        return EXIT_UNSCHEDULABLE
    write_plan(plan, args.output, sys.stdout)
    return EXIT_OK


def write_plan(plan: Plan, output: str, stream: TextIO) -> None:
    if output == "json":
        json.dump(plan.to_wire(), stream, indent=2)
        stream.write("\n")
    elif output == "yaml":
        yaml.safe_dump(plan.to_wire(), stream, sort_keys=False)
    else:
        stream.write(render_table(plan))


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]


def render_table(plan: Plan) -> str:
    """Stages (units, params, cost, memory, share of the bottleneck) and the placement, for a person."""
    lines = [
        f"MaaSJob {plan.namespace}/{plan.job}: {plan.mode.value}, {plan.strategy.value} split by"
        f" {plan.balance_by.value} into {plural(len(plan.stages), 'stage')} x {plural(plan.replicas, 'replica')},"
        f" {plan.schedule.value} with {plural(plan.microbatches, 'microbatch', 'microbatches')} (estimated"
        f" bubble {plan.estimated_bubble:.0%}), {plural(plan.gpus_per_worker, 'GPU')} per worker",
        "",
    ]
    rows = []
    slots = plan.stages_per_worker * plan.microbatches + plan.pipeline_degree - 1
    for stage in plan.stages:
        units = (
            stage.units[0]
            if len(stage.units) == 1
            else f"{stage.units[0]} .. {stage.units[-1]} ({len(stage.units)})"
        )
        if stage.heads:
            units += f" heads: {', '.join(stage.heads)}"
        share = stage.cost / plan.bottleneck if plan.bottleneck else 1.0
        # A step lasts `slots` bottleneck-long slots; the stage works in v*m of them, for `share` of each.
        idle = 1 - plan.stages_per_worker * plan.microbatches * share / slots
        rows.append(
            [
                str(stage.index),
                units,
                format_count(stage.params),
                format_count(stage.cost),
                format_bytes(stage.memory_bytes),
                f"{share:.0%}",
                f"{idle:.0%}",
            ]
        )
    lines += _table(["STAGE", "UNITS", "PARAMS", "COST", "MEMORY/GPU", "OF BOTTLENECK", "IDLE"], rows)
    lines.append(
        "(IDLE: estimated share of a step the stage waits, pipeline bubble and imbalance together;"
        f" cost is {plan.balance_by.value} per sample)"
    )
    lines.append("")
    by_node: dict[str, list[str]] = {}
    for worker in plan.workers:
        by_node.setdefault(worker.node or "(not placed)", []).append(
            f"{worker.name}[stages {','.join(map(str, worker.stages))}]"
        )
    lines += _table(["NODE", "WORKERS"], [[node, " ".join(names)] for node, names in by_node.items()])
    if plan.notes:
        lines += ["", "Notes:"] + [f"  - {note}" for note in plan.notes]
    return "\n".join(lines) + "\n"
