"""Training progress for the `/progress` (JSON) and `/metrics` (Prometheus text) endpoints on rank 0.

The endpoint outlives training: after the last step rank 0 keeps it up until `/progress` answered once with
phase Finished (or $MAAS_PROGRESS_LINGER_SECONDS passed), so a poller sees the end, not a closed port.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field

from maas_api.contract import PROGRESS_FINISHED, PROGRESS_PATH, ProgressReport

from maas_runtime.errors import PermanentError
from maas_runtime.http_server import HttpServer, Response


def prometheus_text(metrics: list[tuple[str, str, str, float]], labels: dict[str, str]) -> str:
    """Prometheus exposition text for (name, type, help, value) rows, all with the same labels."""
    label_text = ",".join(f'{key}="{value}"' for key, value in labels.items())
    lines = []
    for name, kind, help_text, value in metrics:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name}{{{label_text}}} {value!r}"]
    return "\n".join(lines) + "\n"


LINGER_ENV = "MAAS_PROGRESS_LINGER_SECONDS"
"""How long rank 0 keeps `/progress` up after training finished, until someone read the final state."""
DEFAULT_LINGER_SECONDS = 30.0


def linger_seconds() -> float:
    raw = os.environ.get(LINGER_ENV) or str(DEFAULT_LINGER_SECONDS)
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < float("inf"):
        raise PermanentError(LINGER_ENV, f"{raw!r} is not a number of seconds")
    return seconds


@dataclass
class TrainProgress:
    """Written by the training loop, read by the HTTP thread (under the lock)."""

    job: str
    namespace: str
    total_steps: int
    phase: str = "Starting"
    step: int = 0
    loss: float | None = None
    samples_per_second: float = 0.0
    samples_seen: int = 0
    last_checkpoint_step: int | None = None
    started: float = field(default_factory=time.time)
    final_state_served: threading.Event = field(default_factory=threading.Event, repr=False)
    """Set once `/progress` answered with phase Finished."""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def update(self, **changes: object) -> None:
        with self._lock:
            for key, value in changes.items():
                setattr(self, key, value)

    def snapshot(self) -> dict[str, object]:
        with self._lock:
            if self.phase == PROGRESS_FINISHED:
                self.final_state_served.set()
            report = ProgressReport(
                job=self.job,
                namespace=self.namespace,
                phase=self.phase,
                step=self.step,
                total_steps=self.total_steps,
                loss=self.loss,
                samples_per_second=self.samples_per_second,
                samples_seen=self.samples_seen,
                last_checkpoint_step=self.last_checkpoint_step,
                elapsed_seconds=time.time() - self.started,
            )
        return report.model_dump(mode="json", by_alias=True)

    def metrics(self) -> str:
        s = self.snapshot()
        rows: list[tuple[str, str, str, float]] = [
            ("maas_train_step", "gauge", "Optimizer steps completed.", float(s["step"])),  # type: ignore[arg-type]
            ("maas_train_total_steps", "gauge", "Optimizer steps to run.", float(self.total_steps)),
            (
                "maas_train_samples_per_second",
                "gauge",
                "Samples per second, all replicas.",
                self.samples_per_second,
            ),
            (
                "maas_train_samples_total",
                "counter",
                "Samples consumed, all replicas.",
                float(self.samples_seen),
            ),
        ]
        if self.loss is not None:
            rows.append(("maas_train_loss", "gauge", "Loss of the last step, mean over replicas.", self.loss))
        if self.last_checkpoint_step is not None:
            rows.append(
                (
                    "maas_train_checkpoint_step",
                    "gauge",
                    "Step of the last checkpoint.",
                    float(self.last_checkpoint_step),
                )
            )
        return prometheus_text(rows, {"job": self.job, "namespace": self.namespace})


def serve_progress(progress: TrainProgress, port: int) -> HttpServer:
    return HttpServer(
        port,
        {
            ("GET", PROGRESS_PATH): lambda _: Response.json(200, progress.snapshot()),
            ("GET", "/metrics"): lambda _: Response.text(200, progress.metrics()),
        },
    )
