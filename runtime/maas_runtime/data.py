"""Training samples: synthetic (deterministic from a seed) or a file on a volume, and who reads which.

Samples are read in a global stream: epoch e visits every sample once in a permutation seeded by (seed, e).
Each step every replica reads training.batchSize samples, split evenly over its worker's processes; with
`Shard` the replicas read consecutive slices and the stream advances by batchSize * replicas, with
`Replicate` they read the same slice and it advances by batchSize (maas_api.batch has the arithmetic).
The stream position (samples seen) is the data position a checkpoint stores, so resuming at any
data-parallel degree continues exactly where training stopped.

Synthetic samples are generated one by one from (seed, index), so a stage can produce only what it needs
(the first stage inputs, the last stage targets) and memory does not grow with the sample count.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from maas_api.plan import Plan
from maas_api.spec import Loss

from maas_runtime.errors import PermanentError
from maas_runtime.model import InputSpec


@dataclass(frozen=True)
class TargetSpec:
    """One sample's training target."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    classes: int | None = None
    """Number of classes (CrossEntropy)."""
    next_token: bool = False
    """Targets are the inputs shifted by one token (language modelling)."""


def target_spec(loss: Loss, input_spec: InputSpec, output_shape: tuple[int, ...]) -> TargetSpec:
    """What the loss compares the model's per-sample output with."""
    if loss == Loss.MSE:
        return TargetSpec(shape=output_shape, dtype=torch.float32)
    classes = output_shape[-1]
    next_token = (
        not input_spec.dtype.is_floating_point
        and input_spec.high == classes
        and output_shape[:-1] == input_spec.shape
    )
    return TargetSpec(shape=output_shape[:-1], dtype=torch.int64, classes=classes, next_token=next_token)


def _seed(*parts: int) -> int:
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


class Samples(Protocol):
    size: int

    def inputs(self, indices: torch.Tensor) -> torch.Tensor: ...

    def targets(self, indices: torch.Tensor) -> torch.Tensor: ...


SYNTHETIC_CACHE_BYTES = 256 * 2**20
"""Synthetic sets up to this size keep every sample once generated (per process, only what it reads)."""


class SyntheticSamples:
    """Random samples; sample i is the same on every rank, run and data-parallel degree."""

    def __init__(self, seed: int, size: int, input_spec: InputSpec, target: TargetSpec) -> None:
        self.seed, self.size, self.input_spec, self.target = seed, size, input_spec, target
        sample_bytes = _numel(input_spec.shape) * input_spec.dtype.itemsize + _numel(target.shape) * 8
        self._cached = size * sample_bytes <= SYNTHETIC_CACHE_BYTES
        # Per stream (0 inputs, 1 targets): all samples in one tensor, filled as they are first read, so a
        # step's batch is one indexing op instead of a Python loop over its samples. Untouched rows of the
        # (uninitialised) tensor are never written, so memory grows only with the samples this process reads.
        self._stores: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def _generator(self, index: int, stream: int) -> torch.Generator:
        return torch.Generator().manual_seed(_seed(self.seed, index, stream))

    def _tokens(self, index: int) -> torch.Tensor:
        # Language modelling: one sequence one token longer than the input; targets are it shifted by one.
        length = (*self.input_spec.shape[:-1], self.input_spec.shape[-1] + 1)
        high = self.input_spec.high or 2
        return torch.randint(high, length, generator=self._generator(index, 0))

    def _input(self, index: int) -> torch.Tensor:
        spec = self.input_spec
        if self.target.next_token:
            return self._tokens(index)[..., :-1]
        if spec.dtype.is_floating_point:
            return torch.randn(spec.shape, generator=self._generator(index, 0)).to(spec.dtype)
        return torch.randint(
            spec.high or 2, spec.shape, generator=self._generator(index, 0), dtype=spec.dtype
        )

    def _target(self, index: int) -> torch.Tensor:
        if self.target.next_token:
            return self._tokens(index)[..., 1:]
        if self.target.classes is not None:
            return torch.randint(self.target.classes, self.target.shape, generator=self._generator(index, 1))
        return torch.randn(self.target.shape, generator=self._generator(index, 1))

    def _sample(self, index: int, stream: int) -> torch.Tensor:
        return self._input(index) if stream == 0 else self._target(index)

    def _gather(self, indices: torch.Tensor, stream: int) -> torch.Tensor:
        if not self._cached:
            return torch.stack([self._sample(i, stream) for i in indices.tolist()])
        if stream not in self._stores:
            first = self._sample(0, stream)
            store = torch.empty((self.size, *first.shape), dtype=first.dtype)
            store[0] = first
            filled = torch.zeros(self.size, dtype=torch.bool)
            filled[0] = True
            self._stores[stream] = store, filled
        store, filled = self._stores[stream]
        missing = sorted(set(indices[~filled[indices]].tolist()))
        for index in missing:
            store[index] = self._sample(index, stream)
        filled[missing] = True
        return store[indices]

    def inputs(self, indices: torch.Tensor) -> torch.Tensor:
        return self._gather(indices, 0)

    def targets(self, indices: torch.Tensor) -> torch.Tensor:
        return self._gather(indices, 1)


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for n in shape:
        count *= n
    return count


