"""Assembling the agent: edge models, cloud link, data plane and the gRPC server around them.

``create_server(device_config, ...)`` loads the device's edge models, builds the cloud link and the
data plane, and binds a gRPC server built by ``fogline.serving.server`` (v2 inference,
``grpc.health.v1``, reflection) to the device's listen address (``HOST:PORT`` or a unix socket, with
TLS and tokens when its ``serving`` block asks: ``fogline.agent.listener``); it returns the
``AgentServer`` and the bound port (0 for a unix socket).
Nothing is served until ``await server.start()``, which warms the models up and opens the cloud stream.

``await server.stop(grace)`` is what SIGTERM triggers: readiness and health go NOT_SERVING, streams
stop taking new requests, everything in flight is answered (at most ``grace`` seconds), then the cloud
link and the model threads are released.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from fogline.agent import status
from fogline.agent.cloud_link import CloudLink
from fogline.agent.dataplane import DataPlane
from fogline.agent.edge_pool import EdgeBatching, EdgePool
from fogline.agent.link_settings import LinkSettings
from fogline.agent.listener import Listener
from fogline.agent.metrics import AgentMetrics
from fogline.agent.model_fetch import FetchOutcome, ModelFetcher, source_of
from fogline.agent.model_reload import ModelChange, ModelReloader
from fogline.agent.replica_set import ReplicaSet, ReplicaStatus
from fogline.agent.router_types import CLOUD_UNAUTHENTICATED, RoutingPolicy
from fogline.agent.servicer import AgentServicer
from fogline.fleet.model import DeviceConfig, DeviceSettings
from fogline.fleet.target import parse_target
from fogline.serving.metrics_endpoint import MetricsEndpoint
from fogline.serving.server import GrpcServer, ServerOptions
from fogline.serving.server import create_server as create_grpc_server

log = logging.getLogger(__name__)

#: Link states as the router sees them -> the metric's states ("breaker_open" and the like: degraded).
_LINK_STATES = {"ready": "ready", "connecting": "connecting", "down": "down", "not": "down", "breaker": "degraded",
                "no_replicas": "down", CLOUD_UNAUTHENTICATED: "unauthenticated"}


class AgentServer:
    """The running parts of one agent, started and stopped together."""

    def __init__(self, server: GrpcServer, servicer: AgentServicer, dataplane: DataPlane,
                 link: CloudLink | ReplicaSet | None, *, warmup: bool = True, metrics: AgentMetrics | None = None,
                 metrics_port: int = 0, metrics_host: str = "127.0.0.1", listener: Listener | None = None) -> None:
        #: The bound gRPC server and its health service (``fogline.serving.server``).
        self.server = server
        #: Where and how the server listens (address, TLS, tokens); None when built by hand.
        self.listener = listener
        self.servicer = servicer
        self.dataplane = dataplane
        self.link = link
        self._warmup = warmup
        self.metrics = metrics
        self._metrics_port = metrics_port
        self._metrics_host = metrics_host
        self.metrics_endpoint: MetricsEndpoint | None = None
        self._gauges: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()
        self._stopping = False
        #: The device config serving now (to tell which reloaded settings need a restart).
        self._device_config: DeviceConfig | None = None
        #: Swaps model versions on a reload (``reload_models``) and releases the old ones.
        self.reloader = ModelReloader(dataplane.edge, metrics)
        #: ``--models``: the repository wins over the fleet file's ``models_dir`` on reloads too.
        self.models_dir_override: Path | None = None
        #: Fetches listed versions the repository lacks from the cloud (None: no cloud to fetch from).
        self.fetcher: ModelFetcher | None = None
        if link is not None:
            self.fetcher = ModelFetcher(lambda: source_of(link.settings))

    async def start(self) -> None:
        await self.dataplane.edge.start(warmup=self._warmup)
        self.dataplane.loop_lag.start()
        self.dataplane.cpu.start()
        if self.link is not None:
            await self.link.start()
        await self.server.start()
        self.servicer.ready = True
        if self.metrics is not None:
            if self._metrics_port:
                self.metrics_endpoint = MetricsEndpoint(self.metrics, self._metrics_host, self._metrics_port)
            self._gauges = asyncio.create_task(self._refresh_gauges(), name="agent-gauges")

    async def stop(self, grace: float = 10.0) -> None:
        """Drain: refuse new work, answer what is in flight (at most ``grace`` s), release everything."""
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        self.servicer.drain_event.set()
        await self.server.stop(grace)
        if self.link is not None:
            await self.link.close()
        await self.reloader.close()
        if self.fetcher is not None:
            await self.fetcher.close()
        await self.dataplane.edge.stop()
        await self.dataplane.loop_lag.stop()
        await self.dataplane.cpu.stop()
        if self._gauges is not None:
            self._gauges.cancel()
        if self.metrics_endpoint is not None:
            self.metrics_endpoint.close()
        self._stopped.set()

    def refresh_gauges(self) -> None:
        """Publish the link's RTT and state and the edge queues (also done every second)."""
        if self.metrics is None:
            return
        if self.link is not None:
            view = self.link.view("")
            self.metrics.set_rtt(None if view.rtt_ms is None else view.rtt_ms / 1000.0,
                                 None if view.rtt_high_ms is None else view.rtt_high_ms / 1000.0)
            self.metrics.set_link_state(metric_state(view.state))
            self.metrics.set_replicas(replica_statuses(self.link))
        else:
            self.metrics.set_link_state("down")
        for name, runner in self.dataplane.edge.runners.items():
            self.metrics.set_queue_depth(name, runner.queue_depth)
        self.metrics.set_cpu_load(self.dataplane.cpu.load)
        self.metrics.set_load_signal("cpu", self.dataplane.cpu.available)

    def apply_config(self, device_config: DeviceConfig) -> list[str]:
        """Apply a reloaded device config (SIGHUP): the routing and load settings take effect for the
        next request; open streams and the cloud link carry on. Returns the changed settings that only
        a restart applies (listen address, models, cloud endpoint, batching...), for the log."""
        policy = policy_from_config(device_config)
        revision = device_config.revision
        self.dataplane.apply_policy(policy, revision)
        if isinstance(self.link, ReplicaSet):
            self.link.default_deadline_ms = policy.slo_ms
        if self.metrics is not None:
            self.metrics.set_config(self.dataplane.config_generation, sha256=revision,
                                    path=device_config.source)
            self.metrics.set_device(device_config.device_id, device_config.group, device_config.labels)
        restart_only = []
        old = self._device_config
        if old is not None:
            self._reload_credentials()
            # (``logging`` and ``labels`` apply at once: the command line re-applies logging)
            # (``models`` and ``models_dir`` apply through ``reload_models``)
            blocks = ("listen", "serving", "batching", "cloud", "metrics")
            before, after = old.model_dump(include=set(blocks)), device_config.model_dump(include=set(blocks))
            if self._retarget(old.cloud.endpoint, device_config.cloud.endpoint):
                before["cloud"].pop("endpoint")
                after["cloud"].pop("endpoint")
            restart_only += [name for name in blocks if before[name] != after[name]]
            link_keys = ("probe_interval_ms", "hedge_percentile")  # the cloud link's, set when it starts
            before, after = (config.routing.model_dump(include=set(link_keys)) for config in (old, device_config))
            restart_only += [f"routing.{key}" for key in link_keys if before[key] != after[key]]
        self._device_config = device_config
        return restart_only

    async def reload_models(self, device_config: DeviceConfig) -> list[ModelChange]:
        """Re-read the model repository (SIGHUP): every model the device lists moves to its pinned or
        newest version by a checked hot swap (``fogline.agent.model_reload``); a version that fails a
        check is refused and the one serving stays. Returns what changed or was refused."""
        if self.fetcher is not None:
            # A listed version the repository lacks comes from the cloud first (fogline.agent.model_fetch);
            # one that cannot be fetched now is refused below as missing, and fetched later.
            outcomes = await self.fetcher.ensure(*self._model_refs(device_config))
            if any(o.error and o.retry for o in outcomes):
                self.fetcher.retry(self._fetch_again)
            else:
                self.fetcher.cancel()
        return await self._swap_models(device_config)

    def _model_refs(self, device_config: DeviceConfig) -> tuple[Path, list[tuple[str, str | None]]]:
        # ``--models`` wins; else the file's ``models_dir``; else where the models came from at start.
        root = models_root(device_config, self.models_dir_override
                           or (None if device_config.models_dir else self.dataplane.edge.models_dir))
        return root, [(ref.name, ref.version) for ref in device_config.models]

    async def _swap_models(self, device_config: DeviceConfig) -> list[ModelChange]:
        changes = await self.reloader.reload(*self._model_refs(device_config))
        for change in changes:
            if change.before is not None and change.after != change.before:
                self.dataplane.shadow.forget(change.name, change.before)
        if self.metrics is not None and any(c.after != c.before for c in changes):
            self.metrics.declare_models(sorted(self.dataplane.edge.runners))
        return changes

    async def _fetch_again(self) -> list[FetchOutcome]:
        """The fetcher's retry: fetch what the config in force still lacks; swap in what arrived."""
        config = self._device_config
        if config is None or self.fetcher is None:
            return []
        outcomes = await self.fetcher.ensure(*self._model_refs(config))
        if any(not o.error for o in outcomes):
            for change in await self._swap_models(config):
                log.info("model fetched later: %s", change.describe())
        return outcomes

    def _retarget(self, old: str, new: str) -> bool:
        """A reload changed ``cloud.endpoint``: an agent over replicas takes the new target at once (a
        rewritten ``ipv4:`` list, another name); True when applied. One started with a single
        ``HOST:PORT`` (one ``CloudLink``) needs a restart for it."""
        if old == new or not isinstance(self.link, ReplicaSet) or self.link.settings.endpoint != old:
            return False  # (an endpoint from --cloud stays what the flag said)
        self.link.retarget(parse_target(new))
        return True

    def _reload_credentials(self) -> None:
        """On a reload: re-read the listener's tokens and certificates (bad files keep the ones in force,
        with a log line each) and let a cloud link that was refused try its credentials again now."""
        if self.listener is not None:
            for problem in self.listener.reload():
                log.error("listener credentials not reloaded: %s", problem)
        if self.link is not None:
            self.link.reauthenticate()

    async def _refresh_gauges(self) -> None:
        while True:
            self.refresh_gauges()
            await asyncio.sleep(1.0)

    async def wait_for_termination(self) -> None:
        await self._stopped.wait()


