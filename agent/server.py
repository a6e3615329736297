"""Assembling the agent: edge models, cloud link, data plane and the gRPC server around them.

``create_server(device_config, ...)`` loads the device's edge models, builds the cloud link and the
data plane, and binds a ``grpc.aio`` server (v2 inference, ``grpc.health.v1``, reflection) to the
device's listen address; it returns the ``AgentServer`` and the bound port. Nothing is served until
``await server.start()``, which warms the models up and opens the cloud stream.

``await server.stop(grace)`` is what SIGTERM triggers: readiness and health go NOT_SERVING, streams
stop taking new requests, everything in flight is answered (at most ``grace`` seconds), then the cloud
link and the model threads are released.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import grpc
from fogline.errors import ConfigError
from fogline.inference import grpc_service_pb2 as pb
from fogline.inference import grpc_service_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from agent.cloud_link import CloudLink
from agent.dataplane import DataPlane
from agent.edge_pool import EdgePool
from agent.link_settings import MAX_MESSAGE_BYTES, LinkSettings
from agent.metrics import AgentMetrics, MetricsServer, start_metrics_server
from agent.router import RoutingPolicy
from agent.servicer import AgentServicer

log = logging.getLogger(__name__)

#: Link states as the router sees them -> the metric's states ("breaker_open" and the like: degraded).
_LINK_STATES = {"ready": "ready", "connecting": "connecting", "down": "down", "not": "down", "breaker": "degraded"}

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name


class AgentServer:
    """The running parts of one agent, started and stopped together."""

    def __init__(self, server: grpc.aio.Server, servicer: AgentServicer, health: HealthServicer,
                 dataplane: DataPlane, link: CloudLink | None, *, warmup: bool = True,
                 metrics: AgentMetrics | None = None, metrics_port: int = 0, metrics_host: str = "127.0.0.1"
                 ) -> None:
        self.grpc_server = server
        self.servicer = servicer
        self.health = health
        self.dataplane = dataplane
        self.link = link
        self._warmup = warmup
        self.metrics = metrics
        self._metrics_port = metrics_port
        self._metrics_host = metrics_host
        self.metrics_endpoint: MetricsServer | None = None
        self._gauges: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()
        self._stopping = False
        #: The device config serving now (to tell which reloaded settings need a restart).
        self._device_config: Any = None

    async def start(self) -> None:
        await self.dataplane.edge.start(warmup=self._warmup)
        self.dataplane.loop_lag.start()
        self.dataplane.cpu.start()
        if self.link is not None:
            await self.link.start()
        await self.grpc_server.start()
        self.servicer.ready = True
        if self.metrics is not None:
            if self._metrics_port:
                self.metrics_endpoint = start_metrics_server(self._metrics_port, self._metrics_host,
                                                             registry=self.metrics)
            self._gauges = asyncio.create_task(self._refresh_gauges(), name="agent-gauges")
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace: float = 10.0) -> None:
        """Drain: refuse new work, answer what is in flight (at most ``grace`` s), release everything."""
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        self.servicer.drain_event.set()
        await self.health.enter_graceful_shutdown()
        await self.grpc_server.stop(grace)
        if self.link is not None:
            await self.link.close()
        await self.dataplane.edge.stop()
        await self.dataplane.loop_lag.stop()
        await self.dataplane.cpu.stop()
        if self._gauges is not None:
            self._gauges.cancel()
        if self.metrics_endpoint is not None:
            self.metrics_endpoint.stop()
        self._stopped.set()

    def refresh_gauges(self) -> None:
        """Publish the link's RTT and state and the edge queues (also done every second)."""
        if self.metrics is None:
            return
        if self.link is not None:
            view = self.link.view("")
            self.metrics.set_rtt(None if view.rtt_ms is None else view.rtt_ms / 1000.0,
                                 None if view.rtt_high_ms is None else view.rtt_high_ms / 1000.0)
            self.metrics.set_link_state(_LINK_STATES.get(view.state.split("_")[0], "degraded"))
        else:
            self.metrics.set_link_state("down")
        for name, runner in self.dataplane.edge.runners.items():
            self.metrics.set_queue_depth(name, runner.queue_depth)
        self.metrics.set_cpu_load(self.dataplane.cpu.load)

    def apply_config(self, device_config: Any) -> list[str]:
        """Apply a reloaded device config (SIGHUP): the routing and load settings take effect for the
        next request; open streams and the cloud link carry on. Returns the changed settings that only
        a restart applies (listen address, models, cloud endpoint, batching...), for the log."""
        policy = policy_from_config(device_config)
        revision = str(getattr(device_config, "revision", "") or "")
        self.dataplane.apply_policy(policy, revision)
        if self.metrics is not None:
            self.metrics.set_config(self.dataplane.config_generation, sha256=revision,
                                    path=str(getattr(device_config, "source", "") or ""))
        restart_only = []
        old = self._device_config
        if old is not None:
            for name in ("listen", "models", "models_dir", "batching", "cloud", "metrics", "logging"):
                if getattr(old, name, None) != getattr(device_config, name, None):
                    restart_only.append(name)
            for key in ("probe_interval_ms", "hedge_percentile"):  # the cloud link's, set when it starts
                before = getattr(getattr(old, "routing", None), key, None)
                if before != getattr(getattr(device_config, "routing", None), key, None):
                    restart_only.append(f"routing.{key}")
        self._device_config = device_config
        return restart_only

    async def _refresh_gauges(self) -> None:
        while True:
            self.refresh_gauges()
            await asyncio.sleep(1.0)

    async def wait_for_termination(self) -> None:
        await self._stopped.wait()


