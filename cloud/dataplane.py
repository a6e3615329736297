"""The cloud's transport-free core: find the model, validate the request, batch it, describe models.

The gRPC servicer converts protobuf to ``fogline.codec.InferRequest`` and calls ``DataPlane.infer``;
everything that decides anything lives here and is testable without sockets.

A *model* is any object with the ``FullModel`` interface of docs/CONTRACTS.md: ``name``, ``version``,
``inputs`` / ``outputs`` (lists of ``TensorSpec``) and ``predict(dict) -> dict`` over a batch.

Every request is checked against the model's tensor specs **before** it is queued, so nothing
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
from fogline.codec import InferRequest, InferResponse
from fogline.errors import FoglineError, InvalidInput, ModelNotFound

from cloud.batcher import DynamicBatcher
from cloud.compute_pool import ComputePool
from cloud.metrics import CloudMetrics
from cloud.settings import ServingSettings

try:  # content checks (UTF-8 text, image value range) shared with the model runtimes
    from edge_models.spec import validate_inputs as _content_checks
except ImportError:  # pragma: no cover - the models package is always there in practice
    _content_checks = None

SERVER_NAME = "fogline-cloud"
#: What ModelMetadata reports as the platform of a full-precision torch model (Triton's name).
PLATFORM = "pytorch_libtorch"


class Model(Protocol):
    """The part of ``edge_models.full_runtime.FullModel`` the cloud uses."""

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


def _shape_text(shape: Sequence[int]) -> str:
    return "[" + ",".join("N" if d == -1 else str(d) for d in shape) + "]"


def _spec_text(spec: Any) -> str:
    return f"{spec.name} ({spec.datatype} {_shape_text(spec.shape)})"


def validate_request(model: Model, request: InferRequest) -> dict[str, np.ndarray]:
    """Check ``request`` against ``model``'s tensor specs; return its inputs, ready to batch."""
    name = model.name
    specs = {spec.name: spec for spec in model.inputs}
    expected = ", ".join(_spec_text(s) for s in model.inputs)
    for given in request.inputs:
        if given not in specs:
            raise InvalidInput(f"model {name!r}: unexpected input {given!r}; it takes {expected}")
    rows: int | None = None
    for spec in model.inputs:
        if spec.name not in request.inputs:
            raise InvalidInput(f"model {name!r}: missing input {spec.name!r}; it takes {expected}")
        array = request.inputs[spec.name]
        datatype = codec.dtype_to_datatype(array.dtype)
        if datatype != spec.datatype:
            raise InvalidInput(
                f"model {name!r}: input {spec.name!r} is {datatype}; expected {spec.datatype} "
                f"with shape {_shape_text(spec.shape)}"
            )
        shape = list(array.shape)
        fits = len(shape) == len(spec.shape) and all(
            w in (-1, g) for w, g in zip(spec.shape, shape, strict=False)
        )
        if not fits:
            raise InvalidInput(
                f"model {name!r}: input {spec.name!r} has shape {shape}; expected {_shape_text(spec.shape)}"
            )
        if not shape or shape[0] == 0:
            raise InvalidInput(f"model {name!r}: input {spec.name!r} holds no rows")
        if rows is not None and shape[0] != rows:
            raise InvalidInput(f"model {name!r}: inputs disagree on the batch size ({rows} vs {shape[0]})")
        rows = shape[0]
    outputs = {spec.name for spec in model.outputs}
    for wanted in request.outputs:
        if wanted not in outputs:
            raise InvalidInput(
                f"model {name!r}: unknown output {wanted!r}; it produces {', '.join(sorted(outputs))}"
            )
    arrays = dict(request.inputs)
    if _content_checks is not None:
        arrays = _content_checks(name, list(model.inputs), arrays)
    return arrays


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
        for served in self.models.values():
            served.batcher.start()

    def begin_drain(self) -> None:
        """Readiness turns false; the servicer stops reading streams and finishes what it holds."""
        self.draining = True

    async def close(self) -> None:
        """Close every batcher at once (they may share one compute thread)."""
        await asyncio.gather(*(served.batcher.close() for served in self.models.values()))
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
            arrays = validate_request(served.model, request)
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
