"""Serve mode: HTTP on each replica's first-stage worker, requests batched into microbatches through the pipeline.

The first-stage process (pipeline rank 0, local rank 0) answers `POST /v1/predict`, `GET /healthz` (200 only
once a warm-up batch went through every stage, 503 while draining) and `GET /metrics`. Its main loop
gathers requests into a batch (up to serving.maxBatchSize samples, waiting at most maxBatchDelayMs after the
first), pads it to a bucket size (maas_api.batch.serving_buckets: powers of two, then maxBatchSize, so few
distinct shapes, each with its microbatch count) and broadcasts a control message
[command, bucket] over the replica's pipeline group; the other stages loop on that message, run the same
forward-only schedule, and the last stage sends the outputs back to the first. When idle the first stage
sends a heartbeat every few seconds so the waiting stages never hit the collective timeout. SIGTERM on the
first stage stops new requests, finishes the queued ones, tells the other stages to stop, then exits 0.
"""

from __future__ import annotations

import json
import math
import os
import queue
import threading
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from maas_api.batch import serving_buckets
from maas_api.contract import DEFAULT_PROGRESS_PORT, PROGRESS_PORT_ENV, ExitCode
from maas_api.spec import ServingSpec
from torch.distributed.pipelining.schedules import _PipelineSchedule

from maas_runtime.http_server import DEFAULT_MAX_BODY_BYTES, Handler, HttpServer, Response
from maas_runtime.model import InputSpec
from maas_runtime.parallel_dims import replica_port
from maas_runtime.pipeline import inference_schedule, pipeline_stages
from maas_runtime.progress import prometheus_text
from maas_runtime.stages import StageModule
from maas_runtime.worker import Worker

IDLE, RUN, STOP = 0, 1, 2
"""Control commands broadcast by the first stage."""
HEARTBEAT_SECONDS = 5.0
REQUEST_TIMEOUT_SECONDS = 120.0
JSON_BYTES_PER_NUMBER = 32
"""Room for one number in a request body: `-1.2345678901234567e-308, ` with spaces to spare."""


def _not_json(constant: str) -> float:
    raise ValueError(f"{constant} is not a JSON number")


def parse_inputs(body: bytes, spec: InputSpec, max_batch: int) -> torch.Tensor | str:
    """The inputs of a predict request, or why they are refused (whatever the client sent)."""
    usage = 'the body must be {"inputs": [input, ...]}'
    try:
        payload = json.loads(body, parse_constant=_not_json)
    except (ValueError, RecursionError) as error:  # RecursionError: absurdly deep nesting
        return f"{usage}: {type(error).__name__}: {error}"
    if not isinstance(payload, dict) or "inputs" not in payload:
        return usage
    try:
        inputs = torch.tensor(payload["inputs"])
    except Exception as error:  # ragged lists, strings, objects, integers beyond 64 bits
        return f"{usage}, each input a (nested) list of numbers of shape {list(spec.shape)} ({error})"
    if inputs.dim() == 0 or tuple(inputs.shape[1:]) != spec.shape or len(inputs) == 0:
        return f"each input must have shape {list(spec.shape)}, got {list(inputs.shape[1:])}"
    if inputs.dtype == torch.bool or (inputs.is_floating_point() and not spec.dtype.is_floating_point):
        return f"inputs must be {'numbers' if spec.dtype.is_floating_point else 'integers'}"
    if len(inputs) > max_batch:
        return f"at most serving.maxBatchSize={max_batch} inputs per request"
    if spec.high is not None and (inputs.min() < 0 or inputs.max() >= spec.high):
        return f"token ids must be in [0, {spec.high})"
    converted = inputs.to(spec.dtype)
    if converted.is_floating_point() and not bool(torch.isfinite(converted).all()):
        return f"inputs must be finite {spec.dtype} numbers"
    return converted


def max_body_bytes(spec: InputSpec, max_batch: int) -> int:
    """The largest predict request worth reading: max_batch inputs of generously written numbers, plus the
    room any request gets."""
    return DEFAULT_MAX_BODY_BYTES + max_batch * math.prod(spec.shape) * JSON_BYTES_PER_NUMBER


