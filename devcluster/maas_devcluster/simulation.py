"""Annotations that decide what a fake node or a kwok pod does, since kwok runs no code.

The Stages in `kwok/stages.yaml` read these annotations; this module is the one place their names live
(a unit test checks that the Stages use exactly these names).

Fates of a pod bound to a fake node:
- No annotation: the pod becomes Running and its containers ready, like a model server. Ready follows as a
  kubelet computes it: containers ready and every readiness gate (a pod condition someone else sets) True.
- `CONTAINERS_READY_ANNOTATION: "false"`: the pod runs but its containers are not ready (a readiness probe
  that fails, a stage down); removing the annotation (or any other value) makes them ready. Ready follows.
- `EXIT_CODE_ANNOTATION: "N"`: every container terminates with exit code N (reason `Completed` for 0,
  `Error` otherwise), the pod turns `Succeeded` (N = 0) or `Failed`, and Ready turns False. Restarts are not
  simulated: the fate is final whatever `restartPolicy` says, as for the operator's workers.
- `EXIT_AFTER_SECONDS_ANNOTATION: "S"` (only with an exit code; default 0) says when. The clock starts at
  the pod's `status.startTime`, not when the annotation appears, so the same annotations always give the same
  deadline: a pod annotated after it has run S seconds ends as soon as kwok sees the annotation. startTime has
  whole seconds, so for S > 0 the deadline is rounded up: the pod runs at least S and less than S + 1 seconds.
- The Stages take only whole numbers (an exit code of at most 3 digits): any other value matches no Stage
  and the pod keeps running. `exit_annotations` refuses such values before they reach the cluster.
- A pod being deleted is removed at once (grace period 0); finalizers are left to their owners.

Fates of a fake node:
- `NODE_READY_ANNOTATION: "false"`: the node's Ready condition turns False (a lost node); the node lifecycle
  controller then taints it, and evicts its pods after their toleration (300 s by default). Removing the
  annotation, or any other value, makes the node Ready again. kwok keeps renewing the node's Lease either way.
  Pods the controller marked not ready stay not ready after the node returns (no kubelet re-posts them).
"""

from __future__ import annotations

SIMULATION_PREFIX = "sim.maas.dev/"
NODE_READY_ANNOTATION = f"{SIMULATION_PREFIX}node-ready"
EXIT_CODE_ANNOTATION = f"{SIMULATION_PREFIX}exit-code"
EXIT_AFTER_SECONDS_ANNOTATION = f"{SIMULATION_PREFIX}exit-after-seconds"
CONTAINERS_READY_ANNOTATION = f"{SIMULATION_PREFIX}containers-ready"
ALL_ANNOTATIONS = (
    NODE_READY_ANNOTATION,
    EXIT_CODE_ANNOTATION,
    EXIT_AFTER_SECONDS_ANNOTATION,
    CONTAINERS_READY_ANNOTATION,
)

# Exit codes a container can report on Linux.
MAX_EXIT_CODE = 255


def exit_annotations(exit_code: int, after_seconds: int = 0) -> dict[str, str]:
    """The annotations that make a pod's containers exit with `exit_code` `after_seconds` after it started."""
    if not 0 <= exit_code <= MAX_EXIT_CODE:
        raise ValueError(f"exit_code must be 0..{MAX_EXIT_CODE}, got {exit_code}")
    if after_seconds < 0:
        raise ValueError(f"after_seconds must be 0 or more, got {after_seconds}")
    annotations = {EXIT_CODE_ANNOTATION: str(exit_code)}
    if after_seconds:
        annotations[EXIT_AFTER_SECONDS_ANNOTATION] = str(after_seconds)
    return annotations


def node_ready_annotations(ready: bool) -> dict[str, str | None]:
    """A metadata patch that makes a fake node NotReady (False) or Ready again (removes the annotation)."""
    return {NODE_READY_ANNOTATION: None if ready else "false"}