class FileSamples:
    """`{"inputs": Tensor, "targets": Tensor}` saved with torch.save, memory-mapped."""

    def __init__(self, path: Path) -> None:
        try:
            content = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as error:
            raise PermanentError(
                "plan.data.path", f"cannot load {path} ({type(error).__name__}: {error})"
            ) from error
        if not (
            isinstance(content, dict)
            and isinstance(content.get("inputs"), torch.Tensor)
            and isinstance(content.get("targets"), torch.Tensor)
        ):
            raise PermanentError(
                "plan.data.path", f"{path} must hold {{'inputs': Tensor, 'targets': Tensor}}"
            )
        self._inputs, self._targets = content["inputs"], content["targets"]
        if len(self._inputs) != len(self._targets) or len(self._inputs) == 0:
            raise PermanentError(
                "plan.data.path",
                f"{path}: inputs ({len(self._inputs)}) and targets ({len(self._targets)}) need the same,"
                " non-zero number of samples",
            )
        self.size = len(self._inputs)

    @property
    def input_spec(self) -> InputSpec:
        return InputSpec(shape=tuple(self._inputs.shape[1:]), dtype=self._inputs.dtype)

    def inputs(self, indices: torch.Tensor) -> torch.Tensor:
        picked: torch.Tensor = self._inputs[indices]
        return picked

    def targets(self, indices: torch.Tensor) -> torch.Tensor:
        picked: torch.Tensor = self._targets[indices]
        return picked


def data_file(plan: Plan) -> Path | None:
    """The data file of the plan (None for synthetic data); missing files are a PermanentError."""
    if plan.data.path is None:
        return None
    mount = Path(plan.data.volume.mount_path) if plan.data.volume else Path("/")
    path = mount / plan.data.path
    if not path.is_file():
        claim = f" (claim {plan.data.volume.claim_name} at {mount})" if plan.data.volume else ""
        raise PermanentError("plan.data.path", f"{path} does not exist{claim}")
    return path


def open_samples(plan: Plan, input_spec: InputSpec, target: TargetSpec) -> Samples:
    path = data_file(plan)
    if path is not None:
        return FileSamples(path)
    synthetic = plan.data.synthetic
    seed, size = (synthetic.seed, synthetic.samples) if synthetic else (0, 1024)
    return SyntheticSamples(seed, size, input_spec, target)


def check_file_inputs(samples: FileSamples, expected: InputSpec) -> None:
    if samples.input_spec.shape != expected.shape:
        raise PermanentError(
            "plan.data.path",
            f"samples have shape {list(samples.input_spec.shape)}, the model takes {list(expected.shape)}",
        )


class SampleOrder:
    """Stream position -> sample index: a fresh permutation of all samples each epoch."""

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed = size, seed
        self._epoch, self._permutation = -1, torch.empty(0, dtype=torch.int64)

    def _epoch_permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(_seed(self.seed, epoch, 2))
            self._epoch, self._permutation = epoch, torch.randperm(self.size, generator=generator)
        return self._permutation

    def indices(self, start: int, count: int) -> torch.Tensor:
        parts, position = [], start
        while position < start + count:
            epoch, offset = divmod(position, self.size)
            take = min(self.size - offset, start + count - position)
            parts.append(self._epoch_permutation(epoch)[offset : offset + take])
            position += take
        return torch.cat(parts)
