"""Upper bounds of the numbers in a MaaSJob spec, with the reason for each.

They are in the CRD, so the API server refuses what the models refuse, and nothing it accepts makes the planner
loop or allocate without bound. Each lies well above what a real cluster runs.
"""

from __future__ import annotations

INT32_MAX = 2**31 - 1
"""The scale subresource (`kubectl scale`) and core/v1 counters are int32."""
MAX_SAFE_INTEGER = 2**53 - 1
"""The widest bound a CRD can state for an integer (its bounds are float64), for numbers with no smaller
natural bound (seeds, toleration seconds): beyond int64 the API server would not read an integer at all."""
MAX_CLUSTER_PODS = 150_000
"""Kubernetes' tested limit: 150,000 pods in a cluster of at most 5,000 nodes (kubernetes.io, "Considerations
for large clusters"). A data-parallel replica is at least one pod, so no job has more replicas."""
MAX_CLUSTER_NODES = 5_000
"""Kubernetes' tested limit on nodes in one cluster."""
MAX_GPUS_PER_WORKER = 64
"""A worker's GPUs are on one node, and the densest servers hold 8 to 16 GPUs."""
MAX_GPU_BUDGET = MAX_CLUSTER_NODES * 16
"""A cluster of the largest tested size, made of 16-GPU servers."""
MAX_PROFILE_UNITS = 1_024
"""A unit is a layer or a named module; the deepest published transformers have a few hundred layers."""
MAX_TASK_HEADS = 64
"""Multi-task models have a handful of task heads; the bound keeps the heads rule's CEL cost in budget."""
MAX_UNIT_NAME_LENGTH = 128
"""Unit names are Python identifiers-like module keys."""
MAX_STAGES = MAX_PROFILE_UNITS
"""A pipeline stage holds at least one unit."""
MAX_BATCH_SIZE = 2**20
"""Samples per step per replica. The largest published batches (64k images for ResNet-50, a few thousand
sequences for language models) are global batches over many replicas; every divisor search stays short."""
MAX_STEPS = 10**9
"""A billion optimizer steps is years of training at any realistic step rate."""
MAX_SYNTHETIC_SAMPLES = 2**24
"""Every worker holds a permutation of all sample indices (8 bytes each): 2^24 samples take 128 MiB."""
MAX_SECONDS = INT32_MAX
"""Durations (68 years) stay within Python's datetime arithmetic in the operator."""
MAX_BACKOFF_SECONDS = 86_400
"""A restart delay of more than a day is a stopped job: suspend it instead."""
MAX_RESTARTS = 1_000
"""More restarts than this is a crash loop: fix the cause instead."""
MAX_EXIT_CODE = 255
"""A process exit status is 8 bits (128 + N for signal N)."""
MAX_UNIT_PARAMS = 2**40
"""About 1.1e12 parameters in one unit, more than whole published models."""
MAX_UNIT_FLOPS_PER_SAMPLE = 1e18
"""An exaFLOP per sample and unit takes an H100 over 15 minutes; sums over units and batches stay finite."""
MAX_UNIT_ACTIVATION_BYTES = 2**40
"""1 TiB of output per sample, beyond any GPU's memory."""
MAX_UNIT_TIME_MS = 86_400_000.0
"""A day per sample."""
