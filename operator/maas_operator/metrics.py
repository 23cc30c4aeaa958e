"""Prometheus metrics of the operator (served on settings.metrics_port at /metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

JOBS = Gauge("maas_jobs", "MaaSJobs by phase, as last reconciled.", ["phase"])
RECONCILE_SECONDS = Histogram(
    "maas_reconcile_duration_seconds",
    "Time of one reconcile of one job (decision and API calls).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
RECONCILE_ERRORS = Counter("maas_reconcile_errors_total", "Reconciles that ended in an error (retried).")
PLANNING_SECONDS = Histogram(
    "maas_planning_duration_seconds",
    "Time of planning a job (split and placement) inside a reconcile.",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5),
)
RESTARTS = Counter("maas_gang_restarts_total", "Gang restarts by cause.", ["cause"])
API_REQUESTS = Counter(
    "maas_api_requests_total", "Requests the operator sent to the API server.", ["verb", "kind"]
)
API_THROTTLED = Counter(
    "maas_api_throttled_total",
    "Requests the API server turned away with 429 (priority and fairness), sent again after Retry-After.",
    ["verb", "kind"],
)
QUEUE_DEPTH = Gauge("maas_workqueue_depth", "Jobs waiting for a reconcile.")


def serve(port: int) -> None:
    """Starts the metrics HTTP server in a daemon thread (port 0: no server)."""
    if port:
        start_http_server(port)