@dataclass
class PendingRequest:
    inputs: torch.Tensor
    done: threading.Event = field(default_factory=threading.Event)
    outputs: torch.Tensor | None = None


class Batcher:
    """Requests from the HTTP threads, taken by the pipeline loop in batches of at most max_batch samples."""

    def __init__(self, max_batch: int, max_delay_s: float) -> None:
        self.max_batch, self.max_delay_s = max_batch, max_delay_s
        self._queue: queue.Queue[PendingRequest] = queue.Queue()
        self._carry: PendingRequest | None = None

    def submit(self, request: PendingRequest) -> None:
        self._queue.put(request)

    def empty(self) -> bool:
        return self._carry is None and self._queue.empty()

    def depth(self) -> int:
        return self._queue.qsize() + (self._carry is not None)

    def _take(self, timeout: float) -> PendingRequest | None:
        if self._carry is not None:
            request, self._carry = self._carry, None
            return request
        try:
            return self._queue.get(timeout=max(timeout, 0.0)) if timeout > 0 else self._queue.get_nowait()
        except queue.Empty:
            return None

    def next_batch(self, wait_s: float) -> list[PendingRequest]:
        """Wait up to wait_s for a first request, then up to max_delay_s for more that fit."""
        first = self._take(wait_s)
        if first is None:
            return []
        batch, size = [first], len(first.inputs)
        deadline = time.monotonic() + self.max_delay_s
        while size < self.max_batch:
            request = self._take(deadline - time.monotonic())
            if request is None:
                break
            if size + len(request.inputs) > self.max_batch:
                self._carry = request
                break
            batch.append(request)
            size += len(request.inputs)
        return batch


