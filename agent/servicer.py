"""The agent's v2 (KServe / Triton) gRPC servicer: protobuf in, ``DataPlane`` call, protobuf out.

Every handler is thin: decode with ``fogline.codec``, call the transport-free core, encode the answer.
Failures become gRPC statuses in one place (``fogline.errors.status_of``). ``ModelStreamInfer`` accepts
many requests in flight on one stream and writes each response as soon as it is ready (not in request
order); a failed request becomes a stream response with ``error_message`` set and the request's id,
as Triton does, and the stream carries on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc
from fogline import __version__, codec
from fogline.errors import status_of
from fogline.inference import grpc_service_pb2 as pb
from fogline.inference import grpc_service_pb2_grpc as pb_grpc

from agent.dataplane import DataPlane

log = logging.getLogger(__name__)

#: Kept from a client's gRPC deadline for sending the answer back.
TRANSPORT_MARGIN_MS = 5.0


class AgentServicer(pb_grpc.GRPCInferenceServiceServicer):
    """``inference.GRPCInferenceService`` backed by the agent's data plane."""

    def __init__(self, dataplane: DataPlane, *, name: str = "fogline-agent") -> None:
        self.dataplane = dataplane
        self.name = name
        self.ready = False
        self.drain_event = asyncio.Event()

    # ------------------------------------------------------------------ health and metadata
    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.ready and not self.drain_event.is_set())

    async def ModelReady(self, request, context):
        ready = self.dataplane.edge.get(request.name, request.version) is not None
        return pb.ModelReadyResponse(ready=ready and self.ready and not self.drain_event.is_set())

    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(name=self.name, version=__version__, extensions=[])

    async def ModelMetadata(self, request, context):
        try:
            runner = self.dataplane.edge.require(request.name, request.version)
        except Exception as exc:
            await _abort(context, exc)
        model = runner.model
        return pb.ModelMetadataResponse(
            name=runner.name,
            versions=[runner.version],
            platform="onnxruntime_onnx",
            inputs=[pb.ModelMetadataResponse.TensorMetadata(name=s.name, datatype=s.datatype, shape=list(s.shape))
                    for s in model.inputs],
            outputs=[pb.ModelMetadataResponse.TensorMetadata(name=s.name, datatype=s.datatype, shape=list(s.shape))
                     for s in model.outputs],
        )

    # ------------------------------------------------------------------ inference
    async def ModelInfer(self, request, context):
        if self.drain_event.is_set():
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the agent is shutting down; retry on another")
        try:
            remaining = context.time_remaining()
            time_left_ms = None if remaining is None else remaining * 1000.0 - TRANSPORT_MARGIN_MS
            response = await self.dataplane.infer(codec.request_from_proto(request), time_left_ms=time_left_ms)
            return codec.response_to_proto(response)
        except Exception as exc:
            await _abort(context, exc)

    async def ModelStreamInfer(self, request_iterator, context) -> AsyncIterator[pb.ModelStreamInferResponse]:
        # One task reads requests and starts one answer task per request; answers go through ``out`` to
        # this generator, which writes them in the order they finish. ``_READ_DONE`` in ``out`` says
        # the reader stopped (client done, stream broken, or a drain), after which the stream ends once
        # every started request has been answered. Per request that is one task and one queue
        # hand-off, nothing more: this is the streaming hot path.
        out: asyncio.Queue[object] = asyncio.Queue()
        tasks: set[asyncio.Task[None]] = set()
        started = 0

        async def answer(msg: pb.ModelInferRequest) -> None:
            try:
                response = await self.dataplane.infer(codec.request_from_proto(msg))
                reply = pb.ModelStreamInferResponse(infer_response=codec.response_to_proto(response))
            except Exception as exc:
                code, text = status_of(exc)
                if code is grpc.StatusCode.INTERNAL:
                    log.exception("request %r failed", msg.id)
                reply = pb.ModelStreamInferResponse(
                    error_message=f"[{code.name}] {text}",
                    infer_response=pb.ModelInferResponse(model_name=msg.model_name,
                                                         model_version=msg.model_version, id=msg.id),
                )
            out.put_nowait(reply)

        async def read() -> None:
            nonlocal started
            try:
                async for msg in request_iterator:
                    if self.drain_event.is_set():
                        break
                    task = asyncio.create_task(answer(msg))
                    started += 1
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
            except Exception as exc:
                log.debug("stream closed by the client: %s", exc)

        async def stop_reading_on_drain() -> None:
            await self.drain_event.wait()
            reader.cancel()

        reader = asyncio.create_task(read())
        # However the reader ends (the client is done, the stream broke, a drain cancelled it, even
        # before it started), the answer loop hears of it.
        reader.add_done_callback(lambda _: out.put_nowait(_READ_DONE))
        drain = asyncio.create_task(stop_reading_on_drain())
        reading, answered = True, 0
        try:
            while reading or answered < started:
                item = await out.get()
                if item is _READ_DONE:
                    reading = False
                    continue
                answered += 1
                yield item
        finally:
            for task in (reader, drain, *tasks):
                if not task.done():
                    task.cancel()


#: What the stream's reader puts into its answer queue when it stops reading.
_READ_DONE = object()


async def _abort(context: grpc.aio.ServicerContext, exc: BaseException) -> None:
    code, text = status_of(exc)
    if code is grpc.StatusCode.INTERNAL:
        log.error("internal error: %s", text, exc_info=exc)
    await context.abort(code, text)