def create_server(device_config: DeviceConfig, *, listen: str | None = None, cloud: str | None = None,
                  models_dir: str | Path | None = None, edge: EdgePool | None = None,
                  link_overrides: dict[str, Any] | None = None, threads: int | None = None,
                  warmup: bool = True, metrics: AgentMetrics | None = None) -> tuple[AgentServer, int]:
    """Build the agent for one device of the fleet config; returns the server and its bound port.

    ``listen`` (HOST:PORT or unix:///path), ``cloud`` (HOST:PORT, or "" for no cloud at all) and
    ``models_dir`` override the config, as the command-line flags do. ``edge`` passes already loaded models (tests share them).
    ``metrics`` (default: a fresh ``AgentMetrics``) collects the Prometheus series; the ``/metrics``
    endpoint is served when the config's ``metrics.port`` is not 0. Call from inside the event loop
    that will run the server.
    """
    policy = policy_from_config(device_config)
    if edge is None:
        edge = load_edge(device_config, models_dir=models_dir, threads=threads)
    link = None
    endpoint = cloud if cloud is not None else device_config.cloud.endpoint
    metrics = metrics if metrics is not None else AgentMetrics()
    if endpoint:
        link = build_link(device_config, endpoint, policy, metrics, link_overrides)
    listener = Listener.from_config(device_config, listen, on_auth_failure=metrics.observe_auth_failure)
    metrics.declare_models(sorted(edge.runners))
    dataplane = DataPlane(edge, link, policy, metrics=metrics)
    device_id = device_config.device_id
    servicer = AgentServicer(dataplane, name=f"fogline-agent/{device_id}" if device_id else "fogline-agent")
    server, bound = create_grpc_server(servicer, listener.address, options=ServerOptions(),
                                       interceptors=listener.interceptors(), tls=listener.tls)
    if device_id:
        from fogline import __version__

        metrics.set_build(__version__, str(device_id))
    agent = AgentServer(server, servicer, dataplane, link, warmup=warmup, metrics=metrics,
                        metrics_port=device_config.metrics.port, metrics_host=device_config.metrics.host,
                        listener=listener)
    server.grpc_server.add_generic_rpc_handlers((status.handler(agent),))
    agent.models_dir_override = Path(models_dir) if models_dir else None
    agent.apply_config(device_config)
    return agent, bound


