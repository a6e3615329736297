"""The agent's v2 (KServe / Triton) gRPC servicer: protobuf in, ``DataPlane`` call, protobuf out.

Every handler is thin: decode with ``fogline.codec``, call the transport-free core, encode the answer.
Failures become gRPC statuses in one place (``fogline.errors.status_of``). ``ModelStreamInfer`` accepts
many requests in flight on one stream and writes each response as soon as it is ready (not in request
order); a failed request becomes a stream response with ``error_message`` set and the request's id,
as Triton does, and the stream carries on.

The servicer counts the inference calls open right now (streams and unary calls). A stream request
is marked ``on_loop`` for the data plane when its stream is the only call open, and its client has
waited for every answer so far (nothing else of the stream is in flight, and it was already answered
at least once, so a client that sends a burst is not taken for one that waits). Nobody else is
connected, so the edge model may run on the event loop instead of a worker thread
(``EdgeRunner.predict``), saving the two thread wake-ups (~0.3 ms of a 2-core device's round trip).
Unary calls never are: calls that arrive meanwhile are invisible until the loop is free.
"""

from __future__ import annotations

import asyncio
import logging

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
        #: Inference calls open now: ``ModelInfer`` calls in progress plus open ``ModelStreamInfer`` streams.
        self.open_calls = 0

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
        self.open_calls += 1
        try:
            remaining = context.time_remaining()
            time_left_ms = None if remaining is None else remaining * 1000.0 - TRANSPORT_MARGIN_MS
            response = await self.dataplane.infer(codec.request_from_proto(request), time_left_ms=time_left_ms)
            return codec.response_to_proto(response)
        except Exception as exc:
            await _abort(context, exc)
        finally:
            self.open_calls -= 1

    async def ModelStreamInfer(self, request_iterator, context) -> None:
        # A reader task takes requests off the stream and starts one answer task per request; each
        # answer task writes its own response the moment it is ready (``context.write``, one write at a
        # time on the stream), so responses leave in the order they finish. Per request that is one
        # task and nothing more: this is the streaming hot path. On a drain the reader stops and the
        # requests already read are still answered before the stream ends.
        writing = asyncio.Lock()
        answers: set[asyncio.Task[None]] = set()
        # Requests read whose reply is not built yet, and replies built so far (for ``on_loop``).
        unanswered = answered = 0

        async def answer(msg: pb.ModelInferRequest, on_loop: bool) -> None:
            nonlocal unanswered, answered
            try:
                response = await self.dataplane.infer(codec.request_from_proto(msg), on_loop=on_loop)
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
            # Counted before the write: the client may see the reply, and send its next request,
            # before the write's completion reaches this task.
            unanswered -= 1
            answered += 1
            try:
                async with writing:
                    await context.write(reply)
            except Exception as exc:  # the client went away: nobody to answer
                log.debug("stream response %r not sent: %s", msg.id, exc)

        async def read() -> None:
            nonlocal unanswered
            try:
                async for msg in request_iterator:
                    if self.drain_event.is_set():
                        break
                    # The only client, and it waits for its answers: nothing else needs the loop.
                    on_loop = self.open_calls == 1 and unanswered == 0 and answered > 0
                    unanswered += 1
                    task = asyncio.create_task(answer(msg, on_loop))
                    answers.add(task)
                    task.add_done_callback(answers.discard)
            except Exception as exc:
                log.debug("stream closed by the client: %s", exc)

        self.open_calls += 1
        reader = asyncio.create_task(read())
        drain = asyncio.create_task(self.drain_event.wait())
        try:
            await asyncio.wait({reader, drain}, return_when=asyncio.FIRST_COMPLETED)
            if not reader.done():
                reader.cancel()  # draining: stop taking new requests; answer what is in flight
                await asyncio.wait({reader})
            while answers:
                await asyncio.wait(set(answers))
        finally:
            self.open_calls -= 1
            for task in (reader, drain, *answers):
                if not task.done():
                    task.cancel()


async def _abort(context: grpc.aio.ServicerContext, exc: BaseException) -> None:
    code, text = status_of(exc)
    if code is grpc.StatusCode.INTERNAL:
        log.error("internal error: %s", text, exc_info=exc)
    await context.abort(code, text)
