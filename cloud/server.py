"""Building and stopping the cloud's gRPC server.

``create_server(settings, repo)`` loads the newest version of every model in the repository onto the
configured device, wraps them in a ``DataPlane``, and returns a ``CloudServer`` with its bound port:
the v2 inference service, ``grpc.health.v1`` health, server reflection and (when configured) a
Prometheus ``/metrics`` endpoint. Nothing starts until ``await server.start()``.

``await server.stop()`` is the graceful shutdown that SIGTERM triggers: readiness and health turn
NOT_SERVING, gRPC stops accepting new calls, streams stop reading and answer what they hold, unary
calls in flight finish, and whatever is still running after ``grace_s`` is cancelled.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from fogline.codec import datatype_to_dtype
from fogline.errors import ConfigError
from fogline.inference import grpc_service_pb2 as pb
from fogline.inference import grpc_service_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from cloud.compute_pool import ComputePool, torch_thread_setter
from cloud.dataplane import DataPlane, Model
from cloud.metrics import CloudMetrics, MetricsEndpoint
from cloud.servicer import InferenceServicer
from cloud.settings import ServingSettings

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name


def load_models(settings: ServingSettings, repo: Any, pools: dict[str, ComputePool] | None = None) -> list[Model]:
    """The newest version of every model in ``repo`` (a ModelRepository or a directory), loaded.

    Each model is loaded and warmed up on the first worker of the ``ComputePool`` that will run it;
    pass ``pools`` (a dict) to get those pools back (name -> pool) for the batchers. On the CPU every
    model shares one pool with a worker per core: torch keeps a CPU thread team per calling thread,
    and teams of idle threads fight busy ones for the cores (measured on 2 cores: minilm batch-1
    calls took 4.5 ms alone, 8-9 ms with digits loaded on a second thread of its own), so the pool
    sizes the intra-op threads to the calls in flight instead (``cloud.compute_pool``). On a GPU
    each model gets a one-worker pool of its own, so kernels of different models can overlap.
    """
    import torch

    from edge_models.repository import ModelRepository

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

    from edge_models.full_runtime import FullModel

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
        server: grpc.aio.Server,
        dataplane: DataPlane,
        servicer: InferenceServicer,
        health: HealthServicer,
        settings: ServingSettings,
    ) -> None:
        self.grpc_server = server
        self.dataplane = dataplane
        self.servicer = servicer
        self.health = health
        self.settings = settings
        self.metrics_endpoint: MetricsEndpoint | None = None
        self._stopped = asyncio.Event()

    @property
    def metrics_port(self) -> int | None:
        return self.metrics_endpoint.port if self.metrics_endpoint else None

    async def start(self) -> None:
        self.dataplane.start()
        await self.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        if self.settings.metrics_port is not None:
            self.metrics_endpoint = MetricsEndpoint(
                self.dataplane.metrics, self.settings.metrics_host, self.settings.metrics_port
            )
        await self.grpc_server.start()

    async def stop(self, grace: float | None = None) -> None:
        """Drain: stop accepting, answer what is in flight (at most ``grace`` seconds), release all."""
        if self._stopped.is_set():
            return
        grace = self.settings.grace_s if grace is None else grace
        self.dataplane.begin_drain()
        await self.health.enter_graceful_shutdown()
        self.servicer.drain_event.set()
        await self.grpc_server.stop(grace)
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
    if models is None:
        source = repo if repo is not None else settings.resolved_models_dir()
        models = load_models(settings, source, pools)
    dataplane = DataPlane(models, settings, metrics=metrics, pools=pools)
    limit = settings.max_message_bytes
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.so_reuseport", 0),
        ]
    )
    servicer = InferenceServicer(dataplane)
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server,
    )
    host, port = settings.host_port
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError:
        bound = 0
    if bound == 0:
        raise ConfigError(f"listen: cannot bind {settings.listen} (address in use or not local)")
    return CloudServer(server, dataplane, servicer, health, settings), bound