def build_link(device: DeviceSettings, endpoint: str, policy: RoutingPolicy, metrics: AgentMetrics,
               overrides: dict[str, Any] | None = None) -> CloudLink | ReplicaSet:
    """The cloud link for ``endpoint``: one ``CloudLink`` for ``HOST:PORT``, a ``ReplicaSet`` of them
    for a target naming several replicas (``dns:///``, ``ipv4:``, ``ipv6:``)."""
    target = parse_target(endpoint)
    settings = LinkSettings.from_config(device.cloud, device.routing, **{**(overrides or {}), "endpoint": endpoint})

    def link(link_settings: LinkSettings) -> CloudLink:
        return CloudLink(link_settings, on_auth_failure=metrics.observe_cloud_auth_failure)

    if not target.spread:
        return link(settings)
    return ReplicaSet(settings, target, link_factory=link, default_deadline_ms=policy.slo_ms,
                      on_resend=metrics.observe_cloud_resend)


def metric_state(state: str) -> str:
    """A link state as the router sees it -> the ``cloud_link_state`` metric's state."""
    return _LINK_STATES.get(state) or _LINK_STATES.get(state.split("_")[0], "degraded")


def replica_statuses(link: CloudLink | ReplicaSet) -> list[ReplicaStatus]:
    """Every replica of the link (one for a ``CloudLink``), with its state as the metric names it."""
    if isinstance(link, ReplicaSet):
        found = link.replicas()
    else:
        view = link.view("")
        found = [ReplicaStatus(link.settings.endpoint, link.pending_count, view.rtt_ms, view.state)]
    return [ReplicaStatus(r.replica, r.inflight, r.rtt_ms, metric_state(r.state)) for r in found]


def policy_from_config(device: DeviceSettings) -> RoutingPolicy:
    """The router's settings from a device config: its ``routing`` block plus the ``load`` limits."""
    return RoutingPolicy.from_config(device.routing, device.load)


def models_root(device: DeviceSettings, models_dir: str | Path | None = None) -> Path:
    """The model repository: ``models_dir`` (the ``--models`` flag), else the device's, else the default."""
    from fogline.models.repository import default_models_dir

    return Path(models_dir or device.models_dir or default_models_dir())


def load_edge(device: DeviceSettings, *, models_dir: str | Path | None = None, threads: int | None = None) -> EdgePool:
    """Load the device's edge models as its config lists them (name and optional pinned version)."""
    root = models_root(device, models_dir)
    batching = EdgeBatching.from_config(device.batching)
    n = threads or 2
    return EdgePool.load(root, [(ref.name, ref.version) for ref in device.models], threads=n, workers=n,
                         max_batch=batching.max_batch, max_delay_ms=batching.max_delay_ms,
                         max_queue=batching.max_queue)
