"""Reading the plan file the operator mounts into every worker."""

from __future__ import annotations

import json
import os
from pathlib import Path

from maas_api.batch import BatchError, process_batch
from maas_api.contract import PLAN_PATH, PLAN_PATH_ENV, processes_per_worker
from maas_api.plan import PLAN_FORMAT_VERSION, Plan
from maas_api.spec import TrainingSpec
from pydantic import ValidationError

from maas_runtime.errors import PermanentError


def plan_path() -> Path:
    return Path(os.environ.get(PLAN_PATH_ENV) or PLAN_PATH)


def load_plan(path: Path) -> Plan:
    """Parse and check the plan; every problem is a PermanentError naming the field."""
    try:
        text = path.read_text()
    except OSError as error:
        raise PermanentError(PLAN_PATH_ENV, f"cannot read the plan at {path} ({error.strerror})") from error
    # Check the version before the schema, so a newer plan says "unknown version", not "unknown field".
    try:
        version = json.loads(text).get("formatVersion", PLAN_FORMAT_VERSION)
    except (json.JSONDecodeError, AttributeError) as error:
        raise PermanentError("plan", f"{path} is not a JSON object ({error})") from error
    if version != PLAN_FORMAT_VERSION:
        raise PermanentError(
            "plan.formatVersion",
            f"unknown plan format version {version!r}; this runtime reads version {PLAN_FORMAT_VERSION}",
        )
    try:
        plan = Plan.model_validate_json(text)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise PermanentError(f"plan.{where}", f"{first['msg']} ({error.error_count()} error(s))") from error
    check_plan(plan)
    return plan


def check_plan(plan: Plan) -> None:
    """Consistency checks the runtime relies on (the planner should never produce these)."""
    if len(plan.stages) != plan.pipeline_degree * plan.stages_per_worker:
        raise PermanentError(
            "plan.stages",
            f"{len(plan.stages)} stages != pipelineDegree {plan.pipeline_degree}"
            f" x stagesPerWorker {plan.stages_per_worker}",
        )
    if [s.index for s in plan.stages] != list(range(len(plan.stages))):
        raise PermanentError("plan.stages", "stage indexes must be 0..n-1 in order")
    if len(plan.workers) != plan.replicas * plan.pipeline_degree:
        raise PermanentError("plan.workers", f"{len(plan.workers)} workers != replicas x pipelineDegree")
    names = [unit.name for unit in plan.profile.units]
    staged = [unit for stage in plan.stages for unit in stage.units]
    if staged != names:
        raise PermanentError(
            "plan.stages", f"the stages' units {staged} must be the profile's units {names} in order"
        )
    for stage in plan.stages:
        if not set(stage.heads) <= set(stage.units):
            raise PermanentError(
                f"plan.stages[{stage.index}].heads", "every head must be one of the stage's units"
            )
    if plan.mode == "Serve" and plan.serving is None:
        raise PermanentError("plan.serving", "mode Serve needs serving settings")
    training = plan.training or TrainingSpec()
    if plan.mode == "Train":
        # The same arithmetic the planner used (maas_api.batch): equal per-process microbatches.
        try:
            process_batch(
                False, training.batch_size, processes_per_worker(plan.gpus_per_worker), plan.microbatches
            )
        except BatchError as error:
            raise PermanentError("plan.microbatches", str(error)) from error
