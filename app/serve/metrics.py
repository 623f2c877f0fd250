"""Prometheus metrics of ``omnifuse serve``, gathered across its processes.

The HTTP processes count requests and time them; the model worker (another process) records the batch sizes it ran.
prometheus_client's multiprocess mode joins them: every process writes its samples to files in one folder
(``PROMETHEUS_MULTIPROC_DIR``, set by ``omnifuse serve`` before any process imports prometheus_client), and
``GET /metrics`` reads them all.
"""

from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest, multiprocess

ENV = "PROMETHEUS_MULTIPROC_DIR"

REQUESTS = Counter("omnifuse_requests", "HTTP requests answered, by path and status code", ["path", "status"])
LATENCY = Histogram(
    "omnifuse_request_latency_seconds",
    "Time from a request's arrival to its response, POST /predict",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
BATCH_SIZE = Histogram(
    "omnifuse_batch_size",
    "Requests per model batch (dynamic batching merges concurrent requests)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
BATCH_SECONDS = Histogram(
    "omnifuse_batch_seconds",
    "Model time per batch (decode, encode, generate)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)


class WorkerMetrics:
    """What the model worker records per batch."""

    def observe_batch(self, size: int, seconds: float) -> None:
        BATCH_SIZE.observe(size)
        BATCH_SECONDS.observe(seconds)


def exposition() -> tuple[bytes, str]:
    """The Prometheus text format of every process's metrics (or of this process alone outside multiprocess mode)."""
    if os.environ.get(ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