class ServingPipeline:
    """One forward-only schedule per bucket size, built on first use (all stages build it in lockstep)."""

    def __init__(self, worker: Worker, modules: dict[int, StageModule], max_batch: int) -> None:
        self.worker, self.modules = worker, modules
        # Bucket size -> microbatch count, as the planner estimated them.
        self.microbatches = dict(serving_buckets(max_batch, worker.plan.microbatches))
        self._schedules: dict[int, _PipelineSchedule] = {}
        self.first_rank_is_last = worker.has_first_stage and worker.has_last_stage

    @property
    def buckets(self) -> list[int]:
        return sorted(self.microbatches)

    def _schedule(self, bucket: int) -> _PipelineSchedule:
        if bucket not in self._schedules:
            count = self.microbatches[bucket]
            shapes = self.worker.shapes(bucket // count, training=False)
            stages = pipeline_stages(self.modules, shapes, self.worker.device, self.worker.pp_group)
            self._schedules[bucket] = inference_schedule(stages, count)
        return self._schedules[bucket]

    def run(self, bucket: int, inputs: torch.Tensor | None) -> torch.Tensor | None:
        """Run one padded batch; returns the outputs on the first stage's process (None elsewhere)."""
        worker = self.worker
        with torch.no_grad():
            outputs: torch.Tensor | None = self._schedule(bucket).step(
                *([inputs] if inputs is not None else [])
            )
        if self.first_rank_is_last:
            return outputs
        group, last = worker.pp_group, worker.dims.pipeline_degree - 1
        if worker.has_last_stage:
            assert outputs is not None  # the last stage always has the merged outputs
            dist.send(outputs.contiguous(), group_dst=0, group=group)
            return None
        if worker.has_first_stage:
            shape = (bucket, *worker.model.output_shape)
            received = torch.empty(shape, dtype=worker.model.dtype, device=worker.device)
            dist.recv(received, group_src=last, group=group)
            return received
        return None


@dataclass
class ServeStats:
    ready: bool = False
    draining: bool = False
    requests: int = 0
    rejected: int = 0
    samples: int = 0
    batches: int = 0
    batch_seconds: float = 0.0
    in_flight: int = 0
    """Requests accepted and not answered yet (queued or in the pipeline): the autoscaling signal."""
    last_batch_fill: float = 0.0
    """Samples of the last batch over serving.maxBatchSize."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, **deltas: float) -> None:
        with self.lock:
            for key, value in deltas.items():
                setattr(self, key, getattr(self, key) + value)


class Frontend:
    """The HTTP side of the first stage: parses requests, queues them, waits for their outputs."""

    def __init__(self, worker: Worker, serving: ServingSpec, batcher: Batcher, stats: ServeStats) -> None:
        self.worker, self.serving, self.batcher, self.stats = worker, serving, batcher, stats

    def predict(self, body: bytes) -> Response:
        if not self.stats.ready or self.stats.draining:
            self.stats.add(rejected=1)
            return Response.json(503, {"error": "not ready" if not self.stats.ready else "shutting down"})
        inputs = parse_inputs(body, self.worker.model.input_spec, self.serving.max_batch_size)
        if isinstance(inputs, str):
            self.stats.add(rejected=1)
            return Response.json(400, {"error": inputs})
        request = PendingRequest(inputs)
        self.stats.add(in_flight=1)
        try:
            self.batcher.submit(request)
            answered = request.done.wait(REQUEST_TIMEOUT_SECONDS)
        finally:
            self.stats.add(in_flight=-1)
        if not answered or request.outputs is None:
            return Response.json(504, {"error": "the pipeline did not answer in time"})
        self.stats.add(requests=1, samples=len(inputs))
        outputs = request.outputs.float()
        if not bool(torch.isfinite(outputs).all()):
            return Response.json(500, {"error": "the model's outputs for these inputs are not finite"})
        return Response.json(200, {"outputs": outputs.tolist()})

    def healthz(self, _: bytes) -> Response:
        if self.stats.ready and not self.stats.draining:
            return Response.json(200, {"status": "ok"})
        return Response.json(503, {"status": "draining" if self.stats.draining else "starting"})

    def snapshot(self) -> dict[str, object]:
        s = self.stats
        return {
            "job": self.worker.plan.job,
            "replica": self.worker.coords.replica,
            "ready": s.ready,
            "draining": s.draining,
            "requests": s.requests,
            "rejected": s.rejected,
            "samples": s.samples,
            "batches": s.batches,
            "queueDepth": self.batcher.depth(),
            "inFlight": s.in_flight,
            "lastBatchFill": s.last_batch_fill,
        }

    def metrics(self, _: bytes) -> Response:
        s = self.stats
        rows = [
            (
                "maas_serve_ready",
                "gauge",
                "1 when every stage is up and not draining.",
                float(s.ready and not s.draining),
            ),
            ("maas_serve_requests_total", "counter", "Requests answered.", float(s.requests)),
            (
                "maas_serve_rejected_total",
                "counter",
                "Requests rejected (bad input, not ready).",
                float(s.rejected),
            ),
            ("maas_serve_samples_total", "counter", "Samples answered.", float(s.samples)),
            ("maas_serve_batches_total", "counter", "Batches run through the pipeline.", float(s.batches)),
            ("maas_serve_batch_seconds_total", "counter", "Time spent running batches.", s.batch_seconds),
            ("maas_serve_queue_depth", "gauge", "Requests waiting for a batch.", float(self.batcher.depth())),
            (
                "maas_serve_requests_in_flight",
                "gauge",
                "Requests accepted and not answered yet (the load signal for autoscaling).",
                float(s.in_flight),
            ),
            (
                "maas_serve_batch_fill",
                "gauge",
                "Samples of the last batch over serving.maxBatchSize.",
                s.last_batch_fill,
            ),
        ]
        labels = {"job": self.worker.plan.job, "replica": str(self.worker.coords.replica)}
        return Response.text(200, prometheus_text(rows, labels))

    def routes(self) -> dict[tuple[str, str], Handler]:
        return {
            ("POST", "/v1/predict"): self.predict,
            ("GET", "/healthz"): self.healthz,
            ("GET", "/metrics"): self.metrics,
            ("GET", "/progress"): lambda _: Response.json(200, self.snapshot()),
        }


def _control(worker: Worker, command: int = IDLE, bucket: int = 0) -> tuple[int, int]:
    message = torch.tensor([command, bucket], dtype=torch.int64, device=worker.device)
    dist.broadcast(message, group_src=0, group=worker.pp_group)
    return int(message[0]), int(message[1])


def _lead(worker: Worker, pipeline: ServingPipeline, serving: ServingSpec) -> None:
    """The first stage's loop: batch, broadcast, run, answer; drain and stop on SIGTERM."""
    batcher = Batcher(serving.max_batch_size, serving.max_batch_delay_ms / 1000)
    stats = ServeStats()
    frontend = Frontend(worker, serving, batcher, stats)
    servers: list[HttpServer] = []
    if worker.coords.local_rank == 0:
        routes = frontend.routes()
        replica = worker.coords.replica
        limit = max_body_bytes(worker.model.input_spec, serving.max_batch_size)
        servers.append(HttpServer(replica_port(serving.port, replica), routes, max_body_bytes=limit))
        progress_port = int(os.environ.get(PROGRESS_PORT_ENV) or DEFAULT_PROGRESS_PORT)
        if progress_port != serving.port:
            keep = {key: routes[key] for key in (("GET", "/metrics"), ("GET", "/progress"))}
            servers.append(HttpServer(replica_port(progress_port, replica), keep))
    sizes = pipeline.buckets
    multi = worker.dims.pipeline_degree > 1
    try:
        # Warm-up: one batch through every stage proves the whole pipeline is up.
        if multi:
            _control(worker, RUN, sizes[0])
        pipeline.run(sizes[0], worker.model.input_spec.zeros(sizes[0], worker.device))
        stats.ready = True
        microbatches = [pipeline.microbatches[size] for size in sizes]
        worker.log(
            "serving",
            port=servers[0].port if servers else None,
            buckets=sizes,
            microbatches=microbatches,
        )
        while True:
            if worker.terminate.is_set():
                stats.draining = True
            batch = batcher.next_batch(0.05 if stats.draining else HEARTBEAT_SECONDS)
            if not batch:
                if stats.draining and batcher.empty():
                    break
                if multi:
                    _control(worker, IDLE)
                continue
            started = time.perf_counter()
            inputs = torch.cat([request.inputs for request in batch])
            size = next(b for b in sizes if b >= len(inputs))
            padded = worker.model.input_spec.zeros(size, worker.device)
            padded[: len(inputs)] = inputs.to(worker.device)
            if multi:
                _control(worker, RUN, size)
            outputs = pipeline.run(size, padded)
            assert outputs is not None
            offset = 0
            for request in batch:
                request.outputs = outputs[offset : offset + len(request.inputs)].cpu()
                offset += len(request.inputs)
                request.done.set()
            stats.add(batches=1, batch_seconds=time.perf_counter() - started)
            stats.last_batch_fill = len(inputs) / serving.max_batch_size
        if multi:
            _control(worker, STOP)
        worker.log("drained", requests=stats.requests, batches=stats.batches)
    finally:
        for server in servers:
            server.close()


def _follow(worker: Worker, pipeline: ServingPipeline) -> None:
    """Every other stage: run what the first stage says until it says stop (SIGTERM waits for that)."""
    while True:
        command, bucket = _control(worker)
        if command == STOP:
            return
        if command == RUN:
            pipeline.run(bucket, None)


def serve(worker: Worker) -> ExitCode:
    assert worker.plan.serving is not None
    modules = worker.stage_modules
    for module in modules.values():
        module.eval()
    pipeline = ServingPipeline(worker, modules, worker.plan.serving.max_batch_size)
    if worker.coords.pipeline_rank == 0:
        _lead(worker, pipeline, worker.plan.serving)
    else:
        _follow(worker, pipeline)
    return ExitCode.SUCCESS
