"""The cloud's transport-free core: find the model, validate the request, batch it, describe models.

The gRPC servicer converts protobuf to ``fogline.codec.InferRequest`` and calls ``DataPlane.infer``;
everything that decides anything lives here and is testable without sockets.

A *model* is any object with the ``FullModel`` interface of docs/CONTRACTS.md: ``name``, ``version``,
``inputs`` / ``outputs`` (lists of ``TensorSpec``) and ``predict(dict) -> dict`` over a batch.

Every request is checked against the model's tensor specs **before** it is queued
(``fogline.serving.validation``, the agent's check too), so nothing
malformed ever reaches torch or shares a batch with good requests: unknown model or version ->
``ModelNotFound``; missing, unexpected, wrongly typed or shaped tensors, inputs that disagree on the
batch size, unknown requested outputs -> ``InvalidInput`` naming what was expected.

Each response carries the parameters the edge agent relies on: ``served_by="cloud"``,
``model_version``, ``compute_ms`` (the model call that produced it, so the agent can subtract it from
its round-trip time), ``queue_ms`` and ``batch_size`` (rows in that model call).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from fogline import __version__, codec
from fogline.cloud.batcher import DynamicBatcher
from fogline.cloud.compute_pool import ComputePool
from fogline.cloud.metrics import CloudMetrics
from fogline.cloud.settings import ServingSettings
from fogline.codec import InferRequest, InferResponse
from fogline.errors import FoglineError, ModelNotFound
from fogline.serving.validation import validate_request

SERVER_NAME = "fogline-cloud"
#: What ModelMetadata reports as the platform of a full-precision torch model (Triton's name).
PLATFORM = "pytorch_libtorch"


class Model(Protocol):
    """The part of ``fogline.models.full_runtime.FullModel`` the cloud uses."""

    name: str
    version: str
    inputs: Sequence[Any]
    outputs: Sequence[Any]

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


@dataclass
class ServedModel:
    """One model as served: the model object and its batcher."""

    model: Model
    batcher: DynamicBatcher

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def version(self) -> str:
        return str(self.model.version)


class DataPlane:
    """Serves a fixed set of loaded models through one dynamic batcher each."""

    def __init__(
        self,
        models: Mapping[str, Model] | Sequence[Model],
        settings: ServingSettings,
        *,
        metrics: CloudMetrics | None = None,
        pools: Mapping[str, ComputePool] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``pools``: per model name, the compute pool that loaded it (its batcher runs it there);
        a model without one gets a one-worker pool of its own."""
        self.settings = settings
        self._pools = dict(pools or {})
        self.metrics = metrics or CloudMetrics()
        self._clock = clock
        items = models.values() if isinstance(models, Mapping) else models
        self.models: dict[str, ServedModel] = {}
        for model in items:
            self.models[model.name] = ServedModel(model, self._make_batcher(model))
        self.draining = False
        self._started = False
        #: Served models swapped out (a new version, SIGHUP) whose batchers still finish their requests.
        self._retiring: dict[asyncio.Task[None], ServedModel] = {}

    def swap(self, model: Model) -> ServedModel | None:
        """Serve ``model`` under its name from the next request on; returns what it replaced. Requests
        already queued in (or running on) the old batcher finish there; ``retire`` closes it after."""
        if model.name not in self._pools and self._pools and self.settings.resolved_device() == "cpu":
            self._pools[model.name] = next(iter(self._pools.values()))  # every CPU model shares one pool
        served = ServedModel(model, self._make_batcher(model))
        if self._started:
            served.batcher.start()
        old = self.models.get(model.name)
        self.models[model.name] = served
        if old is not None:
            task = asyncio.get_running_loop().create_task(self._retire(old), name=f"retire-{model.name}")
            self._retiring[task] = old
            task.add_done_callback(lambda t: self._retiring.pop(t, None))
        return old

    async def _retire(self, served: ServedModel, timeout_s: float = 60.0) -> None:
        waited = 0.0
        while served.batcher.busy and waited < timeout_s:
            await asyncio.sleep(0.01)
            waited += 0.01
        await served.batcher.close()

    async def wait_released(self) -> None:
        """Until every swapped-out model's batcher has finished and closed."""
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)

    def _make_batcher(self, model: Model) -> DynamicBatcher:
        version = str(model.version)

        def on_batch(rows: int, _requests: int, compute_s: float) -> None:
            self.metrics.record_batch(model.name, version, rows, compute_s)

        return DynamicBatcher(
            model.name,
            model.predict,
            max_batch_size=self.settings.max_batch_size,
            max_queue_delay_us=self.settings.max_queue_delay_us,
            max_queue_size=self.settings.max_queue_size,
            on_batch=on_batch,
            clock=self._clock,
            pool=self._pools.get(model.name),
        )

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start every batcher (needs the running event loop)."""
        self._started = True
        for served in self.models.values():
            served.batcher.start()

    def begin_drain(self) -> None:
        """Readiness turns false; the servicer stops reading streams and finishes what it holds."""
        self.draining = True

    async def close(self) -> None:
        """Close every batcher at once (they may share one compute thread)."""
        retiring = list(self._retiring.values())
        for task in list(self._retiring):
            task.cancel()
        await asyncio.gather(*(served.batcher.close() for served in [*self.models.values(), *retiring]))
        for pool in {id(p): p for p in self._pools.values()}.values():
            pool.shutdown(wait=True)

    # ------------------------------------------------------------------ health and metadata

    def ready(self) -> bool:
        return not self.draining and bool(self.models)

    def lookup(self, name: str, version: str = "") -> ServedModel:
        served = self.models.get(name)
        if served is None:
            known = ", ".join(sorted(self.models)) or "none"
            raise ModelNotFound(f"model {name!r} is not served here; served models: {known}")
        if version and version != served.version:
            raise ModelNotFound(
                f"model {name!r} version {version!r} is not served here; served version: {served.version}"
            )
        return served

    def model_ready(self, name: str, version: str = "") -> bool:
        try:
            self.lookup(name, version)
        except ModelNotFound:
            return False
        return not self.draining

    def server_metadata(self) -> dict[str, Any]:
        return {
            "name": SERVER_NAME,
            "version": __version__,
            "extensions": ["model_stream_infer", "parameters"],
        }

    def model_metadata(self, name: str, version: str = "") -> dict[str, Any]:
        served = self.lookup(name, version)

        def tensors(specs: Sequence[Any]) -> list[dict[str, Any]]:
            return [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)} for s in specs]

        return {
            "name": served.name,
            "versions": [served.version],
            "platform": PLATFORM,
            "inputs": tensors(served.model.inputs),
            "outputs": tensors(served.model.outputs),
        }

    # ------------------------------------------------------------------ inference

    def deadline_for(self, request: InferRequest, transport_deadline: float | None) -> float | None:
        """The earlier of the transport's deadline and the request's ``deadline_ms`` (batcher clock)."""
        deadline_ms = codec.deadline_ms_of(request.parameters)
        codec.route_of(request.parameters)  # validated for a clear error; the cloud serves any route
        deadlines = [d for d in (transport_deadline,) if d is not None]
        if deadline_ms is not None:
            deadlines.append(self._clock() + deadline_ms / 1e3)
        return min(deadlines) if deadlines else None

    async def infer(self, request: InferRequest, *, deadline: float | None = None) -> InferResponse:
        """Validate, queue, compute and answer one request.

        ``deadline`` is the transport's (gRPC) deadline as an absolute time on this data plane's
        clock, or None. Raises a ``FoglineError`` subclass on any failure.
        """
        served = self.lookup(request.model_name, request.model_version)
        name, version = served.name, served.version
        gauge = self.metrics.inflight.labels(name)
        gauge.inc()
        try:
            arrays = validate_request(served.model, request.inputs, request.outputs)
            outputs, stats = await served.batcher.submit(
                arrays, deadline=self.deadline_for(request, deadline)
            )
        except FoglineError as exc:
            self.metrics.record_failure(name, version, exc.code.name)
            raise
        except asyncio.CancelledError:  # the caller went away or its gRPC deadline passed
            self.metrics.record_failure(name, version, "CANCELLED")
            raise
        except Exception:
            self.metrics.record_failure(name, version, "INTERNAL")
            raise
        finally:
            gauge.dec()
            self.metrics.pending.labels(name).set(served.batcher.queued)
        self.metrics.record_success(name, version, stats.queue_s)
        if request.outputs:
            outputs = {key: outputs[key] for key in request.outputs}
        return InferResponse(
            model_name=name,
            outputs=outputs,
            model_version=version,
            id=request.id,
            parameters={
                "served_by": "cloud",
                "model_version": version,
                "compute_ms": stats.compute_s * 1e3,
                "queue_ms": stats.queue_s * 1e3,
                "batch_size": stats.batch_rows,
            },
        )
