"""The v2 ``GRPCInferenceService`` of the cloud tier: protobuf in, ``DataPlane`` call, protobuf out.

The calls themselves are ``fogline.serving.stream``'s, as the agent's are: unary failures become gRPC
statuses; on ``ModelStreamInfer`` many requests are in flight at once and each response leaves as
soon as its request completes, carrying the request's ``id``; a failed request gets its own response
with ``error_message`` ``"[CODE] message"`` and the stream stays open for the others.

With tokens configured, ``fogline.security.current_device()`` names the caller: each inference
request is counted for that device and held to its in-flight limit (``DeviceLimiter``; past it the
request gets RESOURCE_EXHAUSTED, in a stream as that request's ``error_message``). A stream that has
been refused is then paced (``StreamPace``): read only while its device has a free slot.

When the server drains (SIGTERM) new unary calls are refused UNAVAILABLE, and a stream stops reading
new requests, answers the ones it holds, then ends with UNAVAILABLE so the client reconnects elsewhere.
"""

from __future__ import annotations

import time

import grpc

from fogline import codec
from fogline.cloud.dataplane import DataPlane
from fogline.cloud.device_limits import DeviceLimiter, StreamPace
from fogline.inference import grpc_service_pb2 as pb
from fogline.security import current_device
from fogline.serving.stream import V2Servicer, abort


def _deadline_of(context: grpc.aio.ServicerContext) -> float | None:
    """The call's gRPC deadline as a ``time.monotonic`` instant, or None."""
    remaining = context.time_remaining()
    if remaining is None:
        return None
    return time.monotonic() + remaining


class InferenceServicer(V2Servicer):
    """Thin adapter between the v2 protobuf service and a ``DataPlane``."""

    def __init__(
        self,
        dataplane: DataPlane,
        *,
        limiter: DeviceLimiter | None = None,
    ) -> None:
        super().__init__(server="the cloud")
        self.dataplane = dataplane
        self.limiter = limiter
        self._max_tensor_bytes = dataplane.settings.max_message_bytes

    # ------------------------------------------------------------------ health and metadata

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.dataplane.ready())

    async def ModelReady(self, request, context):
        return pb.ModelReadyResponse(ready=self.dataplane.model_ready(request.name, request.version))

    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(**self.dataplane.server_metadata())

    async def ModelMetadata(self, request, context):
        try:
            meta = self.dataplane.model_metadata(request.name, request.version)
        except Exception as exc:
            await abort(context, exc)
        response = pb.ModelMetadataResponse(
            name=meta["name"], versions=meta["versions"], platform=meta["platform"]
        )
        for tensor in meta["inputs"]:
            response.inputs.add(**tensor)
        for tensor in meta["outputs"]:
            response.outputs.add(**tensor)
        return response

    # ------------------------------------------------------------------ inference

    async def _infer(self, request: pb.ModelInferRequest, deadline: float | None,
                     pace: StreamPace | None = None) -> pb.ModelInferResponse:
        device = current_device()
        if device is None:
            infer_request = codec.request_from_proto(request, max_tensor_bytes=self._max_tensor_bytes)
            return codec.response_to_proto(await self.dataplane.infer(infer_request, deadline=deadline))
        metrics = self.dataplane.metrics
        if metrics is not None:
            metrics.device_requests.labels(device).inc()
        if pace is not None:
            pace.admit()  # the limiter's acquire, and a stream that is refused gets paced
        elif self.limiter is not None:
            self.limiter.acquire(device)
        try:
            infer_request = codec.request_from_proto(request, max_tensor_bytes=self._max_tensor_bytes)
            return codec.response_to_proto(await self.dataplane.infer(infer_request, deadline=deadline))
        finally:
            if self.limiter is not None:
                self.limiter.release(device)

    async def ModelInfer(self, request, context):
        deadline = _deadline_of(context)
        return await self.calls.unary(request, context, lambda msg: self._infer(msg, deadline))

    async def ModelStreamInfer(self, request_iterator, context) -> None:
        deadline = _deadline_of(context)
        device = current_device()
        pace = StreamPace(self.limiter, device) if self.limiter is not None and device is not None else None
        await self.calls.stream(request_iterator, context, lambda msg: self._infer(msg, deadline, pace),
                                before_read=None if pace is None else pace.before_read)
