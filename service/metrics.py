"""Prometheus metrics, one registry per app so tests can build many apps."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_TOKEN_BUCKETS = (16, 64, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter("darl_requests", "HTTP requests by route and status", ["route", "status"], registry=r)
        self.request_duration = Histogram(
            "darl_request_duration_seconds",
            "HTTP request latency",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge("darl_queue_depth_pairs", "Pairs waiting in the batch queue", registry=r)
        self.queue_capacity = Gauge("darl_queue_capacity_pairs", "Queue bound in pairs", registry=r)
        self.queue_wait = Histogram(
            "darl_queue_wait_seconds",
            "Time a pair waits before its batch runs",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_duration = Histogram(
            "darl_inference_duration_seconds",
            "Engine time per batch",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_pairs = Histogram("darl_batch_pairs", "Pairs per engine batch", buckets=_SIZE_BUCKETS, registry=r)
        self.batch_tokens = Histogram(
            "darl_batch_tokens", "Tokens per engine batch", buckets=_TOKEN_BUCKETS, registry=r
        )
        self.failures = Counter("darl_failures", "Failures by type", ["type"], registry=r)
        self.pairs = Counter("darl_pairs", "Pairs scored", registry=r)
        self.dropped_pairs = Counter(
            "darl_dropped_pairs", "Queued pairs dropped before compute (cancelled or expired)", registry=r
        )
        self.model_info = Gauge("darl_model_info", "Served model", ["name", "version", "engine", "dtype"], registry=r)
        self.engine_ready = Gauge("darl_engine_ready", "1 when the engine passed warm-up", registry=r)
