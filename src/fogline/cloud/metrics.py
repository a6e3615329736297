"""Prometheus metrics of the cloud tier, named in the spirit of Triton's ``nv_inference_*``.

Each server gets its own ``CollectorRegistry`` (so several servers in one test process never clash)
and, when a port is configured, its own HTTP endpoint serving ``/metrics``
(``fogline.serving.metrics_endpoint``, the agent's too).

| metric | type | labels | meaning |
| --- | --- | --- | --- |
| ``nv_inference_request_success_total`` | counter | model, version | requests answered |
| ``nv_inference_request_failure_total`` | counter | model, version, reason | requests that failed (reason = gRPC code name) |
| ``nv_inference_count_total`` | counter | model, version | rows (inferences) computed |
| ``nv_inference_exec_count_total`` | counter | model, version | model calls (batches) |
| ``nv_inference_queue_duration_seconds`` | histogram | model, version | time a request waited for the model |
| ``nv_inference_compute_duration_seconds`` | histogram | model, version | time of one model call (one batch) |
| ``nv_inference_batch_size`` | histogram | model, version | rows per model call |
| ``nv_inference_inflight_requests`` | gauge | model | requests accepted and not yet answered |
| ``nv_inference_pending_request_count`` | gauge | model | requests waiting in the batch queue |
| ``fogline_cloud_auth_failures_total`` | counter | reason | calls refused UNAUTHENTICATED (missing, malformed, unknown, revoked) |
| ``fogline_cloud_device_requests_total`` | counter | device | inference requests of each authenticated device |
| ``fogline_cloud_device_throttled_total`` | counter | device | requests refused past the per-device in-flight limit |
| ``fogline_cloud_model_swaps_total`` | counter | model | hot swaps to another version (SIGHUP) |
| ``fogline_cloud_model_load_failures_total`` | counter | model, version, reason | versions refused on a reload (the one in use stays) |
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class CloudMetrics:
    """The cloud's metric families in one registry, with small recording helpers."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._cache: dict[tuple[str, str], tuple] = {}
        r = self.registry
        mv = ["model", "version"]
        self.success = Counter("nv_inference_request_success", "Requests answered", mv, registry=r)
        self.failure = Counter(
            "nv_inference_request_failure", "Requests that failed", [*mv, "reason"], registry=r
        )
        self.inferences = Counter("nv_inference_count", "Rows (inferences) computed", mv, registry=r)
        self.executions = Counter("nv_inference_exec_count", "Model calls (batches) run", mv, registry=r)
        self.queue_time = Histogram(
            "nv_inference_queue_duration_seconds",
            "Time a request waited in the batch queue",
            mv,
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.compute_time = Histogram(
            "nv_inference_compute_duration_seconds",
            "Time of one model call (one batch)",
            mv,
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "nv_inference_batch_size", "Rows per model call", mv, buckets=_BATCH_BUCKETS, registry=r
        )
        self.inflight = Gauge(
            "nv_inference_inflight_requests", "Requests accepted and not yet answered", ["model"], registry=r
        )
        self.pending = Gauge(
            "nv_inference_pending_request_count", "Requests waiting in the batch queue", ["model"], registry=r
        )

        self.auth_failures = Counter(
            "fogline_cloud_auth_failures", "Calls refused UNAUTHENTICATED", ["reason"], registry=r
        )
        for reason in ("missing", "malformed", "unknown", "revoked"):
            self.auth_failures.labels(reason)
        self.device_requests = Counter(
            "fogline_cloud_device_requests",
            "Inference requests by authenticated device",
            ["device"],
            registry=r,
        )
        self.device_throttled = Counter(
            "fogline_cloud_device_throttled",
            "Requests refused past the per-device in-flight limit",
            ["device"],
            registry=r,
        )

        self.model_swaps = Counter("fogline_cloud_model_swaps", "Hot swaps to another model version",
                                   ["model"], registry=r)
        self.model_load_failures = Counter(
            "fogline_cloud_model_load_failures",
            "Model versions refused on a reload, by reason",
            ["model", "version", "reason"],
            registry=r,
        )

    # ------------------------------------------------------------------ recording

    def record_auth_failure(self, reason: str) -> None:
        self.auth_failures.labels(reason).inc()

    def _children(self, model: str, version: str) -> tuple:
        """The label-bound series of one model version (looked up once, then reused)."""
        key = (model, version)
        children = self._cache.get(key)
        if children is None:
            children = (
                self.success.labels(model, version),
                self.queue_time.labels(model, version),
                self.inferences.labels(model, version),
                self.executions.labels(model, version),
                self.batch_size.labels(model, version),
                self.compute_time.labels(model, version),
            )
            self._cache[key] = children
        return children

    def record_success(self, model: str, version: str, queue_s: float) -> None:
        success, queue_time, *_ = self._children(model, version)
        success.inc()
        queue_time.observe(queue_s)

    def record_failure(self, model: str, version: str, reason: str) -> None:
        self.failure.labels(model, version, reason).inc()

    def record_batch(self, model: str, version: str, rows: int, compute_s: float) -> None:
        _, _, inferences, executions, batch_size, compute_time = self._children(model, version)
        inferences.inc(rows)
        executions.inc()
        batch_size.observe(rows)
        compute_time.observe(compute_s)

    def render(self) -> bytes:
        """The text exposition format, as ``/metrics`` serves it."""
        return generate_latest(self.registry)
