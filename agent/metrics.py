"""The agent's Prometheus metrics, on a registry of its own, and the HTTP endpoint that serves them.

One ``AgentMetrics`` object per agent process. The rest of the agent calls its small methods
(``observe_request``, ``observe_latency``, ``set_rtt`` ...) so label names and values stay consistent;
nothing outside this module creates metrics. Series (all prefixed ``fogline_agent_``):

| metric | type | labels | meaning |
| --- | --- | --- | --- |
| ``requests_total`` | counter | model, tier, reason | answered requests by serving tier and route reason |
| ``errors_total`` | counter | model, code | requests answered with a gRPC error (code name) |
| ``fallbacks_total`` | counter | model, from_tier, to_tier | preferred tier failed or was late; the other answered |
| ``hedges_total`` | counter | model, outcome | hedged requests: ``won`` = the hedge (edge) answered first, ``lost`` = the cloud did |
| ``escalations_total`` | counter | model | cascade: low-confidence edge answers sent to the cloud |
| ``edge_latency_seconds`` | histogram | model | edge inference time (queue + run) |
| ``cloud_latency_seconds`` | histogram | model | cloud round trip as the agent saw it |
| ``request_latency_seconds`` | histogram | model, tier | whole request, as the client saw it |
| ``cloud_rtt_seconds`` | gauge | stat | network RTT estimate: ``smoothed`` and ``p95`` (or what the estimator reports) |
| ``cloud_link_state`` | gauge | state | the cloud link: connecting, ready, degraded, down |
| ``queue_depth`` | gauge | model | edge jobs waiting or running |
| ``inflight_requests`` | gauge | - | client requests being handled |
| ``cpu_load_ratio`` | gauge | - | host CPU use (0..1, smoothed) the router compares with ``load.cpu_high_percent`` |
| ``config_revision`` | gauge | - | revision of the fleet config in use (bumps on every good reload) |
| ``config`` | info | revision, sha256, path | which config file is in use |
| ``config_reloads_total`` | counter | result | SIGHUP reloads: ``ok`` or ``error`` |
| ``build`` | info | version, device | what runs where |

Start the endpoint with ``start_metrics_server(port)`` (``/metrics``, plain text exposition).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.exposition import start_http_server

log = logging.getLogger(__name__)

NAMESPACE = "fogline_agent"
TIERS = ("edge", "cloud")
LINK_STATES = ("connecting", "ready", "degraded", "down")
#: Latency buckets in seconds: sub-millisecond edge answers up to multi-second cloud stalls.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _check_tier(tier: str) -> None:
    if tier not in TIERS:
        raise ValueError(f"tier must be one of {', '.join(TIERS)}, got {tier!r}")


class AgentMetrics:
    """Every metric the agent exports, registered on ``self.registry`` (never the global one, so
    several agents in one test process do not collide)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True) if registry is None else registry
        r, ns = self.registry, NAMESPACE
        self.requests = Counter("requests", "Answered requests by model, serving tier and route reason.",
                                ["model", "tier", "reason"], namespace=ns, registry=r)
        self.errors = Counter("errors", "Requests answered with a gRPC error, by status code name.",
                              ["model", "code"], namespace=ns, registry=r)
        self.fallbacks = Counter("fallbacks", "Requests whose preferred tier failed or was too slow.",
                                 ["model", "from_tier", "to_tier"], namespace=ns, registry=r)
        self.hedges = Counter("hedges", "Hedged requests: won = the edge hedge answered first, lost = the "
                              "cloud did.", ["model", "outcome"], namespace=ns, registry=r)
        self.escalations = Counter("escalations", "Cascade escalations of low-confidence edge answers.",
                                   ["model"], namespace=ns, registry=r)
        self.edge_latency = Histogram("edge_latency_seconds", "Edge inference time, queueing included.",
                                      ["model"], buckets=LATENCY_BUCKETS, namespace=ns, registry=r)
        self.cloud_latency = Histogram("cloud_latency_seconds", "Cloud round trip as seen by the agent.",
                                       ["model"], buckets=LATENCY_BUCKETS, namespace=ns, registry=r)
        self.request_latency = Histogram("request_latency_seconds", "Whole request time by serving tier.",
                                         ["model", "tier"], buckets=LATENCY_BUCKETS, namespace=ns, registry=r)
        self.rtt = Gauge("cloud_rtt_seconds", "Network round-trip estimate to the cloud.", ["stat"],
                         namespace=ns, registry=r)
        self.link_state = Gauge("cloud_link_state", "State of the long-lived stream to the cloud (1 = current).",
                                ["state"], namespace=ns, registry=r)
        self.queue_depth = Gauge("queue_depth", "Edge jobs waiting or running, per model.", ["model"],
                                 namespace=ns, registry=r)
        self.inflight = Gauge("inflight_requests", "Client requests being handled.", namespace=ns, registry=r)
        self.cpu_load = Gauge("cpu_load_ratio", "Host CPU use (0..1, smoothed) as the router sees it.",
                              namespace=ns, registry=r)
        self.config_revision = Gauge("config_revision", "Revision of the fleet config in use.",
                                     namespace=ns, registry=r)
        self.config_info = Info("config", "The fleet config in use.", namespace=ns, registry=r)
        self.config_reloads = Counter("config_reloads", "Config reloads (SIGHUP) by result.", ["result"],
                                      namespace=ns, registry=r)
        self.build = Info("build", "Agent version and device id.", namespace=ns, registry=r)
        self.set_link_state("connecting")

    # -- requests ---------------------------------------------------------------------------------

    def observe_request(self, model: str, tier: str, reason: str, latency_s: float | None = None,
                        *, fallback_from: str | None = None) -> None:
        """One answered request: served by ``tier`` for ``reason`` (the response's ``route_reason``)."""
        _check_tier(tier)
        self.requests.labels(model, tier, reason).inc()
        if latency_s is not None:
            self.request_latency.labels(model, tier).observe(latency_s)
        if fallback_from is not None:
            _check_tier(fallback_from)
            self.fallbacks.labels(model, fallback_from, tier).inc()

    def observe_error(self, model: str, code: str) -> None:
        """A request answered with an error; ``code`` is the status name, e.g. ``INVALID_ARGUMENT``."""
        self.errors.labels(model, code).inc()

    def observe_latency(self, model: str, tier: str, seconds: float) -> None:
        """Time one tier took for one job (edge: queue + run; cloud: round trip)."""
        _check_tier(tier)
        (self.edge_latency if tier == "edge" else self.cloud_latency).labels(model).observe(seconds)

    def observe_hedge(self, model: str, won: bool) -> None:
        """A hedged request finished; ``won`` when the edge hedge answered before the cloud."""
        self.hedges.labels(model, "won" if won else "lost").inc()

    def observe_escalation(self, model: str) -> None:
        self.escalations.labels(model).inc()

    def declare_models(self, models: list[str] | tuple[str, ...]) -> None:
        """Publish zero-valued series for every model's hedge outcomes, fallbacks and escalations, so a
        dashboard (and ``rate()``) sees them before the first event rather than a missing series."""
        for model in models:
            for outcome in ("won", "lost"):
                self.hedges.labels(model, outcome)
            for a, b in (("cloud", "edge"), ("edge", "cloud")):
                self.fallbacks.labels(model, a, b)
            self.escalations.labels(model)

    # -- state ------------------------------------------------------------------------------------

    def set_rtt(self, smoothed_s: float | None = None, p95_s: float | None = None, **others: float) -> None:
        """Publish the RTT estimator's view (seconds); ``others`` add stats like ``p99=...``."""
        for stat, value in {"smoothed": smoothed_s, "p95": p95_s, **others}.items():
            if value is not None:
                self.rtt.labels(stat).set(value)

    def set_link_state(self, state: str) -> None:
        if state not in LINK_STATES:
            raise ValueError(f"link state must be one of {', '.join(LINK_STATES)}, got {state!r}")
        for name in LINK_STATES:
            self.link_state.labels(name).set(1 if name == state else 0)

    def set_queue_depth(self, model: str, depth: int) -> None:
        self.queue_depth.labels(model).set(depth)

    def set_cpu_load(self, load: float | None) -> None:
        """The CPU monitor's reading (0..1); None (not measured yet) leaves the gauge as it was."""
        if load is not None:
            self.cpu_load.set(load)

    def set_config(self, revision: int, *, sha256: str = "", path: str = "") -> None:
        """The config in use changed (start or a good reload)."""
        self.config_revision.set(revision)
        self.config_info.info({"revision": str(revision), "sha256": sha256, "path": path})

    def observe_reload(self, ok: bool) -> None:
        self.config_reloads.labels("ok" if ok else "error").inc()

    def set_build(self, version: str, device: str) -> None:
        self.build.info({"version": version, "device": device})


@dataclass
class MetricsServer:
    """A running ``/metrics`` endpoint; ``port`` is the real port when 0 was asked for."""

    host: str
    port: int
    _httpd: object
    _thread: object

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def stop(self) -> None:
        self._httpd.shutdown()  # type: ignore[attr-defined]
        self._httpd.server_close()  # type: ignore[attr-defined]
        self._thread.join(5)  # type: ignore[attr-defined]


def start_metrics_server(port: int, addr: str = "127.0.0.1", *,
                         registry: CollectorRegistry | AgentMetrics | None = None) -> MetricsServer:
    """Serve ``registry`` (an ``AgentMetrics`` or a registry) over HTTP from a daemon thread.

    Binds to loopback by default: expose metrics to a scraper on purpose (``addr="0.0.0.0"``).
    Raises OSError when the port is taken.
    """
    if isinstance(registry, AgentMetrics):
        registry = registry.registry
    if registry is None:
        raise ValueError("start_metrics_server: pass the agent's AgentMetrics (or its registry)")
    httpd, thread = start_http_server(port, addr=addr, registry=registry)
    real_port = httpd.server_address[1]
    log.info("metrics on http://%s:%d/metrics", addr, real_port)
    return MetricsServer(addr, real_port, httpd, thread)
