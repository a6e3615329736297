"""The v2 ``GRPCInferenceService`` of the cloud tier: protobuf in, ``DataPlane`` call, protobuf out.

Unary calls map any failure to a gRPC status with ``fogline.errors.status_of``. On
``ModelStreamInfer`` each request is handled by its own task, so many are in flight at once and each
response leaves as soon as its request completes, carrying the request's ``id``. A failed request
gets its own ``ModelStreamInferResponse`` with ``error_message`` set (and ``infer_response`` holding
the model name and id, so the sender can match it); the stream stays open for the others.

When the server drains (SIGTERM) a stream stops reading new requests, answers the ones it holds, then
ends with UNAVAILABLE so the client reconnects elsewhere.
"""

from __future__ import annotations

import asyncio
import time

import grpc
from fogline import codec
from fogline.errors import status_of
from fogline.inference import grpc_service_pb2 as pb
from fogline.inference import grpc_service_pb2_grpc as pb_grpc

from cloud.dataplane import DataPlane

_END = object()


def _deadline_of(context: grpc.aio.ServicerContext) -> float | None:
    """The call's gRPC deadline as a ``time.monotonic`` instant, or None."""
    remaining = context.time_remaining()
    if remaining is None:
        return None
    return time.monotonic() + remaining


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """Thin adapter between the v2 protobuf service and a ``DataPlane``."""

    def __init__(self, dataplane: DataPlane, *, drain_event: asyncio.Event | None = None) -> None:
        self.dataplane = dataplane
        self.drain_event = drain_event or asyncio.Event()
        self._max_tensor_bytes = dataplane.settings.max_message_bytes

    # ------------------------------------------------------------------ health and metadata

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

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
            await context.abort(*status_of(exc))
        response = pb.ModelMetadataResponse(
            name=meta["name"], versions=meta["versions"], platform=meta["platform"]
        )
        for tensor in meta["inputs"]:
            response.inputs.add(**tensor)
        for tensor in meta["outputs"]:
            response.outputs.add(**tensor)
        return response

    # ------------------------------------------------------------------ inference

    async def _infer(self, request: pb.ModelInferRequest, deadline: float | None) -> pb.ModelInferResponse:
        infer_request = codec.request_from_proto(request, max_tensor_bytes=self._max_tensor_bytes)
        response = await self.dataplane.infer(infer_request, deadline=deadline)
        return codec.response_to_proto(response)

    async def ModelInfer(self, request, context):
        try:
            return await self._infer(request, _deadline_of(context))
        except Exception as exc:
            await context.abort(*status_of(exc))

    async def _stream_one(
        self, request: pb.ModelInferRequest, deadline: float | None
    ) -> pb.ModelStreamInferResponse:
        try:
            return pb.ModelStreamInferResponse(infer_response=await self._infer(request, deadline))
        except Exception as exc:
            code, message = status_of(exc)
            return pb.ModelStreamInferResponse(
                error_message=f"{code.name}: {message}",
                infer_response=pb.ModelInferResponse(
                    model_name=request.model_name, model_version=request.model_version, id=request.id
                ),
            )

    async def ModelStreamInfer(self, request_iterator, context):
        deadline = _deadline_of(context)
        out: asyncio.Queue = asyncio.Queue()
        tasks: set[asyncio.Task] = set()
        state = {"reading": True, "draining": False}

        def deliver(task: asyncio.Task) -> None:
            tasks.discard(task)
            if not task.cancelled():
                out.put_nowait(task.result())

        async def pump() -> None:
            """Read requests, one task each; once input ends, wait for them, then mark the end."""
            try:
                async for request in request_iterator:
                    task = asyncio.create_task(self._stream_one(request, deadline))
                    tasks.add(task)
                    task.add_done_callback(deliver)
            except asyncio.CancelledError:
                if not state["draining"]:
                    raise
            except Exception:  # the client went away or a read failed
                pass  # answer what is held, then end the stream
            finally:
                state["reading"] = False
            while tasks:
                await asyncio.wait(set(tasks))
            out.put_nowait(_END)

        async def watch_drain() -> None:
            await self.drain_event.wait()
            if state["reading"]:
                state["draining"] = True
                pumper.cancel()

        pumper = asyncio.create_task(pump())
        watcher = asyncio.create_task(watch_drain())
        try:
            while True:
                item = await out.get()
                if item is _END:
                    break
                yield item
        finally:
            watcher.cancel()
            pumper.cancel()
            for task in list(tasks):
                task.cancel()
        if state["draining"]:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the cloud is shutting down; reconnect")
