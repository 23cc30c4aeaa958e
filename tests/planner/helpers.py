"""Small builders shared by the planner tests: jobs, profiles and nodes as plain data."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from maas_api import MaaSJob, parse_maasjob
from maas_api.plan import ModelProfile
from maas_api.spec import UnitProfile
from maas_operator.planner.cluster import Node, Taint

H100 = "NVIDIA-H100-80GB-HBM3"
A100 = "NVIDIA-A100-SXM4-80GB"
RACK = "topology.maas.dev/rack"
BLOCK = "topology.maas.dev/block"


def job(name: str = "job", **spec: Any) -> MaaSJob:
    """A MaaSJob from spec fields in wire form (camelCase); Train on the LargeModel unless given."""
    body: dict[str, Any] = {"mode": "Train", "model": {"catalog": "LargeModel"}, **spec}
    return parse_maasjob(
        {"apiVersion": "maas.dev/v1alpha1", "kind": "MaaSJob", "metadata": {"name": name}, "spec": body}
    )


def profile(
    *costs: float, params: int = 10, activation: int = 4, groups: list[str | None] | None = None
) -> ModelProfile:
    """Units u0..un-1 with the given flops (params and activation bytes the same for all unless given)."""
    return ModelProfile(
        units=[
            UnitProfile(
                name=f"u{i}",
                group=groups[i] if groups else None,
                params=params,
                flops_per_sample=cost,
                activation_bytes_per_sample=activation,
            )
            for i, cost in enumerate(costs)
        ]
    )


def node(
    name: str,
    gpus: int = 8,
    rack: str | None = "rack-0",
    block: str | None = "block-0",
    product: str = H100,
    memory_mib: int | None = 81559,
    taints: tuple[Taint, ...] = (),
    unschedulable: bool = False,
    used: int = 0,
    **labels: str,
) -> Node:
    all_labels = {"kubernetes.io/hostname": name, "nvidia.com/gpu.product": product, **labels}
    if rack:
        all_labels[RACK] = rack
    if block:
        all_labels[BLOCK] = block
    if memory_mib is not None:
        all_labels["nvidia.com/gpu.memory"] = str(memory_mib)
    return Node(
        name=name, gpus=gpus, labels=all_labels, taints=taints, unschedulable=unschedulable, used_gpus=used
    )


def node_object(name: str, gpus: int = 8, rack: str = "rack-0", **extra: Any) -> dict[str, Any]:
    """A Node as the API server returns it."""
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {RACK: rack, BLOCK: "block-0", "nvidia.com/gpu.product": H100}},
        "spec": extra.get("spec", {}),
        "status": {"allocatable": {"nvidia.com/gpu": str(gpus), "cpu": "64"}},
    }


def racks(count: int, nodes_per_rack: int, gpus: int = 8, racks_per_block: int = 2) -> list[Node]:
    return [
        node(
            f"n{r:02d}-{i:02d}",
            gpus=gpus,
            rack=f"rack-{r}",
            block=f"block-{r // racks_per_block}",
        )
        for r in range(count)
        for i in range(nodes_per_rack)
    ]


@contextmanager
def time_bound(seconds: float) -> Iterator[None]:
    """Fail with TimeoutError when the block runs longer than `seconds` (a hang fails fast, not at the
    suite's timeout). Uses SIGALRM, so only in the main thread of a Unix process."""

    def expire(signum: int, frame: FrameType | None) -> None:
        raise TimeoutError(f"took longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