def split_host_port(address: str, what: str = "listen address") -> tuple[str, int]:
    """``(host, port)`` of a ``HOST:PORT`` string; ``ConfigError`` naming ``what`` otherwise."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"{what} {address!r} must be HOST:PORT (port 0 picks a free one)")
    return host.strip("[]") or "0.0.0.0", int(port)


def create_server(device_config: Any, *, listen: str | None = None, cloud: str | None = None,
                  models_dir: str | Path | None = None, edge: EdgePool | None = None,
                  link_overrides: dict[str, Any] | None = None, threads: int | None = None,
                  warmup: bool = True, metrics: AgentMetrics | None = None) -> tuple[AgentServer, int]:
    """Build the agent for one device of the fleet config; returns the server and its bound port.

    ``listen``, ``cloud`` (HOST:PORT, or "" for no cloud at all) and ``models_dir`` override the
    config, as the command-line flags do. ``edge`` passes already loaded models (tests share them).
    ``metrics`` (default: a fresh ``AgentMetrics``) collects the Prometheus series; the ``/metrics``
    endpoint is served when the config's ``metrics.port`` is not 0. Call from inside the event loop
    that will run the server.
    """
    routing = getattr(device_config, "routing", None)
    policy = policy_from_config(device_config)
    if edge is None:
        edge = load_edge(device_config, models_dir=models_dir, threads=threads)
    link = None
    cloud_cfg = getattr(device_config, "cloud", None)
    endpoint = cloud if cloud is not None else getattr(cloud_cfg, "endpoint", None)
    if endpoint:
        overrides = dict(link_overrides or {})
        overrides["endpoint"] = endpoint
        link = CloudLink(LinkSettings.from_config(cloud_cfg, routing, **overrides))
    metrics = metrics if metrics is not None else AgentMetrics()
    metrics.declare_models(sorted(edge.runners))
    dataplane = DataPlane(edge, link, policy, metrics=metrics)
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.so_reuseport", 0),
    ])
    device_id = getattr(device_config, "device_id", None)
    servicer = AgentServicer(dataplane, name=f"fogline-agent/{device_id}" if device_id else "fogline-agent")
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server,
    )
    address = listen or getattr(device_config, "listen", None) or "127.0.0.1:8500"
    host, port = split_host_port(str(address))
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError as exc:
        raise ConfigError(f"cannot listen on {host}:{port} ({exc}); is another process using it?") from None
    if bound == 0:
        raise ConfigError(f"cannot listen on {host}:{port}; is another process using it?")
    metrics_cfg = getattr(device_config, "metrics", None)
    if device_id:
        from fogline import __version__

        metrics.set_build(__version__, str(device_id))
    agent = AgentServer(server, servicer, health, dataplane, link, warmup=warmup, metrics=metrics,
                        metrics_port=int(getattr(metrics_cfg, "port", 0) or 0),
                        metrics_host=str(getattr(metrics_cfg, "host", "127.0.0.1") or "127.0.0.1"))
    agent.apply_config(device_config)
    return agent, bound


def policy_from_config(device_config: Any) -> RoutingPolicy:
    """The router's settings from a device config: its ``routing`` block plus the ``load`` limits."""
    routing = getattr(device_config, "routing", None)
    if routing is None:
        return RoutingPolicy()
    return RoutingPolicy.from_config(routing, getattr(device_config, "load", None))


def load_edge(device_config: Any, *, models_dir: str | Path | None = None, threads: int | None = None) -> EdgePool:
    """Load the device's edge models as its config lists them (name and optional pinned version)."""
    from edge_models.repository import default_models_dir

    root = Path(models_dir or getattr(device_config, "models_dir", None) or default_models_dir())
    refs = getattr(device_config, "models", None) or ()
    wanted = [(ref.name, getattr(ref, "version", None)) if not isinstance(ref, str) else (ref, None)
              for ref in refs]
    if not wanted:
        raise ConfigError("the device lists no models to serve")
    batching = getattr(device_config, "batching", None)
    max_batch = int(getattr(batching, "max_batch_size", 8) or 8)
    delay = float(getattr(batching, "max_queue_delay_ms", 0.0) or 0.0)
    max_queue = int(getattr(batching, "max_queue_size", 256) or 256)
    n = threads or 2
    return EdgePool.load(root, wanted, threads=n, workers=n, max_batch=max_batch, max_delay_ms=delay,
                         max_queue=max_queue)
