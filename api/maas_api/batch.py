"""What one process runs per step: the batch arithmetic the planner estimates and the runtime executes.

`training.batchSize` is the number of samples per step of one data-parallel replica (one pipeline). A
worker runs one process per GPU and each process is a pipeline of its own over the same stages, so the
replica's batch is split evenly over a worker's processes, and each process cuts its share into the plan's
microbatches. Every replica reads its own batch (distribution Shard) or the same one (Replicate).

Serving batches requests up to `serving.maxBatchSize` samples and pads a batch to a bucket: the powers of
two below maxBatchSize, then maxBatchSize itself. A bucket runs as the largest divisor of its size that is
at most the plan's microbatches (so a full batch runs exactly the plan's microbatches). Only the first
process of a worker takes requests; the others hold the same stages idle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from maas_api.spec import MaaSJobSpec

DEFAULT_BATCH_SIZE = 32
"""Default of training.batchSize and serving.maxBatchSize (CEL rules use it when the field is absent)."""


class BatchError(ValueError):
    """A batch that does not split evenly; the message names the fields and the fix."""


@dataclass(frozen=True)
class ProcessBatch:
    """One process's share of a step (Train) or of the largest batch (Serve)."""

    samples: int
    """Samples the process runs per step (Train), or at most per batch (Serve)."""
    microbatches: int
    """Microbatches those samples are cut into (Serve: for the bucket with the largest microbatch)."""
    microbatch_size: int
    """Samples in the largest microbatch: what sets the activations held per microbatch."""


def replica_batch(spec: MaaSJobSpec) -> int:
    """Samples per step of one replica: training.batchSize, or serving.maxBatchSize when serving."""
    if spec.mode == "Serve":
        return spec.serving.max_batch_size if spec.serving else DEFAULT_BATCH_SIZE
    return spec.training.batch_size if spec.training else DEFAULT_BATCH_SIZE


def replica_batch_field(spec: MaaSJobSpec) -> str:
    """The spec field (below `spec`) that `replica_batch` reads."""
    return "serving.maxBatchSize" if spec.mode == "Serve" else "training.batchSize"


def _largest_divisor_at_most(value: int, limit: int) -> int:
    if limit >= value:
        return value
    if value % limit == 0:
        return limit
    if value & (value - 1) == 0:  # a power of two: its divisors are the smaller powers of two
        return 1 << (limit.bit_length() - 1)
    small = [d for d in range(1, int(value**0.5) + 1) if value % d == 0]
    return max(d for d in (*small, *(value // d for d in small)) if d <= limit)


def serving_buckets(max_batch: int, microbatches: int) -> list[tuple[int, int]]:
    """(padded batch size, microbatch count) for every bucket the serving runtime may run."""
    sizes = [1]
    while sizes[-1] * 2 < max_batch:
        sizes.append(sizes[-1] * 2)
    if sizes[-1] != max_batch:
        sizes.append(max_batch)
    return [(size, _largest_divisor_at_most(size, microbatches)) for size in sizes]


def process_batch(
    serving: bool, replica_batch: int, processes_per_worker: int, microbatches: int
) -> ProcessBatch:
    """The batch of one process for a replica batch (training.batchSize or serving.maxBatchSize).

    Raises BatchError when a training batch does not split into equal per-process microbatches.
    """
    if serving:
        bucket, count = max(serving_buckets(replica_batch, microbatches), key=lambda b: (b[0] // b[1], b[0]))
        return ProcessBatch(samples=replica_batch, microbatches=count, microbatch_size=bucket // count)
    if replica_batch % (processes_per_worker * microbatches):
        raise BatchError(
            f"training.batchSize {replica_batch} does not split into {processes_per_worker} process(es) per"
            f" worker (resources.gpus) x {microbatches} microbatches (parallelism.microbatches): make it a"
            f" multiple of {processes_per_worker * microbatches}"
        )
    samples = replica_batch // processes_per_worker
    return ProcessBatch(samples=samples, microbatches=microbatches, microbatch_size=samples // microbatches)


def samples_per_step(replica_batch: int, replicas: int, shard: bool) -> int:
    """Samples the whole job consumes per step: every replica its own batch (Shard) or one batch (Replicate)."""
    return replica_batch * replicas if shard else replica_batch


def first_sample(samples_seen: int, process_samples: int, dp_rank: int, local_rank: int, shard: bool) -> int:
    """Where a process's samples of this step start in the sample stream (it reads `process_samples`).

    `dp_rank` numbers the processes holding the same stages, replica-major (replica * processes per worker
    + local rank): with Shard each takes its own slice; with Replicate every replica reads the same batch
    and only a worker's processes split it.
    """
    slot = dp_rank if shard else local_rank
    return samples_seen + slot * process_samples
