"""Building and stopping the cloud's gRPC server.

``create_server(settings, repo)`` loads the newest version of every model in the repository onto the
configured device, wraps them in a ``DataPlane``, and returns a ``CloudServer`` with its bound port:
the v2 inference service, ``grpc.health.v1`` health and server reflection (when enabled) on a server
built by ``fogline.serving.server``, and (when configured) a Prometheus ``/metrics`` endpoint. Nothing starts until ``await server.start()``.

Security (docs/security.md): with TLS files the listener speaks only TLS (mutual TLS with a client CA),
with a tokens file every call but health needs a device's bearer token (``fogline.security``), and
the abuse limits become gRPC channel options. ``server.reload()`` (SIGHUP) re-reads the tokens file
and the certificates; a bad file is refused with one log line and what was in force stays;
``await server.reload_models()`` (SIGHUP too) hot-swaps every model whose newest version changed
(``fogline.cloud.model_reload``).

With a repository, the same listener serves the repository's files to agents
(``fogline.cloud.model_files``: ``fogline models pull``, and agents fetching a version they lack).

``await server.stop()`` is the graceful shutdown that SIGTERM triggers: readiness and health turn
NOT_SERVING, gRPC stops accepting new calls, streams stop reading and answer what they hold, unary
calls in flight finish, and whatever is still running after ``grace_s`` is cancelled.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fogline.cloud import model_files
from fogline.cloud.compute_pool import ComputePool, torch_thread_setter
from fogline.cloud.dataplane import DataPlane, Model
from fogline.cloud.device_limits import DeviceLimiter
from fogline.cloud.metrics import CloudMetrics
from fogline.cloud.servicer import InferenceServicer
from fogline.cloud.settings import ServingSettings
from fogline.codec import datatype_to_dtype
from fogline.errors import ConfigError
from fogline.security import REFLECTION_SERVICES, AuthInterceptor, TlsCredentials, TlsFiles, TokenStore
from fogline.serving.address import parse_listen
from fogline.serving.metrics_endpoint import MetricsEndpoint
from fogline.serving.server import HEALTH_SERVICE_NAME, GrpcServer, ServerOptions
from fogline.serving.server import create_server as create_grpc_server

log = logging.getLogger("fogline.cloud")


def load_models(
    settings: ServingSettings, repo: Any, pools: dict[str, ComputePool] | None = None
) -> list[Model]:
    """The newest version of every model in ``repo`` (a ModelRepository or a directory), loaded.

    Each model is loaded and warmed up on the first worker of the ``ComputePool`` that will run it;
    pass ``pools`` (a dict) to get those pools back (name -> pool) for the batchers. On the CPU every
    model shares one pool with a worker per core: torch keeps a CPU thread team per calling thread,
    and teams of idle threads fight busy ones for the cores (measured on 2 cores: minilm batch-1
    calls took 4.5 ms alone, 8-9 ms with digits loaded on a second thread of its own), so the pool
    sizes the intra-op threads to the calls in flight instead (``fogline.cloud.compute_pool``). On a GPU
    each model gets a one-worker pool of its own, so kernels of different models can overlap.
    """
    import torch

    from fogline.models.repository import ModelRepository

    if not isinstance(repo, ModelRepository):
        repo = ModelRepository(Path(repo))
    device = settings.resolved_device()
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: cuda was asked for but torch sees no GPU; use --device cpu")
    names = list(repo.names())
    if not names:
        raise ConfigError(
            f"no models found in {repo.root}; build them with: fogline models build --out {repo.root}"
        )
    threads = settings.resolved_torch_threads()
    workers = settings.resolved_compute_workers(device)

    def new_pool(name: str) -> ComputePool:
        setter = torch_thread_setter() if device == "cpu" else None
        return ComputePool(workers, total_threads=threads, set_threads=setter, name=name)

    models = []
    shared = new_pool("fogline-cpu") if device == "cpu" else None
    made: list[ComputePool] = [shared] if shared else []
    try:
        for name in names:
            pool = shared or new_pool(f"fogline-{name}")
            if pool is not shared:
                made.append(pool)
            models.append(pool.submit_to(0, _load_one, repo.resolve(name), device, threads))
            if pools is not None:
                pools[name] = pool
    except BaseException:
        for pool in made:
            pool.shutdown(wait=False)
        raise
    if pools is None:
        for pool in made:
            pool.shutdown(wait=True)
    return models


def _load_one(version_dir: Path, device: str, threads: int) -> Model:
    import torch

    from fogline.models.full_runtime import FullModel

    torch.set_num_threads(threads)
    model = FullModel.load(version_dir, device=device)
    warm_up(model)
    return model


def warm_up(model: Model, rows: int = 2) -> None:
    """One call on a small made-up batch, so the first real request does not pay for lazy set-up."""
    inputs: dict[str, np.ndarray] = {}
    for spec in model.inputs:
        shape = [rows if d == -1 else d for d in spec.shape]
        if spec.datatype == "BYTES":
            inputs[spec.name] = np.full(shape, b"warming up the model", dtype=object)
        else:
            inputs[spec.name] = np.zeros(shape, dtype=datatype_to_dtype(spec.datatype))
    model.predict(inputs)


class CloudServer:
    """The running parts of one cloud server, started and stopped together."""

    def __init__(
        self,
        server: GrpcServer,
        dataplane: DataPlane,
        servicer: InferenceServicer,
        settings: ServingSettings,
    ) -> None:
        #: The bound gRPC server and its health service (``fogline.serving.server``).
        self.server = server
        self.dataplane = dataplane
        self.servicer = servicer
        self.settings = settings
        self.metrics_endpoint: MetricsEndpoint | None = None
        self.tokens: TokenStore | None = None
        self.auth: AuthInterceptor | None = None
        self.tls: TlsCredentials | None = None
        #: The repository the models came from (None when they were passed in), re-read on a reload.
        self.repo_root: Path | None = None
        self._stopped = asyncio.Event()

    async def reload_models(self) -> list[Any]:
        """Re-read the model repository (SIGHUP) and hot-swap every model whose newest version changed
        (``fogline.cloud.model_reload``); returns the ``ModelChange`` of each model that changed or was
        refused. Nothing to do when the models were passed in rather than loaded from a repository."""
        if self.repo_root is None:
            return []
        from fogline.cloud.model_reload import reload_models

        return await reload_models(self.dataplane, self.repo_root, self.settings.resolved_device())

    def reload(self) -> list[Exception]:
        """Re-read the tokens file and the certificates (SIGHUP); the errors of files refused.

        New calls use the new tokens at once, new connections the new certificate; established
        connections and streams go on (a stream whose token was removed ends at its next message).
        """
        errors = []
        for part in (self.tokens, self.tls):
            if part is not None:
                error = part.reload()
                if error is not None:
                    errors.append(error)
        return errors

    @property
    def metrics_port(self) -> int | None:
        return self.metrics_endpoint.port if self.metrics_endpoint else None

    async def start(self) -> None:
        self.dataplane.start()
        if self.settings.metrics_port is not None:
            self.metrics_endpoint = MetricsEndpoint(
                self.dataplane.metrics, self.settings.metrics_host, self.settings.metrics_port
            )
        await self.server.start()

    async def stop(self, grace: float | None = None) -> None:
        """Drain: stop accepting, answer what is in flight (at most ``grace`` seconds), release all."""
        if self._stopped.is_set():
            return
        grace = self.settings.grace_s if grace is None else grace
        self.dataplane.begin_drain()
        self.servicer.drain_event.set()
        await self.server.stop(grace)
        await self.dataplane.close()
        if self.metrics_endpoint is not None:
            self.metrics_endpoint.close()
        self._stopped.set()

    async def wait_for_termination(self) -> None:
        await self._stopped.wait()


def create_server(
    settings: ServingSettings,
    repo: Any = None,
    *,
    models: Sequence[Model] | None = None,
    metrics: CloudMetrics | None = None,
) -> tuple[CloudServer, int]:
    """Build the cloud server bound to ``settings.listen``; returns it and the bound port.

    ``models`` (already loaded) wins over ``repo``; with neither, the repository at
    ``settings.resolved_models_dir()`` is loaded. Call from inside the event loop that will run it.
    """
    pools: dict[str, ComputePool] = {}
    source = None
    if models is None:
        source = repo if repo is not None else settings.resolved_models_dir()
        models = load_models(settings, source, pools)
    # Read the security files before loading models would be nicer to the user, but models may be
    # passed in; either way a bad file stops the start with a ConfigError naming it.
    tokens = TokenStore(settings.tokens_file) if settings.tokens_file is not None else None
    tls = None
    if settings.tls_cert_file is not None:
        tls = TlsCredentials(
            TlsFiles(settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file)
        )
    dataplane = DataPlane(models, settings, metrics=metrics, pools=pools)
    auth = None
    if tokens is not None:
        open_services = {HEALTH_SERVICE_NAME}
        if settings.reflection:
            open_services.update(REFLECTION_SERVICES)
        auth = AuthInterceptor(
            tokens, open_services=frozenset(open_services), on_failure=dataplane.metrics.record_auth_failure
        )
    limiter = DeviceLimiter(
        settings.max_inflight_per_device,
        on_throttled=lambda device: dataplane.metrics.device_throttled.labels(device).inc(),
    )
    servicer = InferenceServicer(dataplane, limiter=limiter)
    server, bound = create_grpc_server(
        servicer,
        parse_listen(settings.listen, what="listen"),
        options=server_options(settings),
        interceptors=[auth] if auth else (),
        tls=tls,
        reflection_on=settings.reflection,
    )
    cloud = CloudServer(server, dataplane, servicer, settings)
    cloud.tokens, cloud.auth, cloud.tls = tokens, auth, tls
    if source is not None:
        from fogline.models.repository import ModelRepository

        cloud.repo_root = source.root if isinstance(source, ModelRepository) else Path(source)
        # Agents fetch the edge files of any version in the repository (fogline.models.distribution).
        server.grpc_server.add_generic_rpc_handlers((model_files.handler(cloud.repo_root),))
    return cloud, bound


def server_options(settings: ServingSettings) -> ServerOptions:
    """gRPC channel options: message size and the abuse limits (docs/security.md)."""
    return ServerOptions(
        max_message_bytes=settings.max_message_bytes,
        max_concurrent_streams=settings.max_concurrent_streams,
        min_ping_interval_ms=settings.min_ping_interval_ms,
        max_ping_strikes=settings.max_ping_strikes,
        max_connection_age_s=settings.max_connection_age_s,
        max_connection_age_grace_s=settings.max_connection_age_grace_s,
    )
